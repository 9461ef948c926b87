"""The nodes' help pages: ``web/docs/<node_id>.md``, served by ComfyUI at ``/extensions/<pack folder>/docs/``,
where the frontend's node library looks for a custom node's help.

Each page has a part written by hand (what the node does, when to use it, the paper's line it implements) and,
below ``MARKER``, its inputs and outputs, generated from the node's schema, so the page cannot drift from the node:
``tests/host/test_help_pages.py`` fails when a page's generated part differs from what this tool writes.

Run: ``COMFYUI_PATH=... python tools/build_help_pages.py`` (rewrites the generated part of every page; a page
that does not exist yet gets a stub for its hand-written part).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "web" / "docs"
MARKER = "<!-- Inputs and outputs: generated from the node's schema by tools/build_help_pages.py; edit above. -->"
LONG_COMBO = 8  # combos with more options (samplers, schedulers) list the default only


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def _setting(spec: dict) -> str:
    """Default and bounds of a widget, as the page shows them."""
    parts = []
    if "options" in spec:
        options = spec["options"]
        if not options or all("." in str(o) for o in options):  # files found in a model folder: not the schema's
            parts.append("the files in its model folder")
        elif len(options) <= LONG_COMBO:
            parts.append("one of " + ", ".join(f"`{o}`" for o in options))
        else:
            parts.append("ComfyUI's choices")  # samplers, schedulers: as many as the host has
    if "default" in spec and spec["default"] != "":
        parts.append(f"default `{spec['default']}`")
    if "min" in spec and "max" in spec:
        parts.append(f"{spec['min']} to {spec['max']}")
    return "; ".join(parts)


def generated(schema) -> str:
    """The page's part below ``MARKER``: its inputs and outputs, from ``schema`` (an ``io.Schema``)."""
    lines = [MARKER, "", "## Inputs", "", "| input | type | setting | what it is |", "|---|---|---|---|"]
    for inp in schema.inputs:
        spec = inp.as_dict()
        name = f"`{inp.id}`" + (" (optional)" if spec.get("optional") else "")
        lines.append(f"| {name} | {inp.get_io_type()} | {_cell(_setting(spec))} | {_cell(inp.tooltip)} |")
    lines += ["", "## Outputs", "", "| output | type | what it is |", "|---|---|---|"]
    for out in schema.outputs:
        lines.append(f"| `{out.display_name or out.id}` | {out.get_io_type()} | {_cell(out.tooltip)} |")
    return "\n".join(lines) + "\n"


def page(schema, by_hand: str | None) -> str:
    """The whole page: the hand-written part (a stub where there is none yet), then the generated part."""
    if by_hand is None:
        by_hand = (f"# {schema.display_name}\n\n{schema.description}\n\n## When to use\n\nTODO\n\n"
                   "## From the paper\n\nTODO\n")
    return by_hand.rstrip() + "\n\n" + generated(schema)


def hand_written(text: str) -> str | None:
    return text.split(MARKER)[0] if MARKER in text else None


def node_classes() -> list:
    """The pack's nodes, with ComfyUI importable (``COMFYUI_PATH`` or the host the pack finds)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ui_workflow import load_pack

    load_pack()
    from comfyui_layout_retouch.host import find_comfyui

    comfy_root = find_comfyui()
    if comfy_root is not None and str(comfy_root) not in sys.path:
        sys.path.insert(0, str(comfy_root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # the schemas need no device
    from comfyui_layout_retouch.nodes import LayoutRetouchExtension

    return asyncio.run(LayoutRetouchExtension().get_node_list())


def main() -> None:
    DOCS.mkdir(parents=True, exist_ok=True)
    for node in node_classes():
        schema = node.define_schema()
        path = DOCS / f"{schema.node_id}.md"
        path.write_text(page(schema, hand_written(path.read_text()) if path.exists() else None))
        print(path.relative_to(ROOT))  # noqa: T201


if __name__ == "__main__":
    main()
