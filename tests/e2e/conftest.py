"""Tests of the server, the browser and the command lines. Importing comfy_host puts the host on sys.path
before the test modules import anything of it; the host's fixtures are tests/conftest.py's."""

from __future__ import annotations

from pathlib import Path

import comfy_host
import pytest


@pytest.fixture
def run_here(comfy, tiny_files, tiny_sam, monkeypatch):
    """``run(argv)``: the command line's ``main`` in this process, on the host the session has loaded.

    Its ``start_host`` (which imports ComfyUI, its nodes and the pack: a fresh interpreter's work, tested
    by the ``install`` tests) is replaced by the one thing it does on a loaded host, registering the
    ``--models`` folder. ComfyUI's output folder is restored afterwards (the runner points it at its own).
    """
    import folder_paths

    from comfyui_layout_retouch.headless import cli

    def start_host(cpu: bool, models: Path | None = None) -> None:
        assert cpu, "the tests run on the CPU"
        for name in cli.MODEL_FOLDERS if models is not None else ():
            folder_paths.add_model_folder_path(name, str(models / name), is_default=True)

    def main(argv):
        try:
            return cli.main(argv)
        finally:  # the run's executor is gone, but ComfyUI keeps the models it loaded: a worker would pile them up
            comfy_host.free_memory()

    monkeypatch.setattr(cli, "start_host", start_host)
    output = folder_paths.get_output_directory()
    yield main
    folder_paths.set_output_directory(output)
