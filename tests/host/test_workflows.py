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
