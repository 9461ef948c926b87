"""Every bounded input of every node of the pack, just outside its bounds, through ComfyUI's real
``validate_prompt``: each refused, the refusal naming the node's input. (ComfyUI 0.3.64 skips its own min/max
check of an input a node's ``validate_inputs`` takes; those nodes check their schema's bounds themselves.)"""

from __future__ import annotations

import asyncio
import copy
import uuid

import pytest
from workflow_prompts import convert, shrink

# Prompts that hold every node of the pack, each where an output reads it: a small graph for the experimenters'
# nodes (Attention Capture before a KSampler, Attention Map to Mask after it), the Custom Diffusion Loader and the
# Null-Text Inversion (the shipped workflows leave it unconnected), then three shipped workflows.
SHIPPED = ("layout_retouch_full_dreambooth.json", "pick_and_draw_lora.json", "layout_retouch_stage2_retouch.json")
EXPERIMENTS = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_vanilla.safetensors"}},
    "2": {"class_type": "LR_CustomDiffusionLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1],
          "weights_name": "none", "modifier_token": "<new1>", "strength": 1.0}},
    "3": {"class_type": "LR_AttentionCapture", "inputs": {"model": ["2", 0], "layers": "output 3-11", "start_step": 0,
          "end_step": 10000, "record_self_kv": False}},
    "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "a vase"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "6": {"class_type": "KSampler", "inputs": {"model": ["3", 0], "seed": 0, "steps": 2, "cfg": 7.5,
          "sampler_name": "ddim", "scheduler": "ddim_uniform", "positive": ["4", 0], "negative": ["4", 0],
          "latent_image": ["5", 0], "denoise": 1.0}},
    "7": {"class_type": "LR_AttentionMapToMask", "inputs": {"store": ["3", 1], "after": ["6", 0], "clip": ["2", 1],
          "prompt": "a vase", "subject": "vase", "threshold": 0.1}},
    "8": {"class_type": "MaskToImage", "inputs": {"mask": ["7", 1]}},
    "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    "10": {"class_type": "LR_NullTextInversion", "inputs": {"model": ["1", 0], "positive": ["4", 0],
           "negative": ["4", 0], "latent": ["5", 0], "steps": 6, "scheduler": "ddim_uniform", "sampler_name": "ddim",
           "cfg": 7.5, "iterations": 2, "learning_rate": 0.01, "early_stop": 1e-5}},
    "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 2]}},
    "12": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}},
}


def api_prompts(comfy) -> list[dict]:
    return [copy.deepcopy(EXPERIMENTS)] + [shrink(convert(comfy, name)) for name in SHIPPED]


def outside(spec: dict) -> list:
    """Values just outside an input's bounds: below its minimum, above its maximum (by its step, or 1)."""
    step = spec.get("step") or 1
    return [v for v in (spec["min"] - step if "min" in spec else None,
                        spec["max"] + step if "max" in spec else None) if v is not None]


def cases(comfy) -> list[tuple[str, str, object]]:
    found = {}
    for name, cls in comfy.NODE_CLASS_MAPPINGS.items():
        if name.startswith("LR_"):
            for spec in cls.GET_SCHEMA().inputs:
                for value in outside(spec.as_dict()):
                    found[(name, spec.id, value)] = None
    return list(found)


def refusals(prompt: dict) -> dict:
    import execution

    # (ok stays True while another output of the prompt validates: ComfyUI then runs that one alone)
    _, _, _, node_errors = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), prompt, None))
    return node_errors


def test_every_bounded_input_just_outside_is_refused(comfy, tiny_files, tiny_sam):
    """All of them, in one test: each prompt is validated once per case (no model runs)."""
    from workflow_prompts import write_input_images

    write_input_images(comfy)
    graphs = api_prompts(comfy)
    checked, vague = [], []
    for node_type, name, value in cases(comfy):
        graph = next((g for g in graphs if any(n["class_type"] == node_type for n in g.values())), None)
        assert graph is not None, f"no prompt holds {node_type}: add it to this test's graphs"
        prompt = copy.deepcopy(graph)
        node_id = next(i for i, n in prompt.items() if n["class_type"] == node_type)
        prompt[node_id]["inputs"][name] = value
        errors = refusals(prompt).get(node_id, {}).get("errors", [])
        named = [e for e in errors if name in e.get("details", "") or e.get("extra_info", {}).get("input_name") == name]
        (checked if len(named) == 1 else vague).append((node_type, name, value, len(named)))
    assert not vague, f"not refused, refused without naming the input, or listed more than once: {vague}"
    assert len(checked) >= 40  # every bounded input of the 14 nodes, both sides


def test_each_validate_inputs_takes_one_input(comfy):
    """ComfyUI 0.3.64 lists a refusal of ``validate_inputs`` once for every input the function takes (and skips its
    own bound check of those): taking one input, a node's refusal is one line, at the input it names."""
    import inspect

    taken = {name: [p for p in inspect.signature(cls.validate_inputs).parameters if p != "cls"]
             for name, cls in comfy.NODE_CLASS_MAPPINGS.items()
             if name.startswith("LR_") and "validate_inputs" in vars(cls)}
    assert len(taken) >= 5 and all(len(inputs) == 1 for inputs in taken.values()), taken


@pytest.mark.parametrize("node_type, name, value, words", [
    ("LR_MultiSourceAttentionSwap", "lambda2", -1, "Value -1 smaller than min of 0: lambda2"),  # ComfyUI's check
    ("LR_StepBlendedKSampler", "steps", 0, "Value 0 smaller than min of 1: steps"),
    ("LR_StepBlendedKSampler", "denoise", 1.5, "denoise - Step-Blended KSampler: input 'denoise': is 1.5, above its maximum 1.0. Fix: set it"),
])
def test_the_issues_cases_are_refused_at_validation(comfy, tiny_files, tiny_sam, node_type, name, value, words):
    """Once accepted (run as 0, a ZeroDivisionError, run as 1.0): now refused in one line naming the input, by
    ComfyUI's own bound check where the node's ``validate_inputs`` does not take the input, else by the node."""
    prompt = copy.deepcopy(api_prompts(comfy)[1])
    node_id = next(i for i, n in prompt.items() if n["class_type"] == node_type)
    prompt[node_id]["inputs"][name] = value
    if name == "steps":
        prompt[node_id]["inputs"]["lambda1"] = 0
    said = [f"{e['message']}: {e['details']}" for e in refusals(prompt)[node_id]["errors"]]
    assert len(said) == 1 and words in said[0], said
