"""Combo labels: every one a shipped workflow holds on the pack's nodes is one the node offers now (the labels are
defined once, in nodes/labels.py, and imported by the nodes, the builders, the benchmark and the tests)."""

from __future__ import annotations

import copy

import pytest
from workflow_prompts import SHIPPED, load

from comfyui_layout_retouch.headless import ui_format
from comfyui_layout_retouch.nodes import labels


def offered(comfy) -> dict[str, dict[str, list]]:
    """Per node of the pack, its combo inputs and the labels each offers (files in a model folder excepted)."""
    out = {}
    for name, cls in comfy.NODE_CLASS_MAPPINGS.items():
        if name.startswith("LR_"):
            combos = {i.id: i.as_dict()["options"] for i in cls.GET_SCHEMA().inputs if "options" in i.as_dict()}
            out[name] = {k: v for k, v in combos.items() if v and not k.endswith("_name")}
    return out


def foreign_labels(comfy, workflow: dict) -> list[tuple[str, str, object]]:
    """``(node, input, value)`` of each combo value in ``workflow`` that its node does not offer."""
    prompt = ui_format.ui_to_prompt(workflow, comfy.NODE_CLASS_MAPPINGS)
    combos = offered(comfy)
    return [(node["class_type"], name, value) for node in prompt.values()
            for name, value in node["inputs"].items()
            if name in combos.get(node["class_type"], {}) and not isinstance(value, list)
            and value not in combos[node["class_type"]][name]]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_workflows_hold_only_offered_labels(comfy, name):
    assert foreign_labels(comfy, load(name)) == []


def test_a_renamed_label_is_caught(comfy):
    workflow = copy.deepcopy(load("layout_retouch_full_dreambooth.json"))
    swap = next(n for n in workflow["nodes"] if n["type"] == "LR_MultiSourceAttentionSwap")
    at = swap["widgets_values"].index(labels.FAST)
    swap["widgets_values"][at] = "recorded, attention from the inversions (quick)"
    assert foreign_labels(comfy, workflow) == [("LR_MultiSourceAttentionSwap", "source_paths",
                                                "recorded, attention from the inversions (quick)")]


def test_the_nodes_offer_the_labels_module(comfy):
    combos = offered(comfy)
    assert combos["LR_MultiSourceAttentionSwap"] == {"source_paths": list(labels.SOURCE_PATHS),
                                                     "reference_cache": list(labels.REFERENCE_CACHE),
                                                     "reference_positions": list(labels.POSITIONS)}
    assert combos["LR_DDIMInversion"]["record_for"] == list(labels.RECORD_FOR)
    assert combos["LR_CrossAttentionMask"]["resolution"] == list(labels.RESOLUTIONS)
