"""ARCHITECTURE.md's arrows are the code's imports: the ``imports`` block lists, per package, the packages
it imports, and every import in the code (read as tests/unit/test_layers.py reads them) is one of them."""

from __future__ import annotations

import re
from pathlib import Path

from test_layers import imported_packages, pack_modules

PACK_ROOT = Path(__file__).resolve().parents[2]


def drawn(text: str) -> dict[str, set[str]]:
    """The arrows of the first ```imports block: ``package -> a, b`` per line."""
    block = re.search(r"```imports\n(.*?)```", text, re.S)
    assert block, "ARCHITECTURE.md has no ```imports block"
    arrows = {}
    for line in block.group(1).strip().splitlines():
        source, _, targets = line.partition("->")
        arrows[source.strip()] = {t.strip() for t in targets.split(",") if t.strip()}
    return arrows


def code_imports() -> dict[str, set[str]]:
    arrows: dict[str, set[str]] = {}
    for name, path in pack_modules().items():
        own = name.split(".")[0]
        for target in imported_packages(path) - {own}:
            arrows.setdefault(own, set()).add(target)
    return arrows


def test_the_drawn_arrows_are_the_imports():
    assert drawn((PACK_ROOT / "ARCHITECTURE.md").read_text()) == code_imports()


def test_a_missing_arrow_is_found():
    text = "```imports\nnodes -> records\n```\n"
    assert drawn(text) != code_imports()
    assert drawn(text) == {"nodes": {"records"}}


# A cited name: `file.py`, `package/file.py`, `module.name` or `package/module.name` (backticked in the page).
CITED = re.compile(r"`((?:[a-z_]+/)?[a-z_]+)(?:\.py|\.([A-Za-z_]\w*))`")
DEFINED = r"\b{0}\b"  # defined there, or handed on (a package's re-export)


def cited_names(text: str) -> set[tuple[str, str | None]]:
    """``(module path without .py, name or None)`` of every module or module-level name the page cites."""
    return {(module, name) for module, name in CITED.findall(text) if not module.startswith(("comfy", "torch"))}


def resolve(module: str, modules: dict[str, Path]) -> list[Path]:
    """The pack's files a cited module names: ``pkg/mod`` exactly, a bare ``mod`` in any package."""
    key = module.replace("/", ".")
    return [path for name, path in modules.items() if name == key or name.endswith("." + key) or
            (name.rsplit(".", 1)[-1] == key)]


def missing_names(text: str) -> list[str]:
    modules = {**pack_modules(), **{f"tests.{p.stem}": p for p in (PACK_ROOT / "tests").glob("*.py")},
               **{f"tools.{p.stem}": p for p in (PACK_ROOT / "tools").glob("*.py")}}
    missing = []
    for module, name in sorted(cited_names(text), key=str):
        paths = resolve(module, modules) or ([PACK_ROOT / f"{module}.py"] if (PACK_ROOT / f"{module}.py").exists()
                                              else [])
        if not paths:
            missing.append(f"{module}.py")
        elif name and not any(re.search(DEFINED.format(re.escape(name)), p.read_text(), re.M) for p in paths):
            missing.append(f"{module}.{name}")
    return missing


def test_every_name_the_page_cites_exists():
    assert missing_names((PACK_ROOT / "ARCHITECTURE.md").read_text()) == []


def test_every_module_is_named_on_the_page():
    text = (PACK_ROOT / "ARCHITECTURE.md").read_text()
    unnamed = sorted(name for name, path in pack_modules().items()
                     if path.name != "__init__.py" and path.name not in text and f"`{path.stem}." not in text)
    assert unnamed == []


def test_a_name_that_is_gone_is_found():
    assert missing_names("`nodes/inputs.prompt_extras`, `headless/runner.py`") == ["headless/runner.py",
                                                                                    "nodes/inputs.prompt_extras"]
