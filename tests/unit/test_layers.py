"""The pack's layers point one way: nodes -> algorithms -> records and the host; no import goes back up.

Read from the source with ``ast`` (nothing is imported), every import of the pack's own modules,
at module level or inside a function, relative or by the pack's name.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[2]
PACK_NAME = "comfyui_layout_retouch"

# Each top-level package or module of the pack and its layer; a layer imports only lower ones,
# and packages of one layer import nothing of each other.
LAYERS = {
    "errors": 0, "host": 0, "host_api": 0, "records": 0,  # records and the host
    "attention": 1, "sampling": 1, "personalize": 1,  # algorithms
    "masks": 2,  # algorithms built on attention/ (the cross-attention mask)
    "guidance": 3,  # Pick-and-Draw's guidance, on attention/, sampling/ and masks/
    "evaluation": 3,  # the papers' metrics (issue 16), on masks/ (Segment Anything)
    "nodes": 4,  # thin V3 nodes: input checks, one algorithm call each
    "benchmark": 5, "headless": 6,  # tools that run the nodes
    "__init__": 7, "__main__": 7,  # ComfyUI's entry point
}
SKIP = {".venv", "tests", "tools", "workflows", ".git", ".ci"}


def pack_modules() -> dict[str, Path]:
    """Dotted names inside the pack (``attention.swap``, ``records``, ``__init__``) to files."""
    found = {}
    for path in PACK_ROOT.rglob("*.py"):
        parts = path.relative_to(PACK_ROOT).parts
        if parts[0] in SKIP:
            continue
        names = list(parts[:-1]) + ([] if parts[-1] == "__init__.py" and len(parts) > 1 else [path.stem])
        found[".".join(names)] = path
    return found


def imported_packages(path: Path, package: list[str] | None = None) -> set[str]:
    """The pack's top-level packages that the module at ``path`` imports; ``package``: the folders
    from the pack's root to it (default: read from ``path``)."""
    package = list(path.relative_to(PACK_ROOT).parent.parts) if package is None else package
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            dotted = [*base, *(node.module.split(".") if node.module else [])]
            if dotted:
                targets.add(dotted[0])
            else:  # "from . import x" at the pack's root
                targets.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACK_NAME:
            targets.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            targets.update(a.name.split(".")[1] for a in node.names if a.name.startswith(PACK_NAME + "."))
    return targets


def test_every_top_level_package_has_a_layer():
    tops = {name.split(".")[0] for name in pack_modules()}
    assert tops == set(LAYERS), f"give these a layer: {sorted(tops ^ set(LAYERS))}"


def test_imports_go_down_only():
    wrong = []
    for name, path in sorted(pack_modules().items()):
        own = name.split(".")[0]
        for target in imported_packages(path):
            if target != own and LAYERS[target] >= LAYERS[own]:
                wrong.append(f"{name} imports {target} (layer {LAYERS[target]} >= {own}'s {LAYERS[own]})")
    assert not wrong, "\n".join(wrong)


def test_the_walk_sees_imports(tmp_path):
    """The check can fail: the walk finds relative imports at every depth and inside functions."""
    modules = pack_modules()
    assert "records" in imported_packages(modules["attention.swap"])
    assert {"attention", "records", "nodes"} <= imported_packages(modules["nodes.retouch"])
    assert imported_packages(modules["__init__"]) == {"nodes"}  # imported inside comfy_entrypoint
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..nodes.inputs import NodeInputError\n    from . import layers\n")
    assert imported_packages(probe, ["attention"]) == {"nodes", "attention"}


# ComfyUI 0.3.64 serves the node API as comfy_api.latest (STABLE = False: it may change under the pack with an
# update) and as versioned modules; the pack uses the versioned one.
NODE_API = "comfy_api.v0_0_2"


def host_api_imports() -> dict[str, set[str]]:
    """Per pack module, the ``comfy_api`` modules it imports (at module level or in a function)."""
    found = {}
    for name, path in pack_modules().items():
        modules = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("comfy_api"):
                modules.add(node.module)
            elif isinstance(node, ast.Import):
                modules.update(a.name for a in node.names if a.name.startswith("comfy_api"))
        if modules:
            found[name] = modules
    return found


def test_the_node_api_is_a_versioned_module():
    imports = host_api_imports()
    assert imports and all(modules == {NODE_API} for modules in imports.values()), imports
    assert "nodes.extension" in imports  # the extension itself
