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


SUPPORTED = "SD1.x, SD2.x, SDXL and Flux.1 (dev, schnell, their LoRAs)"


@public
class UnsupportedModel(ValueError):
    """A diffusion model of no family the pack supports (e.g. SD3, Chroma, Flux.2, Z-Image, Wan)."""


def is_flux1(diffusion_model) -> bool:
    """Flux.1's transformer: double and single blocks, each modulated by its own layers from one ``vec``. Chroma
    (modulations computed outside the blocks, passed as tuples) and Flux.2 (``global_modulation``: the blocks'
    own modulation is None) share the block lists but not their calls."""
    double, single = getattr(diffusion_model, "double_blocks", None), getattr(diffusion_model, "single_blocks", None)
    if double is None or single is None or getattr(diffusion_model, "global_modulation", False):
        return False
    return all(getattr(b, "img_mod", None) is not None and getattr(b, "txt_mod", None) is not None for b in double) \
        and all(getattr(b, "modulation", None) is not None for b in single)


def family_of_diffusion_model(diffusion_model, name: str | None = None):
    """The family of a diffusion model (``name``: what to call it in an error; default its class's name)."""
    if is_flux1(diffusion_model):
        return FLUX
    if hasattr(diffusion_model, "input_blocks") and hasattr(diffusion_model, "output_blocks"):
        return UNET
    raise UnsupportedModel(f"the model is a {name or type(diffusion_model).__name__} model, a family this pack does not "
                           f"support yet (it supports {SUPPORTED})")


def family_of(model):
    """The family of a ComfyUI ModelPatcher's diffusion model (raises :class:`UnsupportedModel`, naming the model
    family as ComfyUI detected it: its model config's class, e.g. ``Flux2``, ``Chroma``, ``SD3``)."""
    config = getattr(model.model, "model_config", None)
    name = type(config).__name__ if config is not None else None
    return family_of_diffusion_model(model.model.diffusion_model, name)
