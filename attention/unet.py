"""The UNet family (SD1.x, SD2.x, SDXL): its attention blocks, their token grids, how the swap
patches them (``attn1``/``attn2`` replace patches per transformer block) and how a record's kept
input is projected to keys and values.

A UNet block holding attention is a ``SpatialTransformer`` of ``depth`` transformer blocks; ComfyUI
keys each one ``(block_name, block_id, transformer_index)``.
"""

from __future__ import annotations

import torch

from ..records import KEYS, LAYOUT_KINDS, REFERENCE_KINDS, SELF_IN
from .layer_set import BLOCK_NAMES, LayerSet


def transformer_depths(model) -> dict[tuple[str, int], int]:
    """Transformer blocks per UNet block that holds attention, e.g. ``{("output", 6): 1, ...}`` for SD1.x."""
    unet = model.model.diffusion_model
    depths = {}
    for name, blocks in (("input", unet.input_blocks), ("middle", [unet.middle_block]), ("output", unet.output_blocks)):
        for i, block in enumerate(blocks):
            for layer in block:
                if type(layer).__name__ == "SpatialTransformer":
                    depths[(name, i)] = len(layer.transformer_blocks)
    return depths


def _levels(model, block_name: str) -> list[tuple[int, int]]:
    """``(block_id, resolution)`` of each of ``block_name``'s blocks: its tokens are latent size /
    ``resolution``, from the UNet's down- and upsampling layers, without running it."""
    unet = model.model.diffusion_model
    downs = sum(type(layer).__name__ == "Downsample" for block in unet.input_blocks for layer in block)
    blocks = {"input": unet.input_blocks, "middle": [unet.middle_block], "output": unet.output_blocks}[block_name]
    found, level = [], 0 if block_name == "input" else downs
    for i, block in enumerate(blocks):
        found.append((i, 2 ** level))
        for layer in block:
            name = type(layer).__name__
            level += (name == "Downsample") - (name == "Upsample")
    return found


def block_resolutions(model) -> dict[tuple[str, int], int]:
    """Each block's token grid as a fraction of the latent's side: ``{("output", 3): 2, ...}`` (1/2)."""
    return {(name, i): resolution for name in BLOCK_NAMES for i, resolution in _levels(model, name)}


def auto_layers(model) -> LayerSet:
    """``"auto"``: the decoder's attention blocks at 1/1 or 1/2 of the latent (SD1.x ``output 6-11``,
    SDXL ``output 3-5``; see the module's docstring)."""
    depths = transformer_depths(model)
    return LayerSet(frozenset(("output", i) for i, resolution in _levels(model, "output")
                              if resolution <= 2 and ("output", i) in depths))


def layers_at(model, resolution: int, block_name: str = "output") -> tuple[tuple[str, int, int], ...]:
    """The patch keys of ``block_name``'s transformer blocks whose tokens are latent size /
    ``resolution`` (e.g. SD1.x's decoder at 1/2: ``output 6-8``), from the UNet's down- and
    upsampling layers, without running it."""
    depths = transformer_depths(model)
    return tuple((block_name, i, j) for i, at in _levels(model, block_name)
                 if at == resolution and (block_name, i) in depths for j in range(depths[(block_name, i)]))


def self_attention(unet, layer: tuple[str, int, int]):
    """The ``attn1`` module (ComfyUI's ``CrossAttention``) of ``layer`` in a UNet (the model's
    ``diffusion_model``)."""
    name, block_id, index = layer
    blocks = {"input": unet.input_blocks, "middle": [unet.middle_block], "output": unet.output_blocks}[name]
    transformer = next(m for m in blocks[block_id] if type(m).__name__ == "SpatialTransformer")
    return transformer.transformer_blocks[index].attn1


def projection(unet):
    """``project(layer, kind, input)``: keys (``"keys"``) or values of ``layer``'s self-attention
    from its input, with the layer's own projections (weights as loaded, LoRA patches included)."""
    def project(layer, kind: str, tensor: torch.Tensor) -> torch.Tensor:
        attn = self_attention(unet, layer)
        return attn.to_k(tensor) if kind == KEYS else attn.to_v(tensor)
    return project


def keys(model, layers: LayerSet) -> tuple[tuple[str, int, int], ...]:
    """ComfyUI's patch keys ``(block_name, block_id, transformer_index)`` of ``model``'s transformer
    blocks in ``layers``, in order."""
    depths = transformer_depths(model)
    return tuple((n, i, j) for (n, i) in sorted(layers.keys_in(set(depths))) for j in range(depths[(n, i)]))


def patched_key(model, attn: str, key: tuple[str, int, int]) -> tuple | None:
    """Where an ``attn1``/``attn2`` replace patch covering ``key`` sits: ``key``, its whole block
    ``key[:2]``, or None."""
    taken = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get(attn, {})
    return next((at for at in (key, key[:2]) if at in taken), None)


def replace_patch(model, attn: str, key: tuple[str, int, int]):
    """The ``attn1``/``attn2`` replace patch already on ``key`` (or on its whole block), or None."""
    at = patched_key(model, attn, key)
    return None if at is None else model.model_options["transformer_options"]["patches_replace"][attn][at]


class UNetFamily:
    """SD1.x, SD2.x, SDXL and their finetunes: separate self- (``attn1``) and cross-attention (``attn2``)."""

    name = "UNet"
    joint = False
    # What a source's record keeps for each path: the reference's self-attention input (its keys and values
    # projected when read); the layout's self- and cross-attention outputs.
    record_kinds = {"reference": REFERENCE_KINDS, "layout": LAYOUT_KINDS}

    depths = staticmethod(transformer_depths)
    auto_layers = staticmethod(auto_layers)
    projection = staticmethod(projection)

    @staticmethod
    def install_swap(clone, model, needs, spec, mask, positions: str | None = None) -> None:
        """Put a ``SwapAttention`` on every swapped layer and on every layer another patch holds
        (chained there); ``positions`` is a DiT's (a UNet's keys carry none)."""
        from .swap import SwapAttention

        for kind, attn, swapped in (("self", "attn1", needs.self_layers), ("cross", "attn2", needs.cross_layers)):
            for key in keys(model, LayerSet(None)):  # every attention layer
                chained = replace_patch(model, attn, key)
                if key in swapped or chained is not None:
                    clone.set_model_patch_replace(SwapAttention(kind, spec, mask if kind == "self" else None, chained),
                                                  attn, *key)

    @staticmethod
    def install_recording(clone, record, sampling_sigmas: torch.Tensor, layers: LayerSet,
                          kinds: tuple[str, ...]) -> None:
        """Record ``kinds`` on ``layers``: ``attn1``/``attn2`` replace patches (chaining those on the keys), and an
        ``attn1_patch`` for the self-attention's input, last, so it sees what the projections get."""
        from .recording import RecordSelfInput, RecordSourceAttention

        chosen = keys(clone, layers)
        for key in chosen:
            for kind, attn in (("self", "attn1"), ("cross", "attn2")):
                patch = RecordSourceAttention(kind, record, sampling_sigmas, replace_patch(clone, attn, key), kinds)
                clone.set_model_patch_replace(patch, attn, *key)
        if SELF_IN in kinds:
            clone.set_model_attn1_patch(RecordSelfInput(record, sampling_sigmas, set(chosen)))

    @staticmethod
    def map_layers(model) -> LayerSet:
        """Where the subject map is read: the decoder (a resolution picks among its blocks)."""
        return LayerSet(frozenset(b for b in transformer_depths(model) if b[0] == "output"))

    @staticmethod
    def install_map_capture(clone, model, store, layers: LayerSet, steps, resolution: int | None,
                            sampling_sigmas: torch.Tensor | None = None) -> None:
        """Put a ``CaptureAttention`` on the cross-attention of every layer in ``layers`` (chained)."""
        from .capture import CaptureAttention

        for key in keys(model, layers):
            clone.set_model_attn2_replace(CaptureAttention("cross", store, steps, resolution,
                                                           replace_patch(model, "attn2", key), sampling_sigmas), *key)

    @staticmethod
    def tokens(x: torch.Tensor, context: torch.Tensor) -> None:
        return None  # each attention layer reads its own grid from activations_shape


UNET = UNetFamily()
