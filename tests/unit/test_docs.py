"""The README and the pages under docs/: every relative link resolves (the file, and the heading it points at);
the README stays a newcomer's length."""

from __future__ import annotations

import re
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    out = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def pages() -> list[Path]:
    return [PACK_ROOT / "README.md", PACK_ROOT / "ARCHITECTURE.md", *sorted((PACK_ROOT / "docs").glob("*.md"))]


def broken_links(page: Path) -> list[str]:
    text, broken = page.read_text(), []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # an address on the web
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(target)
    return broken


def test_every_link_resolves():
    assert {page.name: broken_links(page) for page in pages()} == {page.name: [] for page in pages()}


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](missing.md) [no heading](#nowhere) [web](https://x.org/a)\n")
    assert broken_links(page) == ["missing.md", "#nowhere"]


def test_the_readme_is_short_and_keeps_its_two_commands():
    text = (PACK_ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert "bash tests/setup_and_run.sh" in text and 'git clone "$REPO_URL" comfyui-layout-retouch' in text
