"""pyproject.toml as the Comfy Registry reads it: the project's addresses, an icon shipped in the repository."""

from __future__ import annotations

from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the TOML reader pip carries
    from pip._vendor import tomli as tomllib

PACK_ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_is_ready_for_the_registry():
    project = tomllib.loads((PACK_ROOT / "pyproject.toml").read_text())
    urls, comfy = project["project"]["urls"], project["tool"]["comfy"]
    repository = urls["Repository"]
    assert repository.startswith("https://github.com/") and repository.endswith("/comfyui-layout-retouch")
    assert urls["Bug Tracker"] == repository + "/issues" and urls["Documentation"].startswith(repository)
    assert project["project"]["classifiers"] and comfy["PublisherId"] and comfy["DisplayName"]
    prefix = repository.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    assert comfy["Icon"].startswith(prefix) and (PACK_ROOT / comfy["Icon"].removeprefix(prefix)).is_file()
    docs = urls["Documentation"].removeprefix(repository + "/tree/main/")
    assert (PACK_ROOT / docs).is_dir()
