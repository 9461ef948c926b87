"""Naming attention layers the way ComfyUI's patch keys do: ``(block_name, block_id)``.

A layer set is written as text, e.g. ``"output 6-11"`` or ``"input 4-5, middle 0, output 3-11"``,
``"all"``, or ``"auto"``: the model family's default, the decoder's attention blocks whose tokens
are at 1/1 or 1/2 of the latent's size (:func:`auto_layers`):

- SD1.x/SD2.x: ``"output 6-11"``, MasaCtrl's and DreamMatcher's ``start_layer = 10`` of 16
  attention blocks in call order (down 0-5, mid 6, up 7-15): the decoder at 32x32 and 64x64 for
  a 512 px image.
- SDXL: ``"output 3-5"``, the decoder at 64x64 for a 1024 px image (SDXL has no attention at
  1/1): Visual Style Prompting's SDXL configuration (diffusers ``up_blocks.1``, 6 transformer
  blocks). MasaCtrl's SDXL example starts at 44 of 70 transformer blocks, i.e. also
  ``"output 1-2"`` at 1/4 (32x32, 10 transformer blocks each); those 20 blocks are 1280 wide and
  would raise the reference's record from 2.9 to 7.8 GiB at 50 steps (README, Tuning), so the
  default stops at 1/2, as for SD1.x.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..records import KEYS

BLOCK_NAMES = ("input", "middle", "output")
ALL = "all"
AUTO = "auto"
MASACTRL_DECODER = "output 6-11"
DECODER = "output 0-11"  # every decoder block of SD1.x and SDXL; a resolution picks among them

_PART = re.compile(r"^(input|middle|output)\s+(\d+)(?:\s*-\s*(\d+))?$")


@dataclass(frozen=True)
class LayerSet:
    """A set of UNet blocks, or every attention block when ``blocks`` is None."""

    blocks: frozenset[tuple[str, int]] | None

    def __contains__(self, block: tuple[str, int]) -> bool:
        return self.blocks is None or (block[0], int(block[1])) in self.blocks

    def keys_in(self, model_blocks: set[tuple[str, int]]) -> set[tuple[str, int]]:
        """The model's attention blocks that belong to this set."""
        return {b for b in model_blocks if b in self}


def parse_layers(text: str) -> LayerSet:
    """Parse ``"output 6-11, middle 0"`` or ``"all"``; raise ValueError with the expected form."""
    text = text.strip().lower()
    if text == ALL:
        return LayerSet(None)
    blocks: set[tuple[str, int]] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _PART.match(part)
        if match is None:
            raise ValueError(f"'{part}' is not a block range; write e.g. 'output 6-11, middle 0', or 'all'")
        name, first, last = match.group(1), int(match.group(2)), int(match.group(3) or match.group(2))
        if last < first:
            raise ValueError(f"'{part}' counts down; write the lower block first")
        blocks.update((name, i) for i in range(first, last + 1))
    if not blocks:
        raise ValueError("no blocks given; write e.g. 'output 6-11', or 'all'")
    return LayerSet(frozenset(blocks))


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


def layer_keys(model, layers: LayerSet) -> tuple[tuple[str, int, int], ...]:
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


def attention_blocks(model) -> set[tuple[str, int]]:
    """The ``(block_name, block_id)`` keys of the UNet blocks that hold attention (SpatialTransformer)."""
    return set(transformer_depths(model))


def layer_problem(model, layers: LayerSet):
    """Why a layer set selects no attention block of ``model``, or None."""
    if not layers.keys_in(attention_blocks(model)):
        blocks = ", ".join(f"{n} {i}" for n, i in sorted(attention_blocks(model)))
        return ("selects no attention block of this model.", f"choose among: {blocks}; or 'all'.")
    return None


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
