"""The ComfyUI host the tests run against: found as the pack finds it, else provided under ``.venv/``.

Order: ``COMFYUI_PATH``; the ComfyUI holding the pack in ``custom_nodes/``; ``~/comfy/ComfyUI``
(these three are the pack's own search, ``host.find_comfyui``); a host provided here before, at
``.venv/ComfyUI``, or, where ``COMFYUI_ARCHIVE`` names a ComfyUI source archive, at
``.venv/hosts/<archive name>/ComfyUI`` (one folder a host: CI tests the pack on two); that archive, unpacked
there; a shallow clone of ComfyUI's tag v0.3.64 at ``.venv/ComfyUI``, where git and the network are. ``.venv/``
is ignored by git, so nothing of ComfyUI lands in the repository.

``python tests/provide_host.py`` finds or provides the host and prints its path (nothing when all
of the above fail), with what it did on stderr: ``tests/setup_and_run.sh`` calls it. ``find()``
only looks, never unpacks or clones: the tests' conftest calls it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent.parent
PINNED_TAG = "v0.3.64"
UPSTREAM = "https://github.com/comfyanonymous/ComfyUI.git"


def say(line: str) -> None:
    """What the script does, on stderr (stdout carries only the host's path)."""
    sys.stderr.write(line + "\n")


def _load_pack_host():
    """The pack's ``host`` module, loaded from its file (the pack's folder need not be importable)."""
    spec = importlib.util.spec_from_file_location("_layout_retouch_host", PACK_ROOT / "host.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


host = _load_pack_host()


def provided_for(environ: dict[str, str] | None = None) -> Path:
    """Where a host is provided: ``.venv/hosts/<archive name>/ComfyUI`` for the archive ``COMFYUI_ARCHIVE`` names
    (``ComfyUI-0.33.0`` for ``ComfyUI-0.33.0.tar.gz``), else ``.venv/ComfyUI``."""
    environ = os.environ if environ is None else environ
    archive = environ.get("COMFYUI_ARCHIVE")
    if not archive:
        return PACK_ROOT / ".venv" / "ComfyUI"
    name = Path(archive).name
    for suffix in (".tar.gz", ".tgz", ".tar.xz", ".tar"):
        name = name.removesuffix(suffix)
    return PACK_ROOT / ".venv" / "hosts" / name / "ComfyUI"


def find(environ: dict[str, str] | None = None, provided: Path | None = None) -> Path | None:
    """The host as the pack finds it, else one provided earlier under ``.venv/``; None when neither."""
    provided = provided_for(environ) if provided is None else provided
    found = host.find_comfyui(environ, PACK_ROOT)
    if found is None and host.is_comfyui(provided):
        found = provided
    return found


def describe_search(environ: dict[str, str] | None = None) -> str:
    """One line: where the host was looked for and how to provide one."""
    return (host.describe_search(environ, PACK_ROOT).rstrip(".")
            + f"; no host provided at {provided_for(environ)} (set COMFYUI_ARCHIVE to a ComfyUI source archive,"
            " or run tests/setup_and_run.sh where git and the network are)")


def unpack(archive: Path, target: Path) -> Path:
    """Unpack a ComfyUI source archive (one top folder holding ``comfy/``) to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch, tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(scratch, filter="data")
        else:  # Python before 3.11.4: the archive is the pinned host, not an arbitrary upload
            tar.extractall(scratch)  # noqa: S202
        tops = [p for p in Path(scratch).iterdir() if p.is_dir()]
        if len(tops) != 1 or not host.is_comfyui(tops[0]):
            raise ValueError(f"{archive} is not a ComfyUI source archive (one folder holding comfy/ and nodes.py)")
        tops[0].rename(target)
    return target


def clone(target: Path, tag: str = PINNED_TAG) -> Path | None:
    """A shallow clone of ComfyUI's ``tag``; None where git or the network is not there."""
    git = shutil.which("git")
    if git is None:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        checkout = Path(scratch) / "ComfyUI"
        try:
            subprocess.run([git, "clone", "--quiet", "--depth", "1", "--branch", tag, UPSTREAM, str(checkout)],
                           check=True, timeout=600, env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            say(f"git clone of ComfyUI {tag} failed: {error}")
            return None
        checkout.rename(target)
    return target


def provide(environ: dict[str, str] | None = None, provided: Path | None = None) -> Path | None:
    """Find the host, else provide it from ``COMFYUI_ARCHIVE``, else by a shallow clone."""
    environ = os.environ if environ is None else environ
    provided = provided_for(environ) if provided is None else provided
    found = find(environ, provided)
    if found is not None:
        say(f"ComfyUI host: {found}")
        return found
    archive = environ.get("COMFYUI_ARCHIVE")
    if archive:
        if not Path(archive).is_file():
            raise FileNotFoundError(f"COMFYUI_ARCHIVE={archive} is not a file.")
        say(f"ComfyUI host: unpacking {archive} to {provided}")
        return unpack(Path(archive), provided)
    say(f"ComfyUI host: cloning ComfyUI {PINNED_TAG} to {provided}")
    return clone(provided)


if __name__ == "__main__":
    provided = provide()
    sys.stdout.write(f"{provided or ''}\n")
    if provided is None:
        say(describe_search())
