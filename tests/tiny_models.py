"""Tiny, randomly initialised models in the real file formats, built with ComfyUI's own classes.

The files are loaded back through ComfyUI's stock loaders in the tests, so detection, key
conversion and sampling all run through the host's code. ComfyUI's layers skip weight
initialisation (their memory starts as ``torch.empty``), so every tensor is given a seeded
value here before it is saved.

- SD1.x checkpoint: ComfyUI detects SD1.x by ``model_channels = 320`` and ``context_dim = 768``;
  the UNet keeps SD1.5's block layout (4 levels, 2 res blocks each, attention on the first
  three, so the decoder's attention keys are ``("output", 3..11)`` as in SD1.5) but with every
  level 320 channels wide. The text encoder is CLIP-L at its fixed size; the VAE is SD's.
- SDXL checkpoint: SDXL's block layout and transformer depths with every level 320 channels wide,
  SDXL's two text encoders at their real sizes, stored in fp8 (e4m3fn, as fp8 checkpoints are: a
  loader holds half the memory while it reads them), and the VAE (``benchmark.random_models``);
  detected as ``SDXL``. A v-prediction one carries the ``v_pred`` key, as v-prediction finetunes do.
- SDXL-family diffusion model: Segmind Vega's detection keys with narrow levels, loadable with
  ``UNETLoader``; used to test the family checks.
- Textual Inversion embedding: ``emb_params`` of shape ``[n_vectors, 768]`` (SD1.x); for SDXL,
  ``clip_l`` ``[n, 768]`` and ``clip_g`` ``[n, 1280]``, as SDXL embeddings are saved.
- LoRA: kohya format over every attention projection of the tiny UNet (SD1.x or SDXL).
"""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch

from comfyui_layout_retouch.benchmark.random_models import SD1_TINY_UNET as SD1_UNET
from comfyui_layout_retouch.benchmark.random_models import SDXL_TINY_UNET as SDXL_UNET
from comfyui_layout_retouch.benchmark.random_models import sd1_checkpoint, sdxl_checkpoint, unet_state_dict

VEGA_UNET = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2],
    channel_mult=(1, 1, 1), transformer_depth=[0, 0, 1, 1, 2, 2], transformer_depth_output=[2, 2, 2, 1, 1, 1, 0, 0, 0],
    transformer_depth_middle=1, context_dim=2048, adm_in_channels=2816, num_classes="sequential",
    num_head_channels=64, use_spatial_transformer=True, use_linear_in_transformer=True, legacy=False,
)


SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                      torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64",
                      torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


def save_file(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """``safetensors.torch.save_file``'s file (its format: an 8-byte header length, the JSON header, the tensors'
    bytes), written one tensor at a time: safetensors' own writer makes a bytes copy of every tensor before it
    writes, twice the memory of a set's largest checkpoint (the SDXL writer's 4 GB)."""
    import json

    header, offset = {}, 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as out:
        out.write(len(encoded).to_bytes(8, "little"))
        out.write(encoded)
        for tensor in tensors.values():
            out.write(memoryview(tensor.contiguous().view(-1).view(torch.uint8).numpy()))


def write_sd1_checkpoints(folder: Path, unet_seeds: dict[str, int], shared_seed: int = 0) -> dict[str, Path]:
    """Write one SD1.x checkpoint per name, each with its own UNet seed and the same CLIP and VAE."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, seed in unet_seeds.items():
        paths[name] = folder / f"{name}.safetensors"
        save_file(sd1_checkpoint(SD1_UNET, seed, shared_seed), paths[name])
    return paths


def write_sdxl_checkpoints(folder: Path, unet_seeds: dict[str, int], shared_seed: int = 0,
                           v_prediction: tuple[str, ...] = (), full: int = 1) -> dict[str, Path]:
    """Write one SDXL checkpoint per name: the first ``full`` with the text encoders and the VAE (the
    same ones), the others UNet only; ``v_prediction`` names the v-prediction ones."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for k, (name, seed) in enumerate(unet_seeds.items()):
        paths[name] = folder / f"{name}.safetensors"
        sd = sdxl_checkpoint(SDXL_UNET, seed, shared_seed, with_text_and_vae=k < full,
                             v_prediction=name in v_prediction, text_dtype=torch.float8_e4m3fn)
        save_file(sd, paths[name])
        del sd
    return paths


def write_sdxl_embedding(folder: Path, name: str = "tiny_sdxl_concept", vectors: int = 2, seed: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    path = folder / f"{name}.safetensors"
    safetensors.torch.save_file({"clip_l": torch.randn(vectors, 768, generator=gen) * 0.02,
                                 "clip_g": torch.randn(vectors, 1280, generator=gen) * 0.02}, str(path))
    return path


def write_vega_unet(folder: Path, seed: int = 7) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    sd = unet_state_dict(VEGA_UNET, seed)
    path = folder / "tiny_sdxl_vega.safetensors"
    safetensors.torch.save_file({k: v.to(torch.float16).contiguous() for k, v in sd.items()}, str(path))
    return path


def write_embedding(folder: Path, name: str = "tiny_concept", vectors: int = 2, seed: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    path = folder / f"{name}.safetensors"
    safetensors.torch.save_file({"emb_params": torch.randn(vectors, 768, generator=gen) * 0.02}, str(path))
    return path


def write_lora(folder: Path, name: str = "tiny_lora", rank: int = 4, seed: int = 5, unet: dict = SD1_UNET) -> Path:
    """A kohya-format LoRA over every attention projection of the tiny UNet (``unet``: its config)."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in UNetModel(**unet, device="meta").state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes.items():
        if ".attn" not in key or not key.endswith("weight") or len(shape) != 2:
            continue
        base = "lora_unet_" + key[: -len(".weight")].replace(".", "_")
        sd[f"{base}.lora_down.weight"] = torch.randn(rank, shape[1], generator=gen) * 0.1
        sd[f"{base}.lora_up.weight"] = torch.randn(shape[0], rank, generator=gen) * 0.1
        sd[f"{base}.alpha"] = torch.tensor(float(rank))
    path = folder / f"{name}.safetensors"
    safetensors.torch.save_file(sd, str(path))
    return path


def write_tiny_sam(folder: Path, name: str = "tiny_sam.pth", seed: int = 11) -> Path:
    """A small Segment Anything checkpoint built from segment-anything's own classes (random weights)."""
    from comfyui_layout_retouch.masks.sam import SamConfig, build_sam

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_sam(SamConfig(embed_dim=32, depth=2, heads=2, global_attn=(1,)))
    path = folder / name
    torch.save(model.state_dict(), path)
    return path


def write_flux_lora(path: Path, state_dict: dict[str, torch.Tensor], seed: int, rank: int = 4) -> None:
    """A LoRA over a Flux transformer's attention projections (``qkv``, ``proj``, ``linear1``), keyed
    ``diffusion_model.<module>.lora_up/lora_down.weight`` as ComfyUI's LoRA loader maps them."""
    gen = torch.Generator().manual_seed(seed)
    lora = {}
    for key, tensor in state_dict.items():
        if key.endswith((".qkv.weight", ".proj.weight", ".linear1.weight")) and tensor.ndim == 2:
            base = "diffusion_model." + key[: -len(".weight")]
            lora[f"{base}.lora_down.weight"] = (torch.randn(rank, tensor.shape[1], generator=gen) * 0.05).to(torch.bfloat16)
            lora[f"{base}.lora_up.weight"] = (torch.randn(tensor.shape[0], rank, generator=gen) * 0.05).to(torch.bfloat16)
            lora[f"{base}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(lora, str(path))


def write_flux_set(folder: Path, seed: int = 1) -> dict[str, Path]:
    """Flux files in ComfyUI's model folders:

    - ``diffusion_models/tiny_flux_3072.safetensors``: a Flux.1-dev transformer in its real format with one double
      and one single block (ComfyUI's detection fixes the width at 3072 and reads the block counts), bf16; and
      ``loras/tiny_flux_lora.safetensors`` over it;
    - ``loras/tiny_flux_lora_narrow.safetensors``: a LoRA over the 64-wide tiny Flux (``TinyFlux``), which the
      workflow tests run (the stock loader maps its keys by the model's own);
    - ``vae/tiny_flux_vae.safetensors``: Flux's VAE architecture (16 latent channels), random, fp16;
    - ``text_encoders/placeholder_clip_l.safetensors`` and ``placeholder_t5xxl.safetensors``: names for the
      DualCLIPLoader in validation only (T5-XXL cannot be tiny; runs use ``TinyFlux.encode``).
    """
    from comfy.ldm.models.autoencoder import AutoencoderKL

    from comfyui_layout_retouch.benchmark.random_models import FLUX_DEV, FLUX_TINY, SD_VAE, fill, flux_state_dict

    sd = flux_state_dict(dict(FLUX_DEV, depth=1, depth_single_blocks=1), seed, dtype=torch.bfloat16, as_file=True)
    paths = {"unet": folder / "diffusion_models" / "tiny_flux_3072.safetensors",
             "lora": folder / "loras" / "tiny_flux_lora.safetensors",
             "lora_narrow": folder / "loras" / "tiny_flux_lora_narrow.safetensors",
             "vae": folder / "vae" / "tiny_flux_vae.safetensors",
             "clip_l": folder / "text_encoders" / "placeholder_clip_l.safetensors",
             "t5": folder / "text_encoders" / "placeholder_t5xxl.safetensors"}
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, paths["unet"])
    write_flux_lora(paths["lora"], sd, seed + 5)
    write_flux_lora(paths["lora_narrow"], flux_state_dict(FLUX_TINY, 2), seed + 6)
    with torch.device("meta"):
        vae = AutoencoderKL(ddconfig=dict(SD_VAE, z_channels=16), embed_dim=16)
    safetensors.torch.save_file({k: v.half().contiguous() for k, v in fill(vae, seed + 7).items()}, str(paths["vae"]))
    for name in ("clip_l", "t5"):
        safetensors.torch.save_file({"placeholder": torch.zeros(1)}, str(paths[name]))
    return paths
