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
