"""Naming attention layers the way ComfyUI's patch keys do: ``(block_name, block_id)``.

The block names are the model family's: a UNet's ``input``, ``middle`` and ``output``; a DiT's those of its
``("double_block", i)`` and ``("single_block", i)`` keys, ``double`` and ``single``. Which blocks a model has,
and its ``auto`` set, are its family's (:mod:`.family`); a name the model lacks selects nothing.

A layer set is written as text, e.g. ``"output 6-11"``, ``"input 4-5, middle 0, output 3-11"`` or
``"double 0-1, single 6"``, ``"all"``, or ``"auto"``: the model family's default. On a UNet it is the
decoder's attention blocks whose tokens are at 1/1 or 1/2 of the latent's size
(:func:`.unet.auto_layers`; a DiT family's are its ``vital`` blocks):

- SD1.x/SD2.x: ``"output 6-11"``, MasaCtrl's and DreamMatcher's ``start_layer = 10`` of 16
  attention blocks in call order (down 0-5, mid 6, up 7-15): the decoder at 32x32 and 64x64 for
  a 512 px image.
- SDXL: ``"output 3-5"``, the decoder at 64x64 for a 1024 px image (SDXL has no attention at
  1/1): Visual Style Prompting's SDXL configuration (diffusers ``up_blocks.1``, 6 transformer
  blocks). MasaCtrl's SDXL example starts at 44 of 70 transformer blocks, i.e. also
  ``"output 1-2"`` at 1/4 (32x32, 10 transformer blocks each); those 20 blocks are 1280 wide and
  would raise the reference's record from 2.9 to 7.8 GiB at 50 steps (docs/tuning.md), so the
  default stops at 1/2, as for SD1.x.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ALL = "all"
AUTO = "auto"
MASACTRL_DECODER = "output 6-11"
DECODER = "output 0-11"  # every decoder block of SD1.x and SDXL; a resolution picks among them

_PART = re.compile(r"^([a-z]+)\s+(\d+)(?:\s*-\s*(\d+))?$")


@dataclass(frozen=True)
class LayerSet:
    """A set of blocks (UNet or DiT), or every attention block when ``blocks`` is None."""

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
            raise ValueError(f"'{part}' is not a block range; write e.g. 'output 6-11, middle 0' (Flux: 'double 0-1, single 6'), or 'all'")
        name, first, last = match.group(1), int(match.group(2)), int(match.group(3) or match.group(2))
        if last < first:
            raise ValueError(f"'{part}' counts down; write the lower block first")
        blocks.update((name, i) for i in range(first, last + 1))
    if not blocks:
        raise ValueError("no blocks given; write e.g. 'output 6-11', or 'all'")
    return LayerSet(frozenset(blocks))


