"""The real ComfyUI host for ``host/`` and ``e2e/``: found (``provide_host.find``), run on the CPU, tiny models.

Their conftests import these fixtures. Tests that need the host take the ``comfy`` fixture (or
one built on it) and are skipped, with where the host was looked for, only when there is none.
The pack is loaded into ComfyUI through ComfyUI's own custom-node loader, as a user's install is.
"""

from __future__ import annotations

import asyncio
import sys

import provide_host
import pytest
from provide_host import PACK_ROOT

COMFYUI = provide_host.find()
SKIP_REASON = provide_host.describe_search()

if COMFYUI is not None:
    if str(COMFYUI) not in sys.path:
        sys.path.insert(0, str(COMFYUI))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before anything imports comfy.model_management
    # As main.py does: ComfyUI's utils package is imported before nodes.py puts comfy/ (with its
    # utils.py) at the front of sys.path.
    import utils.extra_config  # noqa: F401


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


@pytest.fixture(scope="session")
def tiny_xl_files(comfy, tmp_path_factory):
    """Tiny SDXL checkpoints (vanilla and personalized with both text encoders and the VAE, as SDXL
    DreamBooth checkpoints are saved; a v-prediction one UNet only), an SDXL LoRA and an SDXL
    embedding, in registered model folders."""
    import folder_paths
    import tiny_models

    from comfyui_layout_retouch.benchmark.random_models import SDXL_TINY_UNET

    root = tmp_path_factory.mktemp("models_xl")
    paths = tiny_models.write_sdxl_checkpoints(root / "checkpoints", {"tiny_xl_vanilla": 1, "tiny_xl_personalized": 2,
                                                                       "tiny_xl_vpred": 3},
                                               v_prediction=("tiny_xl_vpred",), full=2)
    paths["embedding"] = tiny_models.write_sdxl_embedding(root / "embeddings")
    paths["lora"] = tiny_models.write_lora(root / "loras", "tiny_xl_lora", unet=SDXL_TINY_UNET)
    for folder in ("checkpoints", "embeddings", "loras"):
        folder_paths.add_model_folder_path(folder, str(root / folder), is_default=True)
    yield paths
    for path in paths.values():  # 5 GB (SDXL's text encoders at their real sizes): not kept in pytest's tmp
        path.unlink(missing_ok=True)


class TinyXL(Tiny):
    """The tiny SDXL models loaded through ComfyUI's stock loader nodes: prompts through SDXL's CLIP."""

    def __init__(self, nodes, files):
        import comfy.sd

        self.nodes = nodes
        self.vanilla, self.clip, self.vae = nodes.CheckpointLoaderSimple().load_checkpoint(
            "tiny_xl_vanilla.safetensors")[:3]
        # UNet-only files: CheckpointLoaderSimple's own loader, told not to look for CLIP and VAE.
        self.personalized, self.v_prediction = (
            comfy.sd.load_checkpoint_guess_config(str(files[name]), output_vae=False, output_clip=False)[0]
            for name in ("tiny_xl_personalized", "tiny_xl_vpred"))


@pytest.fixture(scope="session")
def tiny_xl(comfy, tiny_xl_files):
    return TinyXL(comfy, tiny_xl_files)
