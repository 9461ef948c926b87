"""Finding the ComfyUI installation the pack runs in, the way users have it.

Order: the ``COMFYUI_PATH`` environment variable; else the ComfyUI whose ``custom_nodes/``
holds this pack; else ``~/comfy/ComfyUI`` (comfy-cli's default workspace). Nothing here
imports ComfyUI, so it is safe to call before the host is on ``sys.path``.
"""

from __future__ import annotations

import os
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent
DEFAULT_WORKSPACE = Path("~/comfy/ComfyUI")


def is_comfyui(path: Path) -> bool:
    """True when ``path`` looks like a ComfyUI checkout (its ``comfy`` package and ``nodes.py``)."""
    return (path / "comfy").is_dir() and (path / "nodes.py").is_file() and (path / "execution.py").is_file()


def candidate_paths(environ: dict[str, str] | None = None, pack_root: Path = PACK_ROOT) -> list[tuple[str, Path]]:
    """The places looked at, in order, each with the reason it is looked at."""
    environ = os.environ if environ is None else environ
    found = []
    if environ.get("COMFYUI_PATH"):
        found.append(("COMFYUI_PATH", Path(environ["COMFYUI_PATH"]).expanduser()))
    if pack_root.parent.name == "custom_nodes":
        found.append(("the ComfyUI holding this pack in custom_nodes/", pack_root.parent.parent))
    home = environ.get("HOME")
    workspace = Path(home) / "comfy" / "ComfyUI" if home else DEFAULT_WORKSPACE.expanduser()
    found.append(("comfy-cli's default ~/comfy/ComfyUI", workspace))
    return found


def find_comfyui(environ: dict[str, str] | None = None, pack_root: Path = PACK_ROOT) -> Path | None:
    """The first candidate that is a ComfyUI checkout, or None.

    A ``COMFYUI_PATH`` that is set but wrong is an error, not a reason to look elsewhere:
    silently testing against another install would hide the mistake.
    """
    for reason, path in candidate_paths(environ, pack_root):
        if is_comfyui(path):
            return path.resolve()
        if reason == "COMFYUI_PATH":
            raise FileNotFoundError(f"COMFYUI_PATH={path} is not a ComfyUI checkout (no comfy/ and nodes.py there).")
    return None


def describe_search(environ: dict[str, str] | None = None, pack_root: Path = PACK_ROOT) -> str:
    """One line listing where ComfyUI was looked for, for skip messages and errors."""
    places = "; ".join(f"{reason}: {path}" for reason, path in candidate_paths(environ, pack_root))
    return f"no ComfyUI found (looked at {places}). Set COMFYUI_PATH to a ComfyUI checkout."
