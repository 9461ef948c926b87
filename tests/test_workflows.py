"""Shipped workflows: UI format -> API prompt -> ComfyUI's validation -> execution on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyui_layout_retouch.headless import executor, ui_format

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
TINY_CHECKPOINTS = {"Vanilla": "tiny_vanilla.safetensors", "Personalized": "tiny_personalized.safetensors"}


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())


def shrink(prompt: dict, steps: int = 6) -> dict:
    """Swap in the tiny models and a small size, as a user would edit the graph."""
    for node in prompt.values():
        inputs, title = node["inputs"], node["_meta"]["title"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = next(v for k, v in TINY_CHECKPOINTS.items() if title.startswith(k))
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=64, height=64)
        if "steps" in inputs:
            inputs["steps"] = steps
        if "lambda1" in inputs:
            inputs["lambda1"] = 2
        if node["class_type"] == "ImageScale":
            inputs.update(width=64, height=64)
        if node["class_type"] == "LR_MultiSourceAttentionSwap":
            inputs.update(lambda2=2, mask_start=4)
        if node["class_type"] == "LR_CrossAttentionMask":
            inputs.update(steps_to_average=3)
        if node["class_type"] == "LR_SAMLoader":
            inputs.update(sam_name="tiny_sam.pth")
    return prompt


def write_input_images(comfy) -> None:
    folder = Path(comfy.folder_paths.get_input_directory())
    gen = np.random.default_rng(0)
    for name in ("reference.png", "layout.png"):
        Image.fromarray(gen.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(folder / name)


def saved_images(comfy, outputs: dict) -> list[np.ndarray]:
    images = [img for node in outputs.values() for img in node.get("images", []) if img["type"] == "output"]
    return [np.asarray(Image.open(Path(comfy.folder_paths.get_output_directory()) / i["subfolder"] / i["filename"]))
            for i in images]


def test_stage1_workflow_runs(comfy, tiny_files):
    prompt = shrink(ui_format.ui_to_prompt(load("layout_retouch_stage1_layout.json"), comfy.NODE_CLASS_MAPPINGS))
    blend = next(n for n in prompt.values() if n["class_type"] == "LR_StepBlendedKSampler")
    assert blend["inputs"]["seed"] == 0 and blend["inputs"]["sampler_name"] == "ddim"
    images = saved_images(comfy, executor.execute(prompt))
    assert len(images) == 1
    assert images[0].shape == (64, 64, 3) and images[0].std() > 0


def test_stage1_workflow_has_papers_defaults(comfy):
    prompt = ui_format.ui_to_prompt(load("layout_retouch_stage1_layout.json"), comfy.NODE_CLASS_MAPPINGS)
    blend = next(n for n in prompt.values() if n["class_type"] == "LR_StepBlendedKSampler")["inputs"]
    assert (blend["steps"], blend["lambda1"], blend["scheduler"]) == (50, 5, "ddim_uniform")


def test_stale_widget_values_are_reported(comfy):
    workflow = load("layout_retouch_stage1_layout.json")
    node = next(n for n in workflow["nodes"] if n["type"] == "LR_StepBlendedKSampler")
    node["widgets_values"] = node["widgets_values"][:-1]
    with pytest.raises(ui_format.WorkflowError, match="widget values"):
        ui_format.ui_to_prompt(workflow, comfy.NODE_CLASS_MAPPINGS)


def test_validation_rejects_lambda1_above_steps(comfy, tiny_files):
    prompt = shrink(ui_format.ui_to_prompt(load("layout_retouch_stage1_layout.json"), comfy.NODE_CLASS_MAPPINGS))
    next(n for n in prompt.values() if n["class_type"] == "LR_StepBlendedKSampler")["inputs"]["lambda1"] = 9
    with pytest.raises(executor.PromptError, match="lambda1"):
        executor.validate(prompt)


def test_stage2_workflow_runs(comfy, tiny_files, tiny_sam):
    write_input_images(comfy)
    prompt = shrink(ui_format.ui_to_prompt(load("layout_retouch_stage2_retouch.json"), comfy.NODE_CLASS_MAPPINGS),
                    steps=6)
    kinds = {n["class_type"] for n in prompt.values()}
    assert {"LR_DDIMInversion", "LR_MultiSourceAttentionSwap", "LR_CrossAttentionMask", "KSamplerAdvanced",
            "LR_SAMSegment", "LR_AdaptiveMask"} <= kinds
    outputs = executor.execute(prompt)
    images = saved_images(comfy, outputs)
    assert len(images) == 1 and images[0].shape == (64, 64, 3) and images[0].std() > 0
    previews = [img for node in outputs.values() for img in node.get("images", []) if img["type"] == "temp"]
    assert len(previews) == 3  # M^c, M^SAM and M


def test_stage2_workflow_has_papers_defaults(comfy):
    prompt = ui_format.ui_to_prompt(load("layout_retouch_stage2_retouch.json"), comfy.NODE_CLASS_MAPPINGS)
    swap = next(n for n in prompt.values() if n["class_type"] == "LR_MultiSourceAttentionSwap")["inputs"]
    assert (swap["lambda2"], swap["mask_start"], swap["layout_layers"]) == (10, 30, "output 6-11")
    sampler = next(n for n in prompt.values() if n["class_type"] == "KSamplerAdvanced")["inputs"]
    assert (sampler["add_noise"], sampler["steps"], sampler["scheduler"], sampler["cfg"]) == (
        "disable", 50, "ddim_uniform", 7.5)
