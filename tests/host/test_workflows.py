"""Every shipped workflow: UI format -> API prompt -> ComfyUI's validation -> execution on tiny models."""

from __future__ import annotations

import pytest
from workflow_prompts import SHIPPED, convert, images_of, load, shrink, write_input_images

from comfyui_layout_retouch.headless import executor, ui_format

EXPECTED = {  # saved images, previews
    "layout_retouch_stage1_layout.json": (1, 0),
    "layout_retouch_stage2_retouch.json": (1, 3),
    "layout_retouch_full_dreambooth.json": (2, 3),
    "layout_retouch_full_lora.json": (2, 3),
    "layout_retouch_full_embedding.json": (2, 3),
}


def test_every_workflow_is_checked():
    assert set(SHIPPED) == set(EXPECTED)


@pytest.mark.parametrize("name", SHIPPED)
def test_workflow_runs(comfy, tiny_files, tiny_sam, name):
    write_input_images(comfy)
    prompt = shrink(convert(comfy, name))
    outputs = executor.execute(prompt)
    saved, previews = images_of(comfy, outputs, "output"), images_of(comfy, outputs, "temp")
    assert (len(saved), len(previews)) == EXPECTED[name]
    for image in saved:
        assert image.shape == (64, 64, 3) and image.std() > 0
    for image in previews:
        assert image.shape[:2] == (64, 64)


@pytest.mark.parametrize("name", SHIPPED)
def test_workflow_has_papers_defaults(comfy, name):
    prompt = convert(comfy, name)
    by_kind = {}
    for node in prompt.values():
        by_kind.setdefault(node["class_type"], []).append(node["inputs"])
    for blend in by_kind.get("LR_StepBlendedKSampler", []):
        assert (blend["steps"], blend["lambda1"], blend["scheduler"], blend["cfg"]) == (50, 5, "ddim_uniform", 7.5)
    for swap in by_kind.get("LR_MultiSourceAttentionSwap", []):
        assert (swap["lambda2"], swap["mask_start"], swap["layout_layers"]) == (10, 30, "output 6-11")
    for sampler in by_kind.get("KSamplerAdvanced", []):
        assert (sampler["add_noise"], sampler["steps"], sampler["scheduler"], sampler["cfg"]) == (
            "disable", 50, "ddim_uniform", 7.5)
    for inversion in by_kind.get("LR_DDIMInversion", []):
        assert (inversion["steps"], inversion["scheduler"], inversion["cfg"]) == (50, "ddim_uniform", 1.0)


def test_full_workflow_shares_prompt_texts(comfy):
    prompt = convert(comfy, "layout_retouch_full_dreambooth.json")
    mask = next(n for n in prompt.values() if n["class_type"] == "LR_CrossAttentionMask")["inputs"]
    source = prompt[mask["prompt"][0]]
    assert source["class_type"] == "PrimitiveStringMultiline"
    assert source["_meta"]["title"].startswith("Personalized prompt")


FULL = [name for name in SHIPPED if name.startswith("layout_retouch_full_")]


@pytest.mark.parametrize("name", FULL)
def test_full_workflow_is_wired_to_the_fast_path(comfy, name):
    """Stage 1's trajectory is the layout path (no layout inversion), attention read from the records."""
    prompt = convert(comfy, name)
    (blend_id,) = [i for i, n in prompt.items() if n["class_type"] == "LR_StepBlendedKSampler"]
    (swap,) = [n["inputs"] for n in prompt.values() if n["class_type"] == "LR_MultiSourceAttentionSwap"]
    (retouch,) = [n["inputs"] for n in prompt.values() if n["class_type"] == "KSamplerAdvanced"]
    (inversion,) = [n["inputs"] for n in prompt.values() if n["class_type"] == "LR_DDIMInversion"]
    (mask,) = [n["inputs"] for n in prompt.values() if n["class_type"] == "LR_CrossAttentionMask"]
    blend = prompt[blend_id]["inputs"]
    assert swap["layout_inversion"] == mask["layout_inversion"] == [blend_id, 1]  # trajectory
    assert retouch["latent_image"] == [blend_id, 2]  # start_latent
    assert (retouch["add_noise"], retouch["start_at_step"], retouch["sampler_name"]) == ("disable", 0, "ddim")
    assert (retouch["steps"], retouch["scheduler"]) == (blend["steps"], blend["scheduler"])
    assert (blend["record_attention"], blend["denoise"]) == (True, 1.0)
    assert blend["attention_layers"] == swap["layout_layers"] == swap["reference_layers"]
    assert (swap["source_paths"], swap["reference_cache"]) == (
        "recorded, attention from the inversions (fast)", "offloaded to RAM")
    # The reference's inversion records at the swap's own prompts for it: the fast mode is then exact.
    assert inversion["record_attention"] is True
    assert (inversion["positive"], inversion["negative"]) == (swap["reference_positive"], swap["reference_negative"])
    assert (inversion["steps"], inversion["scheduler"]) == (blend["steps"], blend["scheduler"])
    assert swap["reference_inversion"][0] in prompt


def test_stage2_workflow_keeps_its_layout_inversion(comfy):
    prompt = convert(comfy, "layout_retouch_stage2_retouch.json")
    titles = {n["_meta"]["title"] for n in prompt.values() if n["class_type"] == "LR_DDIMInversion"}
    assert titles == {"DDIM Inversion (reference)", "DDIM Inversion (layout)"}


def test_stale_widget_values_are_reported(comfy):
    workflow = load("layout_retouch_stage1_layout.json")
    node = next(n for n in workflow["nodes"] if n["type"] == "LR_StepBlendedKSampler")
    node["widgets_values"] = node["widgets_values"][:-1]
    with pytest.raises(ui_format.WorkflowError, match="widget values"):
        ui_format.ui_to_prompt(workflow, comfy.NODE_CLASS_MAPPINGS)


def test_validation_rejects_lambda1_above_steps(comfy, tiny_files):
    prompt = shrink(convert(comfy, "layout_retouch_stage1_layout.json"))
    next(n for n in prompt.values() if n["class_type"] == "LR_StepBlendedKSampler")["inputs"]["lambda1"] = 9
    with pytest.raises(executor.PromptError, match="lambda1"):
        executor.validate(prompt)
