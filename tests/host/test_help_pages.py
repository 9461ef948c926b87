"""The nodes' help pages (web/docs/<node id>.md, served for the frontend's node library): one per node, each
with its hand-written part and its inputs and outputs as the node's schema has them now."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[2]


def tool():
    spec = importlib.util.spec_from_file_location("build_help_pages", PACK_ROOT / "tools" / "build_help_pages.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("build_help_pages", module)
    spec.loader.exec_module(module)
    return module


def test_every_node_has_a_current_help_page(comfy):
    from comfyui_layout_retouch.nodes import LayoutRetouchExtension

    build = tool()
    schemas = [node.define_schema() for node in asyncio.run(LayoutRetouchExtension().get_node_list())]
    assert {p.stem for p in build.DOCS.glob("*.md")} == {s.node_id for s in schemas}
    for schema in schemas:
        text = (build.DOCS / f"{schema.node_id}.md").read_text()
        by_hand = build.hand_written(text)
        assert by_hand is not None, f"{schema.node_id}: no generated part (run tools/build_help_pages.py)"
        assert text == build.page(schema, by_hand), f"{schema.node_id}: out of date (run tools/build_help_pages.py)"
        assert by_hand.startswith(f"# {schema.display_name}\n")
        assert "## When to use" in by_hand and "## From the paper" in by_hand and "TODO" not in by_hand
        for inp in schema.inputs:
            assert f"| `{inp.id}`" in text


def test_a_changed_schema_makes_the_page_stale(comfy):
    """The check above can fail: a tooltip changed in the schema no longer matches the page."""
    from comfyui_layout_retouch.nodes.sampling import StepBlendedKSampler

    build = tool()
    schema = StepBlendedKSampler.define_schema()
    text = (build.DOCS / f"{schema.node_id}.md").read_text()
    schema.inputs[0].tooltip = "changed"
    assert text != build.page(schema, build.hand_written(text))


def test_the_pack_serves_its_web_folder():
    """ComfyUI serves a custom node's WEB_DIRECTORY at /extensions/<folder>/, where the frontend fetches help."""
    import comfyui_layout_retouch

    assert (PACK_ROOT / comfyui_layout_retouch.WEB_DIRECTORY / "docs").is_dir()
