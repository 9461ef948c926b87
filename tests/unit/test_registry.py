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


# Releases of ComfyUI that exist (0.39.0 the newest when this was written): the Registry installs the pack on each.
RELEASES = ("0.3.64", "0.3.65", "0.33.0", "0.38.1", "0.39.0")


def requires_comfyui():
    from packaging.specifiers import SpecifierSet

    return SpecifierSet(tomllib.loads((PACK_ROOT / "pyproject.toml").read_text())["tool"]["comfy"]["requires-comfyui"])


def test_requires_comfyui_admits_every_release_from_the_oldest_supported_on():
    """No upper bound that refuses a release that exists: a host whose internals moved is refused by the adapters
    (host_api.HostShapeError), in one line naming the internal, not by its version number."""
    required = requires_comfyui()
    assert all(required.contains(version) for version in RELEASES), [v for v in RELEASES if not required.contains(v)]
    assert not required.contains("0.3.63") and not required.contains("0.2.7")
    assert all(spec.operator in (">=", ">") for spec in required)
