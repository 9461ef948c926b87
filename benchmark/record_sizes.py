"""The RAM the attention records take, from a model's real shapes (built on the meta device: no weights, nothing
run), through its family's ``attention_shapes``.

A record keeps, per step, CFG half and layer, tensors ``[tokens, width]`` in the model's dtype: on a UNet the
self-attention's input (a reference: its keys and values are projected from it when read), its output and the
cross-attention's output (a layout); on a DiT each block's image-token attention input (and a layout's output).
``sizes()`` gives each record of the shipped default at a UNet's native size and 50 steps; ``dit_sizes()`` a
DiT's at its workflow's settings (``benchmark.dits``).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ..attention.families import family_of_diffusion_model
from ..records import CROSS_OUT, KEYS, KINDS, LAYOUT_KINDS, REFERENCE_KINDS, SELF_IN, SELF_OUT, SELF_VALUE_IN, VALUES
from .random_models import SD15_UNET, SDXL_UNET, model_config


def _patcher(diffusion_model):
    """What the layer sets read of a ModelPatcher, around a bare diffusion model."""
    return SimpleNamespace(model=SimpleNamespace(diffusion_model=diffusion_model), model_options={})


def meta_unet(config: dict):
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        return UNetModel(**config, device="meta")


def meta_dit(config: dict):
    """A DiT of ``config`` on the meta device, built as ComfyUI builds a detected one."""
    with torch.device("meta"):
        return model_config(config).get_model({}, "", device="meta").diffusion_model


def record_bytes(diffusion_model, layers, latent_size: int, steps: int, halves: int, kinds: tuple[str, ...],
                 element_size: int = 2) -> int:
    """Bytes of a record of ``kinds`` on ``layers`` (patch keys) over ``steps`` steps and ``halves``
    CFG halves, for a square latent of ``latent_size``."""
    from ..attention.layer_set import LayerSet

    family = family_of_diffusion_model(diffusion_model)
    shapes = family.attention_shapes(diffusion_model, LayerSet(frozenset(key[:2] for key in layers)),
                                     (latent_size, latent_size))
    total = 0
    for key in layers:
        tokens, width, inner = shapes[tuple(key)]
        per_kind = {SELF_IN: width, SELF_VALUE_IN: width, SELF_OUT: inner, CROSS_OUT: inner, KEYS: inner,
                    VALUES: inner}
        total += sum(tokens * per_kind[kind] for kind in kinds)
    return total * steps * halves * element_size


def auto_keys(diffusion_model) -> tuple:
    from ..attention.layers import auto_layers, layer_keys

    model = _patcher(diffusion_model)
    return layer_keys(model, auto_layers(model))


UNETS = {"SD1.5 at 512x512": (SD15_UNET, 64), "SDXL at 1024x1024": (SDXL_UNET, 128)}


def sizes(steps: int = 50, lambda1: int = 5, lambda2: int = 10) -> dict[str, dict[str, float]]:
    """GiB of each record of the shipped default (``auto`` layers, fp16, cfg > 1: both halves), per UNet."""
    out = {}
    for name, (config, latent) in UNETS.items():
        unet = meta_unet(config)
        keys = auto_keys(unet)
        records = {"reference inversion, record_for reference": (REFERENCE_KINDS, steps),
                   "reference inversion, record_for both": (KINDS, steps),
                   "reference cache (keys and values from lambda2)": ((KEYS, VALUES), steps - lambda2),
                   "stage 1's record (personalized steps)": (LAYOUT_KINDS, steps - lambda1)}
        out[name] = {"layers": len(keys), **{
            record: record_bytes(unet, keys, latent, n_steps, 2, kinds) / 2**30 for record, (kinds, n_steps) in records.items()}}
    return out


DIT_CACHE = "reference cache (each block's attention input from lambda2)"


def latent_downscale(config: dict) -> int:
    """Image pixels per latent pixel, each way, of a DiT of ``config`` (8, Flux.2's 16), from its latent format."""
    return getattr(model_config(config).latent_format, "spacial_downscale_ratio", 8)


def dit_sizes(diffusion_model, steps: int, lambda2: int, size: int, halves: int = 1,
              downscale: int = 8) -> dict[str, float]:
    """GiB of a DiT's records at ``size`` px with the ``auto`` blocks, bf16, ``halves`` CFG halves a step (1 at cfg 1,
    as Flux runs; 2 with a negative prompt): the reference cache as the swap keeps it (each block's image-token
    attention input from lambda2 on; keys and values projected when read), what keys and values would take, and
    the fast mode's inversion records (every step, one half: an inversion runs at cfg 1): a reference's (the input)
    and a layout's (the input and the attention output); ``downscale``: :func:`latent_downscale`."""
    keys, latent = auto_keys(diffusion_model), size // downscale
    per_step = record_bytes(diffusion_model, keys, latent, 1, 1, (SELF_IN,)) / 2**30
    return {"blocks": len(keys), "steps": steps, "lambda2": lambda2, "halves": halves,
            DIT_CACHE: per_step * halves * (steps - lambda2),
            "keys and values from lambda2": 2 * per_step * halves * (steps - lambda2),
            "reference inversion's record (fast mode)": per_step * steps,
            "layout inversion's record (fast mode)": 2 * per_step * steps}
