"""Where the tests' host was found, as the pack finds it in the layout the tests run in (CI's second pass:
installed at ``<host>/custom_nodes/comfyui-layout-retouch``, with ``LR_EXPECT_INSTALLED=1``)."""

from __future__ import annotations

import os

import comfy_host
import provide_host
import pytest

from comfyui_layout_retouch import host


@pytest.mark.install
def test_the_host_is_found_as_the_layout_says(tmp_path):
    if os.environ.get("LR_EXPECT_INSTALLED") == "1":
        assert comfy_host.installed(), f"the pack at {provide_host.PACK_ROOT} is not in the custom_nodes/ of the " \
                                       f"host the tests found ({comfy_host.COMFYUI})"
    found = host.find_comfyui({"HOME": str(tmp_path)}, provide_host.PACK_ROOT)  # no COMFYUI_PATH, no ~/comfy
    if comfy_host.installed():
        assert found == comfy_host.COMFYUI.resolve()  # the ComfyUI holding the pack
        assert provide_host.find({k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}) == found
    else:  # a clone outside any ComfyUI: found by COMFYUI_PATH, ~/comfy/ComfyUI or the one under .venv/
        assert found is None


@pytest.mark.install
def test_the_pack_loads_through_comfyuis_custom_node_loader(comfy):
    """The session's host loaded the pack from its folder (the install's, in the second pass), with every node."""
    import asyncio

    from comfyui_layout_retouch.nodes import LayoutRetouchExtension

    ids = {node.GET_SCHEMA().node_id for node in asyncio.run(LayoutRetouchExtension().get_node_list())}
    assert len(ids) == 14 and ids <= set(comfy.NODE_CLASS_MAPPINGS)
    module = comfy.NODE_CLASS_MAPPINGS["LR_StepBlendedKSampler"].RELATIVE_PYTHON_MODULE
    assert module == f"custom_nodes.{provide_host.PACK_ROOT.name}"
