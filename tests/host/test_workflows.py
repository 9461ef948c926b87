"""Every shipped workflow: UI format -> API prompt -> ComfyUI's validation -> execution on tiny models."""

from __future__ import annotations

import comfy_host
import pytest
from workflow_prompts import (
    COMPACT,
    EXECUTED_IN_BROWSER,
    EXECUTED_IN_PROCESS,
    EXPECTED_IMAGES,
    RUN_AS,
    SHIPPED,
    convert,
    dit_builder,
    dit_family,
    images_of,
    knobs_folded,
    load,
    register_dit_stand_ins,
    register_flux_stand_ins,
    shrink,
    write_input_images,
)

from comfyui_layout_retouch import host_api
from comfyui_layout_retouch.headless import executor, ui_format
from comfyui_layout_retouch.nodes import labels

# The workflows load checkpoints of their own: the session's tiny models are not held beside them.
pytestmark = pytest.mark.usefixtures("session_models_released")


def test_every_workflow_is_checked():
    assert set(SHIPPED) == set(EXPECTED_IMAGES)
    # each runs once: here, or through the server from the real frontend (e2e/test_browser.py), or as the full
    # workflow its API prompt equals (test_compact_workflow_is_its_full_workflow)
    assert sorted(EXECUTED_IN_PROCESS + EXECUTED_IN_BROWSER + tuple(RUN_AS)) == SHIPPED
    assert set(EXECUTED_IN_BROWSER) <= set(SHIPPED) and set(COMPACT.values()) <= set(SHIPPED)


def canonical(prompt: dict) -> list:
    """A prompt without its node ids: each node's type, title and inputs, a link written as the source's title
    and slot."""
    title = {node_id: node["_meta"]["title"] for node_id, node in prompt.items()}
    return sorted(repr((node["class_type"], node["_meta"]["title"], sorted(
        (k, (title[v[0]], v[1]) if isinstance(v, list) else v) for k, v in node["inputs"].items())))
        for node in prompt.values())


@pytest.mark.parametrize("name", sorted(COMPACT))
def test_compact_workflow_is_its_full_workflow(comfy, name):
    """The stages as subgraphs, the knobs outside as Int primitives: expanded as the frontend expands subgraphs
    (ids ``<subgraph node>:<inner node>``), the API prompt is the full workflow's, node for node."""
    compact = convert(comfy, name)
    assert any(":" in node_id for node_id in compact)
    workflow = load(name)
    assert len(workflow["definitions"]["subgraphs"]) == 4 and len(workflow["nodes"]) <= 17
    assert canonical(knobs_folded(compact)) == canonical(convert(comfy, COMPACT[name]))


def test_nested_subgraphs_are_expanded(comfy):
    """A subgraph inside a subgraph: ids ``a:b:c``, its links joined through both boundaries."""
    workflow = load("layout_retouch_compact_dreambooth.json")
    layout = next(d for d in workflow["definitions"]["subgraphs"] if d["name"] == "Layout")
    outer = {**layout, "id": "outer", "name": "Outer", "nodes": [
        {"id": 1, "type": layout["id"], "inputs": [{**i, "link": i["linkIds"][0]} for i in layout["inputs"]],
         "outputs": [], "widgets_values": []}],
        "links": [{"id": lk["id"], "origin_id": -10, "origin_slot": lk["origin_slot"], "target_id": 1,
                   "target_slot": lk["origin_slot"], "type": lk["type"]} for lk in layout["links"]
                  if lk["origin_id"] == -10] + [{"id": 900 + slot, "origin_id": 1, "origin_slot": slot,
                                                "target_id": -20, "target_slot": slot, "type": o["type"]}
                                               for slot, o in enumerate(layout["outputs"])]}
    nested = {**workflow, "definitions": {"subgraphs": [*workflow["definitions"]["subgraphs"], outer]},
              "nodes": [{**n, "type": "outer"} if n.get("title") == "Layout" else n for n in workflow["nodes"]]}
    flat = ui_format.ui_to_prompt(nested, comfy.NODE_CLASS_MAPPINGS)
    blend = next(i for i, n in flat.items() if n["class_type"] == "LR_StepBlendedKSampler")
    assert blend.count(":") == 2
    assert canonical(flat) == canonical(ui_format.ui_to_prompt(workflow, comfy.NODE_CLASS_MAPPINGS))


@pytest.fixture(scope="module")
def server_executor(comfy):
    """One ComfyUI executor with the classic cache for the SD1.x and Flux workflows of this module, as a server
    keeps one: a loader whose inputs the next workflow shares is not run again (the runs are ordered by model
    family). The SDXL workflows each get a fresh one, with this one's cache emptied first: their checkpoints (full-
    size text encoders) would crowd a CI worker's memory beside anything else. Freed when the module ends."""
    shared = host_api.prompt_executor(executor._Server())
    yield shared
    shared.reset()  # (pytest keeps the fixture's value until the session ends: drop what its cache holds)
    comfy_host.free_memory()


@pytest.fixture(scope="module")
def dit_loras(comfy, tmp_path_factory):
    """A registered LoRA folder for the DiT families' tiny LoRAs (workflow_prompts.register_dit_stand_ins)."""
    root = tmp_path_factory.mktemp("dit_models")
    comfy_host.register(root, ("loras",))
    return root / "loras"


def by_family(name: str) -> tuple:
    return (dit_family(name) or "", "flux" in name, "sdxl" in name, "stage2" in name, name)


@pytest.mark.parametrize("name", sorted(EXECUTED_IN_PROCESS, key=by_family))
def test_workflow_runs(comfy, tiny_files, tiny_sam, name, request, server_executor, monkeypatch):
    if "sdxl" in name:
        request.getfixturevalue("tiny_xl_files")
        # Two SDXL checkpoints with full-size text encoders: loaded as a user's --fp16-unet --fp8_e4m3fn-text-enc
        # loads them (3.4 GB, not 6.1 in float32 and fp16), beside nothing else of this module's.
        server_executor.reset()
        comfy_host.free_memory()
        from comfy.cli_args import args  # (not "import comfy...": the name comfy is the fixture here)

        monkeypatch.setattr(args, "fp16_unet", True)
        monkeypatch.setattr(args, "fp8_e4m3fn_text_enc", True)
        request.addfinalizer(comfy_host.free_memory)
    family = dit_family(name)
    if "flux" in name or family:
        request.getfixturevalue("tiny_flux_files")
    if "flux" in name:
        register_flux_stand_ins(comfy, request.getfixturevalue("tiny_flux"))
    if family:
        names = register_dit_stand_ins(comfy, comfy_host.TinyDiT(family), request.getfixturevalue("dit_loras"))

        def drop_stand_ins():  # the classes hold the family's models; the executor's cache their outputs
            for name in names:
                comfy.NODE_CLASS_MAPPINGS.pop(name, None)
            server_executor.reset()
            comfy_host.free_memory()

        request.addfinalizer(drop_stand_ins)
    write_input_images(comfy)
    prompt = shrink(convert(comfy, name), family=family)
    outputs = executor.execute(prompt, None if "sdxl" in name else server_executor)
    saved, previews = images_of(comfy, outputs, "output"), images_of(comfy, outputs, "temp")
    assert (len(saved), len(previews)) == EXPECTED_IMAGES[name]
    for image in saved:
        assert image.shape == (64, 64, 3) and image.std() > 0
    for image in previews:
        assert image.shape[:2] == (64, 64)


@pytest.mark.parametrize("name", SHIPPED)
def test_workflow_has_papers_defaults(comfy, name):
    prompt = knobs_folded(convert(comfy, name))
    by_kind = {}
    for node in prompt.values():
        by_kind.setdefault(node["class_type"], []).append(node["inputs"])
    if "flux" in name or dit_family(name):
        return dit_defaults(by_kind, name)
    for blend in by_kind.get("LR_StepBlendedKSampler", []):
        assert (blend["steps"], blend["lambda1"], blend["scheduler"], blend["cfg"]) == (50, 5, "ddim_uniform", 7.5)
    for swap in by_kind.get("LR_MultiSourceAttentionSwap", []):
        layers = "auto" if "sdxl" in name else "output 6-11"  # auto: SDXL's family default (output 3-5)
        assert (swap["lambda2"], swap["mask_start"], swap["layout_layers"], swap["reference_layers"]) == (
            10, 30, layers, layers)
    for latent in by_kind.get("EmptyLatentImage", []):
        assert latent["width"] == latent["height"] == (1024 if "sdxl" in name else 512)
    for sampler in by_kind.get("KSamplerAdvanced", []):
        assert (sampler["add_noise"], sampler["steps"], sampler["scheduler"], sampler["cfg"]) == (
            "disable", 50, "ddim_uniform", 7.5)
    for inversion in by_kind.get("LR_DDIMInversion", []):
        assert (inversion["steps"], inversion["scheduler"], inversion["cfg"]) == (50, "ddim_uniform", 1.0)
        if name.startswith(("layout_retouch_full", "layout_retouch_compact")):  # the reference's record: what a swap reads of a reference
            assert (inversion["record_attention"], inversion["record_for"]) == (True, "reference")
    # Pick-and-Draw (Lv et al. 2024): eta 10, alpha 10, beta 100, layout 0-9, appearance 10-19, 3 iterations,
    # tau 0.1, DDIM 50 steps at cfg 7.5; the reference's null-text inversion as Mokady et al.
    for guided in by_kind.get("LR_PickAndDrawSampler", []):
        assert (guided["eta"], guided["alpha"], guided["beta"], guided["iterations"], guided["threshold"]) == (
            10, 10, 100, 3, 0.1)
        assert (guided["layout_start"], guided["layout_end"], guided["appearance_start"],
                guided["appearance_end"]) == (0, 9, 10, 19)
    for palette in by_kind.get("LR_ReferencePalette", []):
        assert (palette["appearance_start"], palette["appearance_end"], palette["layers"], palette["threshold"]) == (
            10, 19, "auto", 0.1)
    for template in by_kind.get("LR_LayoutTemplate", []):
        assert template["last_step"] == 9
    for scheduler in by_kind.get("BasicScheduler", []):
        assert (scheduler["steps"], scheduler["scheduler"], scheduler["denoise"]) == (50, "ddim_uniform", 1.0)
    for select in by_kind.get("KSamplerSelect", []):
        assert select["sampler_name"] == "ddim"
    for null_text in by_kind.get("LR_NullTextInversion", []):
        assert (null_text["steps"], null_text["scheduler"], null_text["sampler_name"], null_text["cfg"],
                null_text["iterations"], null_text["learning_rate"]) == (50, "ddim_uniform", "ddim", 7.5, 10, 0.01)
    for guider in by_kind.get("CFGGuider", []):
        assert guider["cfg"] == 7.5


def dit_defaults(by_kind: dict, name: str) -> None:
    """A DiT family's settings as its row in tools/build_dit_workflows.py has them (Flux.1-dev: euler, simple, 28
    steps, cfg 1 with FluxGuidance 3.5, 1024 px), the paper's 5, 10 and 30 of 50 steps scaled to its steps (Flux:
    3, 6, 17), and the reference cache on for Flux (4.6 GiB), off where two CFG halves a step would double it."""
    f = dit_builder().FAMILIES[dit_family(name) or "flux"]
    lambda1, lambda2, mask_start = f.lambdas
    if f.stem == "flux":
        assert (f.steps, f.cfg, f.size, f.guidance, f.lambdas) == (28, 1.0, 1024, 3.5, (3, 6, 17))
    for blend in by_kind["LR_StepBlendedKSampler"]:
        assert (blend["steps"], blend["lambda1"], blend["sampler_name"], blend["scheduler"], blend["cfg"],
                blend["record_attention"]) == (f.steps, lambda1, "euler", "simple", f.cfg, False)
    for guidance in by_kind.get("FluxGuidance", []):
        assert guidance["guidance"] == f.guidance
    assert ("FluxGuidance" in by_kind) == (f.guidance is not None)
    for latent in by_kind["EmptySD3LatentImage"]:
        assert latent["width"] == latent["height"] == f.size
    for swap in by_kind.get("LR_MultiSourceAttentionSwap", []):
        assert (swap["lambda2"], swap["mask_start"], swap["layout_layers"], swap["reference_layers"], swap["source_paths"],
                swap["reference_cache"], swap["reference_positions"]) == (
            lambda2, mask_start, "auto", "auto", labels.RECORDED, labels.CACHE_RAM if f.cfg == 1.0 else labels.CACHE_OFF,
            labels.SHIFTED)
    for sampler in by_kind.get("KSamplerAdvanced", []):
        assert (sampler["add_noise"], sampler["steps"], sampler["sampler_name"], sampler["scheduler"],
                sampler["cfg"]) == ("disable", f.steps, "euler", "simple", f.cfg)
    for inversion in by_kind.get("LR_DDIMInversion", []):
        assert (inversion["steps"], inversion["sampler_name"], inversion["scheduler"], inversion["cfg"],
                inversion["record_attention"]) == (f.steps, "euler", "simple", 1.0, False)


@pytest.mark.parametrize("family, text_loader, clip_type", [("flux", "DualCLIPLoader", "flux"),
                                                             ("chroma", "CLIPLoader", "chroma"),
                                                             ("qwen_image", "CLIPLoader", "qwen_image"),
                                                             ("sd3", "TripleCLIPLoader", None)])
def test_dit_workflow_is_wired_as_the_family_runs(comfy, family, text_loader, clip_type):
    """The family's stock loaders (UNETLoader, its text loader and type, VAELoader, the LoRA on the UNet), Flux's
    FluxGuidance on every prompt, stage 1's trajectory as the layout path and its start latent as the retouch's
    start."""
    prompt = convert(comfy, f"layout_retouch_full_{family}_lora.json")
    kinds = [n["class_type"] for n in prompt.values()]
    assert {"UNETLoader", text_loader, "VAELoader", "LoraLoaderModelOnly"} <= set(kinds)
    assert "CheckpointLoaderSimple" not in kinds
    (clip,) = [n["inputs"] for n in prompt.values() if n["class_type"] == text_loader]
    assert clip.get("type") == clip_type
    (blend_id,) = [i for i, n in prompt.items() if n["class_type"] == "LR_StepBlendedKSampler"]
    (swap,) = [n["inputs"] for n in prompt.values() if n["class_type"] == "LR_MultiSourceAttentionSwap"]
    (retouch,) = [n["inputs"] for n in prompt.values() if n["class_type"] == "KSamplerAdvanced"]
    lora = next(i for i, n in prompt.items() if n["class_type"] == "LoraLoaderModelOnly")
    assert swap["model"] == [lora, 0] and prompt[blend_id]["inputs"]["personalized_model"] == [lora, 0]
    assert swap["layout_inversion"] == [blend_id, 1] and retouch["latent_image"] == [blend_id, 2]
    for name in ("reference_positive", "layout_positive"):
        assert prompt[swap[name][0]]["class_type"] == ("FluxGuidance" if family == "flux" else "CLIPTextEncode")


def test_full_workflow_shares_prompt_texts(comfy):
    prompt = convert(comfy, "layout_retouch_full_dreambooth.json")
    mask = next(n for n in prompt.values() if n["class_type"] == "LR_CrossAttentionMask")["inputs"]
    source = prompt[mask["prompt"][0]]
    assert source["class_type"] == "PrimitiveStringMultiline"
    assert source["_meta"]["title"].startswith("Personalized prompt")


FULL = [name for name in SHIPPED if name.startswith("layout_retouch_full_") and "flux" not in name and not dit_family(name)]


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
    assert (swap["source_paths"], swap["reference_cache"]) == (labels.FAST, labels.CACHE_RAM)
    # The reference's inversion records at the swap's own prompts for it: the fast mode is then exact.
    assert inversion["record_attention"] is True
    assert (inversion["positive"], inversion["negative"]) == (swap["reference_positive"], swap["reference_negative"])
    assert (inversion["steps"], inversion["scheduler"]) == (blend["steps"], blend["scheduler"])
    assert swap["reference_inversion"][0] in prompt


PICK_AND_DRAW = [name for name in SHIPPED if name.startswith("pick_and_draw_")]


def test_pick_and_draw_workflows_are_shipped():
    assert [n.removeprefix("pick_and_draw_") for n in PICK_AND_DRAW] == [
        "dreambooth.json", "embedding.json", "lora.json", "plain_sd.json"]


@pytest.mark.parametrize("name", PICK_AND_DRAW)
def test_pick_and_draw_template_shares_the_generations_sampling(comfy, name):
    """The template samples with the generation's own seed, sampler, sigmas and latent (the very nodes), so its
    maps are the layout the generation starts from; the palette reads the reference's DDIM Inversion, with the
    paper's Null-Text Inversion wired beside it (its output free: one link switches). On plain SD there is no
    template: the generation's own run would be it, where the layout loss is at its minimum."""
    prompt = convert(comfy, name)
    one = lambda kind: [(i, n["inputs"]) for i, n in prompt.items() if n["class_type"] == kind]  # noqa: E731
    ((_, generation),), ((guided_id, guided),) = one("SamplerCustomAdvanced"), one("LR_PickAndDrawSampler")
    ((palette_id, palette),), ((ddim_id, ddim),) = one("LR_ReferencePalette"), one("LR_DDIMInversion")
    ((null_text_id, null_text),) = one("LR_NullTextInversion")
    assert generation["sampler"] == [guided_id, 0] and guided["palette"] == [palette_id, 0]
    assert palette["reference_inversion"] == [ddim_id, 1]
    assert not any(null_text_id == v[0] for n in prompt.values() for v in n["inputs"].values()
                   if isinstance(v, list) and len(v) == 2)  # nothing reads it: ComfyUI does not run it
    assert palette["sigmas"] == generation["sigmas"]  # its appearance steps count as the sampler's do
    # One schedule everywhere: the inversions' steps are the generation's, on the model the generation uses.
    scheduler = prompt[generation["sigmas"][0]]["inputs"]
    generation_guider = prompt[generation["guider"][0]]["inputs"]
    for inversion in (ddim, null_text):
        assert (inversion["steps"], inversion["scheduler"]) == (scheduler["steps"], scheduler["scheduler"])
        assert inversion["model"] == palette["model"] == generation_guider["model"] == scheduler["model"]
        assert inversion["latent"] == ddim["latent"] and inversion["positive"] == ddim["positive"]
    assert null_text["cfg"] == generation_guider["cfg"]
    assert ddim["positive"] != generation_guider["positive"]  # the reference prompt, not the generation's
    assert prompt[ddim["positive"][0]]["inputs"]["text"] == palette["prompt"]
    # Each text is typed once: the samplers' prompts come from the primitives their guiders encode.
    assert prompt[generation_guider["positive"][0]]["inputs"]["text"] == guided["prompt"]
    for text in (guided["prompt"], palette["prompt"], guided["subject"]):
        assert prompt[text[0]]["class_type"] in ("PrimitiveStringMultiline", "PrimitiveString")
    templates = one("LR_LayoutTemplate")
    if name == "pick_and_draw_plain_sd.json":
        assert templates == [] and "template" not in guided
        return
    ((template_id, template),) = templates
    assert guided["template"] == [template_id, 0]
    for socket, kind in (("noise", "RandomNoise"), ("sigmas", "BasicScheduler"), ("latent_image", "EmptyLatentImage")):
        assert template[socket] == generation[socket], socket
        assert prompt[template[socket][0]]["class_type"] == kind
    assert template["sampler"] == guided["sampler"] and prompt[guided["sampler"][0]]["class_type"] == "KSamplerSelect"
    template_guider = prompt[template["guider"][0]]["inputs"]
    assert prompt[template_guider["positive"][0]]["inputs"]["text"] == template["prompt"]
    assert prompt[template["prompt"][0]]["class_type"] in ("PrimitiveStringMultiline", "PrimitiveString")
    assert prompt[template_guider["model"][0]]["_meta"]["title"].startswith(("Vanilla", "Model"))
    assert template["prompt"] != guided["prompt"]


def test_stage2_workflow_keeps_its_layout_inversion(comfy):
    prompt = convert(comfy, "layout_retouch_stage2_retouch.json")
    titles = {n["_meta"]["title"] for n in prompt.values() if n["class_type"] == "LR_DDIMInversion"}
    assert titles == {"DDIM Inversion (reference)", "DDIM Inversion (layout)"}


def test_stale_widget_values_are_reported(comfy):
    workflow = load("layout_retouch_stage1_layout.json")
    node = next(n for n in workflow["nodes"] if n["type"] == "LR_StepBlendedKSampler")
    node["widgets_values"] = node["widgets_values"][:-3]  # the last required one (denoise) is missing too
    with pytest.raises(ui_format.WorkflowError, match="widget values"):
        ui_format.ui_to_prompt(workflow, comfy.NODE_CLASS_MAPPINGS)
    node["widgets_values"] = [*node["widgets_values"], 1.0, True, "output 6-11", "surplus"]
    with pytest.raises(ui_format.WorkflowError, match="widget values"):
        ui_format.ui_to_prompt(workflow, comfy.NODE_CLASS_MAPPINGS)


def test_a_workflow_saved_before_an_optional_widget_takes_its_default(comfy):
    """As the frontend does: optional widgets a node gained at its end are absent, so the node's defaults apply."""
    workflow = load("layout_retouch_full_dreambooth.json")
    node = next(n for n in workflow["nodes"] if n["type"] == "LR_DDIMInversion")
    node["widgets_values"] = node["widgets_values"][:-1]  # saved before record_for existed
    inputs = ui_format.ui_to_prompt(workflow, comfy.NODE_CLASS_MAPPINGS)[str(node["id"])]["inputs"]
    assert "record_for" not in inputs and inputs["attention_layers"] == "output 6-11" and inputs["steps"] == 50

