"""Every node of the pack: registered, valid schema, tooltips, description, one category root."""

from __future__ import annotations

import asyncio

import pytest

EXPECTED = {"LR_StepBlendedKSampler", "LR_DDIMInversion", "LR_MultiSourceAttentionSwap", "LR_CrossAttentionMask",
            "LR_AttentionCapture", "LR_AttentionMapToMask", "LR_AdaptiveMask", "LR_SAMLoader", "LR_SAMSegment",
            "LR_CustomDiffusionLoader", "LR_NullTextInversion", "LR_ReferencePalette", "LR_LayoutTemplate",
            "LR_PickAndDrawSampler"}


@pytest.fixture(scope="module")
def pack_nodes(comfy):
    from comfyui_layout_retouch import comfy_entrypoint

    extension = asyncio.run(comfy_entrypoint())
    return asyncio.run(extension.get_node_list())


def test_registered_with_comfyui(comfy, pack_nodes):
    ids = {cls.GET_SCHEMA().node_id for cls in pack_nodes}
    assert ids == EXPECTED
    assert EXPECTED <= set(comfy.NODE_CLASS_MAPPINGS)


def test_schemas(pack_nodes):
    for cls in pack_nodes:
        schema = cls.GET_SCHEMA()
        schema.validate()
        assert schema.category.startswith("layout_retouch/"), schema.node_id
        assert schema.description and schema.display_name, schema.node_id
        for inp in schema.inputs:
            assert inp.tooltip, f"{schema.node_id}.{inp.id} has no tooltip"
        for out in schema.outputs:
            assert out.tooltip, f"{schema.node_id} output {out.display_name} has no tooltip"
        info = cls.GET_NODE_INFO_V1()
        assert info["name"] == schema.node_id
