"""The real ComfyUI host for ``host/`` and ``e2e/``: found (``provide_host.find``), run on the CPU, tiny models.

The session fixtures built on it (``comfy``, ``tiny_files``, ``tiny_sam``, ``tiny``, ``tiny_xl_files``,
``tiny_xl``) are defined once, in ``tests/conftest.py``, and call the functions here: a fixture
imported into two conftests would be two fixtures, each built once per folder. Importing this module
puts the host on ``sys.path`` (the ``host/`` and ``e2e/`` conftests do, before their test modules
import anything of ComfyUI); ``unit/`` never imports it.

The tiny model files are written once per version of the code that writes them, under ``.venv/tiny-models/``
(:func:`written_once`): CI's later passes (on either host), whose ``.venv`` is the first's, and every later run on
the same machine read them instead of writing them again (the SDXL set is 5 GB).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sys
import weakref
from collections.abc import Callable
from pathlib import Path

import provide_host
import pytest
import torch
from provide_host import PACK_ROOT

COMFYUI = provide_host.find()
SKIP_REASON = provide_host.describe_search()
TINY_CACHE = PACK_ROOT / ".venv" / "tiny-models"
# The code whose output the cached files are: a change to any of them writes the files anew.
TINY_SOURCES = (PACK_ROOT / "tests" / "tiny_models.py", PACK_ROOT / "benchmark" / "random_models.py",
                PACK_ROOT / "masks" / "sam.py")

if COMFYUI is not None:
    if str(COMFYUI) not in sys.path:
        sys.path.insert(0, str(COMFYUI))
    import comfy.cli_args

    # The CPU unless LR_TEST_DEVICE=cuda (the GPU check's checks); before anything imports comfy.model_management.
    comfy.cli_args.args.cpu = os.environ.get("LR_TEST_DEVICE", "cpu") == "cpu"
    # As main.py does: ComfyUI's utils package is imported before nodes.py puts comfy/ (with its
    # utils.py) at the front of sys.path.
    import utils.extra_config  # noqa: F401


def installed() -> bool:
    """True when the pack sits in the ``custom_nodes/`` of the host the tests run against (a user's
    install, CI's second pass)."""
    return COMFYUI is not None and PACK_ROOT.parent.name == "custom_nodes" and (
        PACK_ROOT.parent.parent.resolve() == COMFYUI.resolve())


def fresh_environment() -> dict[str, str]:
    """The environment of a user's shell for a command in a fresh interpreter: no ``COMFYUI_PATH`` where the
    pack finds its host by the install layout (in the host's ``custom_nodes/``), else the tests' host."""
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    if not installed():
        env["COMFYUI_PATH"] = str(COMFYUI)
    return env


def load_host(tmp_path_factory):
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


def cache_key() -> str:
    """A hash of the code that writes the tiny files. Not of the host's version: the files are in the formats users'
    files have (the same keys, shapes and dtypes whichever host's classes wrote them: 0.3.64 and 0.33.0 write the
    same sets), so one host's sets are every host's, as a user's checkpoint is (CI writes them once for both)."""
    digest = hashlib.sha256()
    for path in TINY_SOURCES:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def written_once(name: str, fallback: Path) -> Path:
    """The folder ``name`` of tiny model files (a :data:`WRITERS` entry), written only when no complete copy
    for this :func:`cache_key` is cached (written to a scratch folder, then renamed: an interrupted
    write leaves nothing that looks complete; pytest-xdist's workers take turns under a file lock, so
    one writes and the others read). ``fallback`` is used where there is no ``.venv``."""
    import fcntl

    if not TINY_CACHE.parent.is_dir():
        write_in_child(name, fallback)
        return fallback
    folder = TINY_CACHE / f"{name}-{cache_key()}"
    TINY_CACHE.mkdir(exist_ok=True)
    with open(TINY_CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not folder.is_dir():
            for stale in TINY_CACHE.glob(f"{name}-*"):  # files of older code: gigabytes for SDXL
                shutil.rmtree(stale, ignore_errors=True)
            scratch = TINY_CACHE / f".{name}-{os.getpid()}"
            shutil.rmtree(scratch, ignore_errors=True)
            write_in_child(name, scratch)
            scratch.rename(folder)
    return folder


def write_in_child(name: str, folder: Path) -> None:
    """Write the set ``name`` into ``folder`` in an interpreter of its own (this file run as a script): making a
    set's tensors takes gigabytes for a while (SDXL's text encoders), which a test worker would keep in its heap
    for the rest of the run; a child hands them back when it ends."""
    import subprocess

    env = {**os.environ, "COMFYUI_PATH": str(COMFYUI), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, __file__, name, str(folder)], env=env, cwd=str(Path(__file__).parent),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"writing the tiny {name} set failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")


def register(root: Path, folders: tuple[str, ...]) -> None:
    import folder_paths

    for folder in folders:
        folder_paths.add_model_folder_path(folder, str(root / folder), is_default=True)


def write_sd1_set(root: Path) -> None:
    import tiny_models

    tiny_models.write_sd1_checkpoints(root / "checkpoints", {"tiny_vanilla": 1, "tiny_personalized": 2})
    tiny_models.write_vega_unet(root / "diffusion_models")
    tiny_models.write_embedding(root / "embeddings")
    tiny_models.write_lora(root / "loras")
    tiny_models.write_tiny_sam(root / "sams")


def sd1_files(tmp_path_factory) -> dict[str, Path]:
    """The tiny SD1.x checkpoints, an SDXL-family UNet, an embedding, a LoRA and a small SAM, in model
    folders registered with ComfyUI (``root / "sams" / "tiny_sam.pth"`` too)."""
    root = written_once("sd1", tmp_path_factory.mktemp("models"))
    register(root, ("checkpoints", "diffusion_models", "embeddings", "loras"))
    return {"tiny_vanilla": root / "checkpoints" / "tiny_vanilla.safetensors",
            "tiny_personalized": root / "checkpoints" / "tiny_personalized.safetensors",
            "vega": root / "diffusion_models" / "tiny_sdxl_vega.safetensors",
            "embedding": root / "embeddings" / "tiny_concept.safetensors",
            "lora": root / "loras" / "tiny_lora.safetensors",
            "sam": root / "sams" / "tiny_sam.pth"}


def sam_file(files: dict[str, Path]) -> Path:
    """The small Segment Anything checkpoint, in a registered ``sams`` folder."""
    register(files["sam"].parent.parent, ("sams",))
    return files["sam"]


def write_sdxl_set(root: Path) -> None:
    import tiny_models

    from comfyui_layout_retouch.benchmark.random_models import SDXL_TINY_UNET

    # Vanilla and personalized with both text encoders and the VAE (the workflows use the personalized
    # checkpoint's CLIP and VAE, as SDXL DreamBooth checkpoints are saved); the v-prediction one UNet only.
    tiny_models.write_sdxl_checkpoints(root / "checkpoints", {"tiny_xl_vanilla": 1, "tiny_xl_personalized": 2,
                                                              "tiny_xl_vpred": 3},
                                       v_prediction=("tiny_xl_vpred",), full=2)
    tiny_models.write_sdxl_embedding(root / "embeddings")
    tiny_models.write_lora(root / "loras", "tiny_xl_lora", unet=SDXL_TINY_UNET)


def sdxl_files(tmp_path_factory) -> dict[str, Path]:
    """Tiny SDXL checkpoints (vanilla, personalized, v-prediction), an SDXL LoRA and an SDXL embedding, in
    registered model folders."""
    root = written_once("sdxl", tmp_path_factory.mktemp("models_xl"))
    register(root, ("checkpoints", "embeddings", "loras"))
    paths = {name: root / "checkpoints" / f"{name}.safetensors"
             for name in ("tiny_xl_vanilla", "tiny_xl_personalized", "tiny_xl_vpred")}
    paths["embedding"] = root / "embeddings" / "tiny_sdxl_concept.safetensors"
    paths["lora"] = root / "loras" / "tiny_xl_lora.safetensors"
    return paths


def free_memory() -> None:
    """Drop what ComfyUI keeps loaded and hand the freed memory back to the system (glibc's ``malloc_trim``: torch's
    freed tensors otherwise stay in the process's heap, counted against the suite's memory budget)."""
    import ctypes
    import gc

    import comfy.model_management

    comfy.model_management.unload_all_models()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


class LoadedOnUse:
    """Models loaded on first use and dropped by :meth:`release` (loaded again when a later test asks): a session
    fixture's models need not sit in a worker's memory through a module that does not use them. Every instance is
    listed in :data:`HOLDERS`, so :func:`release_session_models` can drop them all."""

    MODELS: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._models: dict | None = None
        HOLDERS.add(self)

    def load(self) -> dict:
        raise NotImplementedError

    def __getattr__(self, name: str):
        if name in type(self).MODELS:
            if self._models is None:
                with torch.inference_mode(False):  # as a session fixture loads them, outside a test's inference mode
                    self._models = self.load()
            return self._models[name]
        raise AttributeError(name)

    def release(self) -> None:
        self._models = None


HOLDERS: weakref.WeakSet[LoadedOnUse] = weakref.WeakSet()


def release_session_models() -> None:
    """Drop the session's tiny models (tests that use them later load them again) and free their memory: for
    the modules that load large models of their own (checkpoints in workflows, servers, the benchmark)."""
    for holder in list(HOLDERS):
        holder.release()
    free_memory()


class Tiny(LoadedOnUse):
    """The tiny models loaded through ComfyUI's stock loader nodes (on first use)."""

    MODELS = ("vanilla", "clip", "vae", "personalized")

    def __init__(self, nodes):
        super().__init__()
        self.nodes = nodes

    def load(self) -> dict:
        load = self.nodes.CheckpointLoaderSimple().load_checkpoint
        vanilla, clip, vae = load("tiny_vanilla.safetensors")[:3]
        return {"vanilla": vanilla, "clip": clip, "vae": vae, "personalized": load("tiny_personalized.safetensors")[0]}

    def encode(self, text: str):
        return self.nodes.CLIPTextEncode().encode(self.clip, text)[0]


class TinyXL(Tiny):
    """The tiny SDXL models, loaded by ComfyUI's checkpoint loader (``CheckpointLoaderSimple``'s function) as a
    user's ``--fp16-unet --fp16-text-enc`` would: UNet weights and text encoders stored in fp16, computed in
    float32 (ComfyUI's manual cast). The tiny SDXL keeps SDXL's 70 transformer blocks and full-size text encoders,
    so in float32 the UNets and CLIP-G/L held 5.3 GB; this way 3.1 GB. Text encoders in fp8 (what the SDXL
    workflows load, host/test_workflows.py) would hold 0.8 GB less but take 4.0 s a prompt on one core, against
    1.5 s: the cast from fp8 is the encode's cost. The defaults' float32 UNet changes nothing the tests read but
    the memory. Prompts go through SDXL's CLIP, each text once while the models are held (:meth:`encode`)."""

    MODELS = ("vanilla", "clip", "vae", "personalized")
    UNET = {"dtype": torch.float16}
    TEXT = {"dtype": torch.float16}

    def __init__(self, nodes, files):
        super().__init__(nodes)
        self.files = files
        self._encoded: dict = {}

    def encode(self, text: str):
        """``CLIPTextEncode``'s conditioning of ``text``, encoded on its first use (the same CLIP gives the same
        tensors; a test that changes a conditioning changes a copy: ComfyUI's nodes do not write into theirs)."""
        if text not in self._encoded:
            self._encoded[text] = super().encode(text)
        return self._encoded[text]

    def release(self) -> None:
        super().release()
        self._encoded = {}

    def checkpoint(self, name: str, **outputs):
        import comfy.sd
        import folder_paths

        return comfy.sd.load_checkpoint_guess_config(
            str(self.files[name]), embedding_directory=folder_paths.get_folder_paths("embeddings"),
            model_options=self.UNET, te_model_options=self.TEXT, **outputs)

    def load(self) -> dict:
        vanilla, clip, vae = self.checkpoint("tiny_xl_vanilla")[:3]
        # UNet-only files: the same loader, told not to look for CLIP and VAE.
        personalized = self.checkpoint("tiny_xl_personalized", output_vae=False, output_clip=False)[0]
        return {"vanilla": vanilla, "clip": clip, "vae": vae, "personalized": personalized}

    def load_v_prediction(self):
        """The v-prediction checkpoint (UNet only), loaded anew and not held: one test reads its model type."""
        return self.checkpoint("tiny_xl_vpred", output_vae=False, output_clip=False)[0]


class TinyDiT:
    """Two tiny transformers of one DiT family (64 wide, 2 heads, two blocks of each kind) built with ComfyUI's own
    classes from the config its detection would make (``benchmark.random_models.dit_patcher``): the vanilla and a
    "personalized" one. Their text encoders (T5-XXL, Qwen2.5-VL 7B) cannot be tiny, so prompts are conditioning
    tensors of the family's real shapes seeded by their text, with the pooled text and guidance the family
    reads."""

    # name: (config, text width, pooled width or None, guidance or None, base model, the "auto" blocks it has,
    #        two blocks of other kinds where it has them, its block count)
    SPECS = {
        "flux": ("FLUX_TINY", 4096, 768, 3.5, "Flux", {("double", 0), ("double", 1)}, ("double 0", "single 1"), 4),
        "chroma": ("CHROMA_TINY", 4096, None, 0.0, "Chroma", {("double", 0), ("double", 1)}, ("double 0", "single 1"),
                   4),
        "qwen_image": ("QWEN_IMAGE_TINY", 3584, None, None, "QwenImage", {("double", 0), ("double", 1)},
                       ("double 0", "double 1"), 2),
        "sd3": ("SD3_TINY", 4096, 2048, None, "SD3", {("double", 0), ("double", 1)}, ("double 0", "double 1"), 2),
        "flux2": ("FLUX2_TINY", 7680, None, None, "Flux2", {("double", 0), ("double", 1)}, ("double 0", "single 1"),
                  4),
    }
    HOSTS = {"flux2": "0.33.0"}  # a family a host has from this release on (its tests are marked for it)

    def __init__(self, name: str) -> None:
        from comfyui_layout_retouch.benchmark import random_models

        config, self.text_width, self.pooled, self.guidance, self.base_model, self.auto, self.two_blocks, \
            self.blocks = self.SPECS[name]
        self.name, self.config = name, getattr(random_models, config)
        self.vanilla = random_models.dit_patcher(self.config, random_models.dit_state_dict(self.config, 1))
        self.personalized = random_models.dit_patcher(self.config, random_models.dit_state_dict(self.config, 2))
        self.channels = self.vanilla.model.latent_format.latent_channels  # Flux.2: 128
        self.patch = self.config.get("patch_size", 2)  # latent pixels per image token, each way

    def encode(self, text: str, tokens: int = 256):
        import zlib

        gen = torch.Generator().manual_seed(zlib.crc32(text.encode()))
        text_tokens = torch.randn(1, tokens, self.text_width, generator=gen)
        # A T5-only encoder's conditioning carries pooled_output None (ComfyUI's CLIP.encode_from_tokens_scheduled)
        extra = {"pooled_output": None if self.pooled is None else torch.randn(1, self.pooled, generator=gen)}
        if self.guidance is not None:
            extra["guidance"] = self.guidance
        return [[text_tokens, extra]]

    @property
    def dit_keys(self) -> dict[str, tuple[str, int]]:
        """The ``dit`` patch key of each of :attr:`two_blocks`."""
        return {text: (f"{text.split()[0]}_block", int(text.split()[1])) for text in self.two_blocks}


class TinyFlux(TinyDiT):
    """The tiny Flux.1-dev pair (2 double and 2 single blocks), prompts of Flux's real shapes (T5 ``[1, 256, 4096]``,
    CLIP-L pooled ``[1, 768]``) with FluxGuidance's ``guidance``."""

    def __init__(self) -> None:
        super().__init__("flux")

    @staticmethod
    def encode(text: str, guidance: float = 3.5, tokens: int = 256):
        import zlib

        gen = torch.Generator().manual_seed(zlib.crc32(text.encode()))
        return [[torch.randn(1, tokens, 4096, generator=gen),
                 {"pooled_output": torch.randn(1, 768, generator=gen), "guidance": guidance}]]


def flux_files(tmp_path_factory) -> dict[str, Path]:
    """The Flux files of ``tiny_models.write_flux_set`` in registered model folders."""
    root = written_once("flux", tmp_path_factory.mktemp("models_flux"))
    register(root, ("diffusion_models", "loras", "vae", "text_encoders"))
    return {"unet": root / "diffusion_models" / "tiny_flux_3072.safetensors",
            "lora": root / "loras" / "tiny_flux_lora.safetensors",
            "lora_narrow": root / "loras" / "tiny_flux_lora_narrow.safetensors",
            "vae": root / "vae" / "tiny_flux_vae.safetensors",
            "clip_l": root / "text_encoders" / "placeholder_clip_l.safetensors",
            "t5": root / "text_encoders" / "placeholder_t5xxl.safetensors"}


class FluxTextStandIn:
    """A DiT's CLIP (the text loader's output) for the tests: ComfyUI's own tokenizer of the family (Flux's CLIP-L
    and T5; T5 for Chroma; Qwen2.5-VL's chat template for Qwen-Image; Qwen3-4B's for Flux.2 Klein), and prompts
    encoded as the tiny model's ``encode`` makes them (T5-XXL and the LLMs cannot be tiny); Flux.2's with as many
    tokens as its tokenizer gives (its encoder keeps them all: 512, padded at the end)."""

    def __init__(self, tiny_flux) -> None:
        name = getattr(tiny_flux, "name", "flux")
        if name == "qwen_image":
            from comfy.text_encoders.qwen_image import QwenImageTokenizer as Tokenizer
        elif name == "flux2":
            from comfy.text_encoders.flux import KleinTokenizer as Tokenizer
        else:
            from comfy.text_encoders.flux import FluxTokenizer as Tokenizer

        self.tokenizer, self.tiny_flux, self.text, self.keeps_length = Tokenizer(), tiny_flux, None, name == "flux2"

    def tokenize(self, text: str, return_word_ids: bool = False, **kwargs):
        self.text = text
        return self.tokenizer.tokenize_with_weights(text, return_word_ids, **kwargs)

    def encode_from_tokens_scheduled(self, tokens, **kwargs):
        if self.keeps_length:
            return self.tiny_flux.encode(self.text, tokens=sum(len(chunk) for chunk in next(iter(tokens.values()))))
        return self.tiny_flux.encode(self.text)


def write_flux_set(root: Path) -> None:
    import tiny_models

    tiny_models.write_flux_set(root)


WRITERS: dict[str, Callable[[Path], None]] = {"sd1": write_sd1_set, "sdxl": write_sdxl_set, "flux": write_flux_set}

if __name__ == "__main__":  # write_in_child: python comfy_host.py NAME FOLDER
    import conftest  # noqa: F401  (the pack, importable as comfyui_layout_retouch)

    WRITERS[sys.argv[1]](Path(sys.argv[2]))
