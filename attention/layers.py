"""Naming attention layers the way ComfyUI's patch keys do: ``(block_name, block_id)``.

A layer set is written as text, e.g. ``"output 6-11"`` or ``"input 4-5, middle 0, output 3-11"``,
or ``"all"``. For SD1.x, ``"output 6-11"`` is MasaCtrl's and DreamMatcher's ``start_layer = 10``
of 16 attention blocks in call order (down 0-5, mid 6, up 7-15): the decoder at 32x32 and 64x64.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BLOCK_NAMES = ("input", "middle", "output")
ALL = "all"
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


def layers_at(model, resolution: int, block_name: str = "output") -> tuple[tuple[str, int, int], ...]:
    """The patch keys of ``block_name``'s transformer blocks whose tokens are latent size /
    ``resolution`` (e.g. SD1.x's decoder at 1/2: ``output 6-8``), from the UNet's down- and
    upsampling layers, without running it."""
    unet = model.model.diffusion_model
    downs = sum(type(layer).__name__ == "Downsample" for block in unet.input_blocks for layer in block)
    blocks = {"input": unet.input_blocks, "middle": [unet.middle_block], "output": unet.output_blocks}[block_name]
    depths = transformer_depths(model)
    found, level = [], 0 if block_name == "input" else downs
    for i, block in enumerate(blocks):
        if 2 ** level == resolution and (block_name, i) in depths:
            found.extend((block_name, i, j) for j in range(depths[(block_name, i)]))
        for layer in block:
            name = type(layer).__name__
            level += (name == "Downsample") - (name == "Upsample")
    return tuple(found)
