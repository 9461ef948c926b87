"""The RAM the attention records take, from a UNet's real shapes (no weights, nothing run).

A record keeps, per step, CFG half and layer, tensors ``[tokens, width]`` in the model's dtype:
the self-attention's input (a reference: its keys and values are projected from it when read), its
output and the cross-attention's output (a layout); the reference cache keeps keys and values.
``sizes()`` gives each record of the shipped default at a family's native size and 50 steps.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ..attention.layers import auto_layers, block_resolutions, layer_keys, self_attention
from ..records import CROSS_OUT, KEYS, KINDS, LAYOUT_KINDS, REFERENCE_KINDS, SELF_IN, SELF_OUT, SELF_VALUE_IN, VALUES
from .random_models import SD15_UNET, SDXL_UNET


def _levels_model(unet):
    """What :mod:`..attention.layers` reads of a ModelPatcher, around a bare UNet."""
    return SimpleNamespace(model=SimpleNamespace(diffusion_model=unet))


def meta_unet(config: dict):
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        return UNetModel(**config, device="meta")


def layer_widths(unet, layers) -> dict[tuple, tuple[int, int]]:
    """Per patch key of ``layers``: (the block's width, the attention's inner width)."""
    out = {}
    for key in layers:
        attn = self_attention(unet, key)
        out[key] = (attn.to_k.in_features, attn.to_k.out_features)
    return out


def record_bytes(unet, layers, latent_size: int, steps: int, halves: int, kinds: tuple[str, ...],
                 element_size: int = 2) -> int:
    """Bytes of a record of ``kinds`` on ``layers`` (patch keys) over ``steps`` steps and ``halves``
    CFG halves, for a square latent of ``latent_size``."""
    resolution = block_resolutions(_levels_model(unet))
    total = 0
    for key, (width, inner) in layer_widths(unet, layers).items():
        tokens = (latent_size // resolution[key[:2]]) ** 2
        per_kind = {SELF_IN: width, SELF_VALUE_IN: width, SELF_OUT: inner, CROSS_OUT: inner, KEYS: inner,
                    VALUES: inner}
        total += sum(tokens * per_kind[kind] for kind in kinds)
    return total * steps * halves * element_size


FAMILIES = {"SD1.5 at 512x512": (SD15_UNET, 64), "SDXL at 1024x1024": (SDXL_UNET, 128)}


def sizes(steps: int = 50, lambda1: int = 5, lambda2: int = 10) -> dict[str, dict[str, float]]:
    """GiB of each record of the shipped default (``auto`` layers, fp16, cfg > 1: both halves), per family."""
    out = {}
    for family, (config, latent) in FAMILIES.items():
        unet = meta_unet(config)
        keys = layer_keys(_levels_model(unet), auto_layers(_levels_model(unet)))
        records = {"reference inversion, record_for reference": (REFERENCE_KINDS, steps),
                   "reference inversion, record_for both": (KINDS, steps),
                   "reference cache (keys and values from lambda2)": ((KEYS, VALUES), steps - lambda2),
                   "stage 1's record (personalized steps)": (LAYOUT_KINDS, steps - lambda1)}
        out[family] = {"layers": len(keys), **{
            name: record_bytes(unet, keys, latent, n_steps, 2, kinds) / 2**30 for name, (kinds, n_steps) in records.items()}}
    return out


FLUX_CACHE = "reference cache (each block's attention input from lambda2)"


def flux_sizes(steps: int = 28, lambda2: int = 6, size: int = 1024) -> dict[str, float]:
    """GiB of Flux.1-dev's records at ``size`` px with the ``auto`` blocks (Stable Flow's vital layers), bf16, cfg 1
    (one row per step), with the Flux workflow's lambda2 (6 of 28): the reference cache as the swap keeps it (each
    block's image-token attention input from lambda2 on; keys and values projected when read), what keys and values
    would take, and the fast mode's inversion records (every step): a reference's (the input) and a layout's (the
    input and the attention output)."""
    from ..attention.dit import VITAL
    from .random_models import FLUX_DEV

    tokens, width = (size // 16) ** 2, FLUX_DEV["hidden_size"]  # 8x VAE, 2x2 patches
    per_step = tokens * width * 2 * len(VITAL) / 2**30  # one [tokens, width] bf16 tensor per block
    return {"blocks": len(VITAL), "steps": steps, "lambda2": lambda2,
            FLUX_CACHE: per_step * (steps - lambda2),
            "keys and values from lambda2": 2 * per_step * (steps - lambda2),
            "reference inversion's record (fast mode)": per_step * steps,
            "layout inversion's record (fast mode)": 2 * per_step * steps}
