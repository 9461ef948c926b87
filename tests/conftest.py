"""Test harness: finds ComfyUI as the pack does, runs it on the CPU, builds tiny models.

Tests that need the host take the ``comfy`` fixture (or one built on it) and are skipped with
the reason printed when no ComfyUI is found. The pack is importable as
``comfyui_layout_retouch`` for the host-free tests, and is loaded into ComfyUI through
ComfyUI's own custom-node loader for the host tests, as a user's install would be.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import pytest

PACK_ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "comfyui_layout_retouch"


def _import_pack():
    spec = importlib.util.spec_from_file_location(PACK_NAME, PACK_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(PACK_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


_import_pack()
from comfyui_layout_retouch import host  # noqa: E402

COMFYUI = host.find_comfyui()
SKIP_REASON = host.describe_search()

if COMFYUI is not None:
    sys.path.insert(0, str(COMFYUI))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before anything imports comfy.model_management
    # As main.py does: ComfyUI's utils package is imported before nodes.py puts comfy/ (with its
    # utils.py) at the front of sys.path.
    import utils.extra_config  # noqa: F401


MEASURED: list[str] = []


@pytest.fixture
def measured():
    """Record a measured figure; the suite prints them all in its summary."""
    return MEASURED.append


def pytest_terminal_summary(terminalreporter):
    if MEASURED:
        terminalreporter.section("measured")
        for line in MEASURED:
            terminalreporter.write_line(line)


def pytest_report_header(config):
    return f"ComfyUI host: {COMFYUI}" if COMFYUI else f"ComfyUI host: none: {SKIP_REASON}"


@pytest.fixture(autouse=True)
def _inference_mode():
    """Run each test as ComfyUI runs nodes: under ``torch.inference_mode``."""
    import torch

    with torch.inference_mode():
        yield


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """The ComfyUI host with the pack loaded through ComfyUI's custom-node loader."""
    if COMFYUI is None:
        pytest.skip(SKIP_REASON)
    import folder_paths

    import nodes

    base = tmp_path_factory.mktemp("comfy")
    for name in ("output", "input", "temp"):
        (base / name).mkdir()
    folder_paths.set_output_directory(str(base / "output"))
    folder_paths.set_input_directory(str(base / "input"))
    folder_paths.set_temp_directory(str(base / "temp"))
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))  # comfy_extras, as the server
    if not asyncio.run(nodes.load_custom_node(str(PACK_ROOT))):
        raise RuntimeError("ComfyUI failed to load the pack; see the log above")
    return nodes


@pytest.fixture(scope="session")
def tiny_files(comfy, tmp_path_factory):
    """Tiny model files in temporary model folders registered with ComfyUI."""
    import folder_paths
    import tiny_models

    root = tmp_path_factory.mktemp("models")
    paths = tiny_models.write_sd1_checkpoints(root / "checkpoints", {"tiny_vanilla": 1, "tiny_personalized": 2})
    paths["vega"] = tiny_models.write_vega_unet(root / "diffusion_models")
    paths["embedding"] = tiny_models.write_embedding(root / "embeddings")
    paths["lora"] = tiny_models.write_lora(root / "loras")
    for folder in ("checkpoints", "diffusion_models", "embeddings", "loras"):
        folder_paths.add_model_folder_path(folder, str(root / folder), is_default=True)
    return paths


@pytest.fixture(scope="session")
def tiny_sam(comfy, tmp_path_factory):
    """A tiny Segment Anything checkpoint in a temporary models/sams folder."""
    import folder_paths
    import tiny_models

    path = tiny_models.write_tiny_sam(tmp_path_factory.mktemp("sams"))
    folder_paths.add_model_folder_path("sams", str(path.parent), is_default=True)
    return path


class Tiny:
    """The tiny models loaded through ComfyUI's stock loader nodes."""

    def __init__(self, nodes):
        self.nodes = nodes
        load = nodes.CheckpointLoaderSimple().load_checkpoint
        self.vanilla, self.clip, self.vae = load("tiny_vanilla.safetensors")[:3]
        self.personalized = load("tiny_personalized.safetensors")[0]

    def encode(self, text: str):
        return self.nodes.CLIPTextEncode().encode(self.clip, text)[0]


@pytest.fixture(scope="session")
def tiny(comfy, tiny_files):
    return Tiny(comfy)
