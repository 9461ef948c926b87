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
    return prompt


def test_stage1_workflow_runs(comfy, tiny_files):
    prompt = shrink(ui_format.ui_to_prompt(load("layout_retouch_stage1_layout.json"), comfy.NODE_CLASS_MAPPINGS))
    blend = next(n for n in prompt.values() if n["class_type"] == "LR_StepBlendedKSampler")
    assert blend["inputs"]["seed"] == 0 and blend["inputs"]["sampler_name"] == "ddim"
    outputs = executor.execute(prompt)
    images = [img for node in outputs.values() for img in node.get("images", [])]
    assert len(images) == 1
    path = Path(comfy.folder_paths.get_output_directory()) / images[0]["subfolder"] / images[0]["filename"]
    pixels = np.asarray(Image.open(path))
    assert pixels.shape == (64, 64, 3) and pixels.std() > 0


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
