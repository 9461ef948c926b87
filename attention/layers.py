"""Attention layers of any supported model, named as ComfyUI's patch keys: the layer sets
(:mod:`.layer_set`) resolved against a model through its family (:mod:`.families`).

A layer is ``(block_name, block_id, index)``: a UNet's transformer block ``("output", 6, 0)``, a Flux block
``("double", 0, 0)``.
"""

from __future__ import annotations

from ..errors import Problem
from .families import FAMILIES, SUPPORTED, family_of
from .family import UnsupportedModel
from .layer_set import ALL, AUTO, DECODER, MASACTRL_DECODER, LayerSet, parse_layers

__all__ = ["ALL", "AUTO", "DECODER", "MASACTRL_DECODER", "LayerSet", "attention_blocks", "auto_layers", "cross_attention_problem", "layer_keys",
           "layer_problem", "layers_at", "map_layers", "model_problem", "parse_layers", "text_width"]


def attention_blocks(model) -> set[tuple[str, int]]:
    """The ``(block_name, block_id)`` keys of the model's blocks that hold attention."""
    return set(family_of(model).depths(model))


def layer_keys(model, layers: LayerSet) -> tuple[tuple[str, int, int], ...]:
    """The patch keys ``(block_name, block_id, index)`` of ``model``'s attention layers in ``layers``, in order."""
    depths = family_of(model).depths(model)
    return tuple((n, i, j) for (n, i) in sorted(layers.keys_in(set(depths))) for j in range(depths[(n, i)]))


def map_layers(model) -> LayerSet:
    """Where the subject map is read: a UNet's decoder (a resolution picks among its blocks), a DiT's blocks whose
    text and image tokens keep their own streams."""
    return family_of(model).map_layers(model)


def auto_layers(model) -> LayerSet:
    """``"auto"``: the model family's default layer set (SD1.x ``output 6-11``, SDXL ``output 3-5``,
    Flux Stable Flow's vital layers)."""
    return family_of(model).auto_layers(model)


def layers_at(model, resolution: int) -> tuple[tuple[str, int, int], ...]:
    """The layer keys whose image tokens are at latent size / ``resolution`` (SD1.x's decoder at 1/2:
    ``output 6-8``)."""
    return family_of(model).layers_at(model, resolution)


def text_width(model) -> int | None:
    """The width of the text embedding ``model`` reads (768 SD1.x, 2048 SDXL, 4096 Flux's T5), or None."""
    return family_of(model).text_width(model)


def model_problem(model) -> Problem | None:
    """Why ``model`` is of no family the pack supports (naming its family), or None."""
    try:
        family_of(model)
    except UnsupportedModel as error:
        return (f"{error}.", f"use a model of these families: {SUPPORTED}.")
    return None


def cross_attention_problem(model) -> Problem | None:
    """Why Pick-and-Draw cannot guide ``model``: its losses read separate cross-attention layers (their maps and the
    features entering them), which a joint-attention DiT has none of; or the model is of no supported family."""
    problem = model_problem(model)
    if problem is not None or family_of(model).cross_attention:
        return problem
    name = family_of(model).name
    unets = ", ".join(f.models for f in FAMILIES if f.cross_attention)
    return (f"is a {name} model, whose text and image tokens attend jointly: Pick-and-Draw's losses read a UNet's "
            "cross-attention maps and the features entering them, which it has none of.",
            f"use a model of {unets} with Pick-and-Draw ({name} runs Layout-and-Retouch).")


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
