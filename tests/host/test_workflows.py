"""Every shipped workflow: UI format -> API prompt -> ComfyUI's validation -> execution on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyui_layout_retouch.headless import executor, ui_format

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
SHIPPED = sorted(p.name for p in WORKFLOWS.glob("*.json"))
CHECKPOINTS = {"Vanilla": "tiny_vanilla.safetensors", "Model": "tiny_vanilla.safetensors",
               "Personalized": "tiny_personalized.safetensors"}


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())


def convert(comfy, name: str) -> dict:
    return ui_format.ui_to_prompt(load(name), comfy.NODE_CLASS_MAPPINGS)


def shrink(prompt: dict, steps: int = 6) -> dict:
    """Swap in the tiny models, a small size and few steps, as a user would edit the graph."""
    sizes = {"EmptyLatentImage": {"width": 64, "height": 64}, "ImageScale": {"width": 64, "height": 64}}
    settings = {"LR_MultiSourceAttentionSwap": {"lambda2": 2, "mask_start": 4},
                "LR_CrossAttentionMask": {"steps_to_average": 3}, "LR_SAMLoader": {"sam_name": "tiny_sam.pth"},
                "LoraLoader": {"lora_name": "tiny_lora.safetensors"}}
    for node in prompt.values():
        inputs, title, kind = node["inputs"], node["_meta"]["title"], node["class_type"]
        if kind == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = next(v for k, v in CHECKPOINTS.items() if title.startswith(k))
        inputs.update(sizes.get(kind, {}))
        inputs.update(settings.get(kind, {}))
        for name, value in inputs.items():
            if isinstance(value, str) and "embedding:my_vase" in value:
                inputs[name] = value.replace("embedding:my_vase", "embedding:tiny_concept")
        if "steps" in inputs:
            inputs["steps"] = steps
        if "lambda1" in inputs:
            inputs["lambda1"] = 2
    return prompt


def write_input_images(comfy) -> None:
    folder = Path(comfy.folder_paths.get_input_directory())
    gen = np.random.default_rng(0)
    for name in ("reference.png", "layout.png"):
        Image.fromarray(gen.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(folder / name)


def images_of(comfy, outputs: dict, kind: str) -> list[np.ndarray]:
    folder = Path(comfy.folder_paths.get_output_directory() if kind == "output" else
                  comfy.folder_paths.get_temp_directory())
    return [np.asarray(Image.open(folder / i["subfolder"] / i["filename"]))
            for node in outputs.values() for i in node.get("images", []) if i["type"] == kind]


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
