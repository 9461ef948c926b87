"""Attention layers of any supported model, named as ComfyUI's patch keys: the layer sets
(:mod:`.layer_set`) resolved against a model through its family (:mod:`.family`).

A layer is ``(block_name, block_id, index)``: a UNet's transformer block
``("output", 6, 0)``, a Flux block ``("double", 0, 0)``. The UNet-only walkers (resolutions, the
``attn1`` module, projections) are :mod:`.unet`'s, re-exported here for Pick-and-Draw and the benchmark.
"""

from __future__ import annotations

from ..errors import Problem
from .family import SUPPORTED, UnsupportedModel, family_of
from .layer_set import ALL, AUTO, BLOCK_NAMES, DECODER, DIT_BLOCK_NAMES, MASACTRL_DECODER, LayerSet, parse_layers
from .unet import (
    block_resolutions,
    layers_at,
    patched_key,
    projection,
    replace_patch,
    self_attention,
    transformer_depths,
)

__all__ = ["ALL", "AUTO", "BLOCK_NAMES", "DECODER", "DIT_BLOCK_NAMES", "MASACTRL_DECODER", "LayerSet", "attention_blocks",
           "auto_layers", "block_resolutions", "layer_keys", "layer_problem", "layers_at", "map_layers", "parse_layers", "patched_key",
           "projection", "replace_patch", "self_attention", "transformer_depths"]


def attention_blocks(model) -> set[tuple[str, int]]:
    """The ``(block_name, block_id)`` keys of the model's blocks that hold attention."""
    return set(family_of(model).depths(model))


def layer_keys(model, layers: LayerSet) -> tuple[tuple[str, int, int], ...]:
    """The patch keys ``(block_name, block_id, index)`` of ``model``'s attention layers in ``layers``, in order."""
    depths = family_of(model).depths(model)
    return tuple((n, i, j) for (n, i) in sorted(layers.keys_in(set(depths))) for j in range(depths[(n, i)]))


def map_layers(model) -> LayerSet:
    """Where the subject map is read: a UNet's decoder (a resolution picks among its blocks), Flux's double blocks."""
    return family_of(model).map_layers(model)


def auto_layers(model) -> LayerSet:
    """``"auto"``: the model family's default layer set (SD1.x ``output 6-11``, SDXL ``output 3-5``,
    Flux Stable Flow's vital layers)."""
    return family_of(model).auto_layers(model)


def model_problem(model) -> Problem | None:
    """Why ``model`` is of no family the pack supports (naming its family), or None."""
    try:
        family_of(model)
    except UnsupportedModel as error:
        return (f"{error}.", f"use a model of these families: {SUPPORTED}.")
    return None


def layer_problem(model, layers: LayerSet) -> Problem | None:
    """Why a layer set selects no attention block of ``model`` (or the model is of no supported family), or None."""
    try:
        blocks = attention_blocks(model)
    except UnsupportedModel as error:
        return (f"{error}.", f"use a model of these families: {SUPPORTED}.")
    if not layers.keys_in(blocks):
        names = ", ".join(f"{n} {i}" for n, i in sorted(blocks))
        return ("selects no attention block of this model.", f"choose among: {names}; or 'all'.")
    return None
