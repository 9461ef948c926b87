"""Segment Anything: size detection, loading, segmenting and the nodes, on the real host with a tiny SAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_layout_retouch.masks import sam as sam_lib


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_detects_official_sizes_from_shapes(name):
    embed, depth, heads, global_attn = sam_lib.OFFICIAL_SIZES[name]
    with torch.device("meta"):
        model = sam_lib.build_sam(sam_lib.SamConfig(embed, depth, heads, global_attn))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sam_lib.detect_config(shapes).name == name


def test_load_tiny_sam(tiny_sam):
    sam = sam_lib.load_sam(str(tiny_sam))
    assert sam.config == sam_lib.SamConfig(32, 2, 2, (1,))
    assert sam.config.name.startswith("custom ViT")


def test_corrupt_checkpoint(tmp_path, tiny_sam):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(tiny_sam.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cannot read it"):
        sam_lib.load_sam(str(bad))


def test_segment_picks_the_candidate_closest_to_the_prompt(tiny_sam):
    from segment_anything import SamPredictor

    sam = sam_lib.load_sam(str(tiny_sam))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    prompt = np.zeros((48, 64), dtype=np.float32)
    prompt[10:30, 20:50] = 1
    mask = sam_lib.segment(sam, image, prompt)
    assert mask.shape == (48, 64) and mask.dtype == bool
    predictor = SamPredictor(sam.model)
    predictor.set_image(image)
    box, point = sam_lib.prompt_from_mask(prompt)
    candidates, _, _ = predictor.predict(point_coords=point, point_labels=np.ones(1), box=box, multimask_output=True)
    ious = [sam_lib.iou(c, prompt > 0.5) for c in candidates]
    assert sam_lib.iou(mask, prompt > 0.5) == max(ious)
    assert next(sam.model.parameters()).device.type == "cpu"


@pytest.fixture(scope="module")
def sams_folder(tiny_sam, tmp_path_factory):
    """A second registered ``sams`` folder, for the broken files these tests write (the tiny SAM's folder is
    the shared cache of tiny models)."""
    import folder_paths

    folder = tmp_path_factory.mktemp("sams_extra")
    folder_paths.add_model_folder_path("sams", str(folder))
    return folder


def test_sam_nodes(comfy, sams_folder):
    loader = comfy.NODE_CLASS_MAPPINGS["LR_SAMLoader"]
    schema = loader.GET_SCHEMA()
    assert "tiny_sam.pth" in schema.inputs[0].options
    sam = loader.execute(sam_name="tiny_sam.pth").result[0]
    segment = comfy.NODE_CLASS_MAPPINGS["LR_SAMSegment"]
    image = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(0))
    prompt = torch.zeros(1, 6, 8)  # latent-size prompt: resized to the image
    prompt[0, 1:4, 2:6] = 1
    mask = segment.execute(image=image, sam=sam, prompt_mask=prompt, extra_points="30,20", box="").result[0]
    assert mask.shape == (1, 48, 64) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match=r"input 'prompt_mask': is empty"):
        segment.execute(image=image, sam=sam, prompt_mask=torch.zeros(1, 48, 64), extra_points="", box="")
    with pytest.raises(ValueError, match=r"input 'box': '1,2,3' cannot be read"):
        segment.execute(image=image, sam=sam, prompt_mask=prompt, extra_points="", box="1,2,3")


def test_sam_segment_node_prompts_without_specks(comfy, sams_folder, monkeypatch):
    """An 80x120 subject and one 8x8 speck far away: the node prompts SAM with the subject's box
    (not the 257x299 px box of the raw mask) and segments as for the subject alone."""
    from segment_anything import SamPredictor

    boxes, predict = [], SamPredictor.predict

    def spy(self, *args, **kwargs):
        boxes.append(kwargs["box"].tolist())
        return predict(self, *args, **kwargs)

    monkeypatch.setattr(SamPredictor, "predict", spy)
    segment = comfy.NODE_CLASS_MAPPINGS["LR_SAMSegment"]
    inputs = {spec.id: spec for spec in segment.GET_SCHEMA().inputs}
    assert inputs["min_component_area"].default == 0.01 and inputs["min_component_area"].tooltip
    sam = comfy.NODE_CLASS_MAPPINGS["LR_SAMLoader"].execute(sam_name="tiny_sam.pth").result[0]
    image = torch.rand(1, 400, 400, 3, generator=torch.Generator().manual_seed(0))
    subject = torch.zeros(1, 400, 400)
    subject[0, 40:160, 40:120] = 1
    specked = subject.clone()
    specked[0, 331:339, 289:297] = 1

    def run(prompt, **extra):
        return segment.execute(image=image, sam=sam, prompt_mask=prompt, extra_points="", box="", **extra).result[0]

    assert torch.equal(run(specked), run(subject))
    run(specked, min_component_area=0.0)  # 0 keeps every part: the old, stretched box
    assert boxes == [[40, 40, 119, 159], [40, 40, 119, 159], [40, 40, 296, 338]]


def test_sam_loader_errors(comfy, sams_folder, tmp_path):
    import folder_paths

    loader = comfy.NODE_CLASS_MAPPINGS["LR_SAMLoader"]
    message = loader.validate_inputs(sam_name="sam_vit_h_4b8939.pth")
    assert "sam_vit_h_4b8939.pth" in message and str(sams_folder) in message
    (sams_folder / "broken.pth").write_bytes(b"not a checkpoint")
    try:
        with pytest.raises(ValueError, match=r"SAM Loader: input 'sam_name': 'broken.pth' cannot be loaded"):
            loader.execute(sam_name="broken.pth")
    finally:
        (sams_folder / "broken.pth").unlink()
    empty = tmp_path / "empty_sams"
    empty.mkdir()
    saved = folder_paths.folder_names_and_paths["sams"]
    folder_paths.folder_names_and_paths["sams"] = ([str(empty)], saved[1])
    try:
        with pytest.raises(ValueError, match=r"no Segment Anything checkpoint in .*empty_sams.*sam_vit_b_01ec64.pth"):
            loader.execute(sam_name="sam_vit_h_4b8939.pth")
    finally:
        folder_paths.folder_names_and_paths["sams"] = saved


def test_adaptive_mask_node(comfy):
    node = comfy.NODE_CLASS_MAPPINGS["LR_AdaptiveMask"]

    def adaptive(mc, msam, low=0.5, high=1.0):
        return node.execute(cross_attention_mask=mc, sam_mask=msam, threshold=0.5, min_component_area=0.01,
                            normalize_low=low, normalize_high=high)

    mc = torch.zeros(1, 8, 8)
    mc[0, 2:6, 2:6] = 1
    msam = torch.zeros(2, 64, 64)
    msam[:, 10:50, 10:50] = 1
    mask, union, distance, components = adaptive(mc, msam).result
    assert all(t.shape == (2, 64, 64) for t in (mask, union, distance, components))
    with pytest.raises(ValueError, match=r"Adaptive Mask: input 'cross_attention_mask': and sam_mask are both empty"):
        adaptive(torch.zeros(1, 8, 8), torch.zeros(1, 64, 64))
    with pytest.raises(ValueError, match=r"input 'sam_mask': batches of 2 and 3"):
        adaptive(torch.ones(2, 8, 8), torch.ones(3, 64, 64))
    with pytest.raises(ValueError, match=r"input 'normalize_low'"):
        adaptive(mc, msam, 0.9, 0.5)


def test_adaptive_mask_node_clean_union(comfy):
    """clean_union (on by default): a speck of M^c stays out of M; off, it enters at 0.5 as the
    formula is printed."""
    node = comfy.NODE_CLASS_MAPPINGS["LR_AdaptiveMask"]
    inputs = {spec.id: spec for spec in node.GET_SCHEMA().inputs}
    assert inputs["clean_union"].default is True and "noisy regions" in inputs["clean_union"].tooltip
    mc, msam = torch.zeros(1, 400, 400), torch.zeros(1, 400, 400)
    mc[0, 40:160, 40:120] = 1
    mc[0, 331:339, 289:297] = 1  # the speck
    msam[0, 36:164, 36:124] = 1

    def adaptive(mc, msam, clean_union):
        return node.execute(cross_attention_mask=mc, sam_mask=msam, threshold=0.5, min_component_area=0.01,
                            normalize_low=0.5, normalize_high=1.0, clean_union=clean_union).result

    speck = (0, slice(331, 339), slice(289, 297))
    mask, union, _, _ = adaptive(mc, msam, True)
    assert float(mask[speck].max()) == 0 and float(union[speck].max()) == 0
    mask, union, _, _ = adaptive(mc, msam, False)
    assert float(mask[speck].min()) == 0.5 and float(union[speck].min()) == 1
    only_speck = torch.zeros(1, 400, 400)
    only_speck[speck] = 1
    with pytest.raises(ValueError, match=r"input 'cross_attention_mask': has only parts below min_component_area "
                                         r"and sam_mask is empty.*turn clean_union off"):
        adaptive(only_speck, torch.zeros(1, 400, 400), True)
    assert float(adaptive(only_speck, torch.zeros(1, 400, 400), False)[0][speck].min()) >= 0.5
