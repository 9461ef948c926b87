"""The boundary between model families: what differs between a UNet (SD1.x, SDXL) and a DiT (Flux).

A family answers the few questions the swap, the layer sets and the records ask of a model:

- ``depths(model)``: its attention blocks ``(block_name, block_id)`` and how many attention layers each
  holds (the patch keys are ``(block_name, block_id, index)``);
- ``auto_layers(model)``: the ``"auto"`` layer set;
- ``install_swap(clone, model, needs, spec, mask, positions)``: the swap's patches on a clone, through
  the family's ComfyUI hooks (``attn1``/``attn2`` replacements on a UNet, ``dit`` block replacements
  on Flux), chaining the patches other nodes put there;
- ``joint``: whether text and image tokens attend together (what the swap reads from the sources
  differs: :class:`.swap.SourceNeeds`);
- ``tokens(x, context)``: a DiT call's token layout (None on a UNet);
- ``projection(diffusion_model)``: how a record's kept attention input becomes keys and values.

Everything else (rows, phases, records, the reference cache, the run's checks) is shared.
"""

from __future__ import annotations

from ..errors import public
from .dit import FLUX
from .unet import UNET

FAMILIES = (UNET, FLUX)


@public
class UnsupportedModel(ValueError):
    """A diffusion model of no family the pack supports (e.g. SD3, Wan)."""


def family_of_diffusion_model(diffusion_model):
    if hasattr(diffusion_model, "double_blocks") and hasattr(diffusion_model, "single_blocks"):
        return FLUX
    if hasattr(diffusion_model, "input_blocks") and hasattr(diffusion_model, "output_blocks"):
        return UNET
    raise UnsupportedModel(f"{type(diffusion_model).__name__} is neither a UNet (SD1.x, SD2.x, SDXL) nor Flux")


def family_of(model):
    """The family of a ComfyUI ModelPatcher's diffusion model (raises :class:`UnsupportedModel`)."""
    return family_of_diffusion_model(model.model.diffusion_model)
