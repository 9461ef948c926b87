"""The model families the pack supports, and the family of a model: the one place that names them.

Adding a family is a module fulfilling :class:`~.family.Family` and a line here. The order is the order of
recognition (each family's ``recognises`` is strict enough that at most one answers).
"""

from __future__ import annotations

from .chroma import CHROMA
from .family import Family, UnsupportedModel
from .flux import FLUX
from .flux2 import FLUX2
from .qwen_image import QWEN_IMAGE
from .sd3 import SD3
from .unet import UNET

FAMILIES: tuple[Family, ...] = (
    UNET,
    FLUX,
    FLUX2,
    CHROMA,
    QWEN_IMAGE,
    SD3,
)

SUPPORTED = ", ".join(family.models for family in FAMILIES)


def family_of_diffusion_model(diffusion_model, name: str | None = None) -> Family:
    """The family of a diffusion model (``name``: what to call it in an error; default its class's name)."""
    for family in FAMILIES:
        if family.recognises(diffusion_model):
            return family
    raise UnsupportedModel(f"the model is a {name or type(diffusion_model).__name__} model, a family this pack does not "
                           f"support yet (it supports {SUPPORTED})")


def family_of(model) -> Family:
    """The family of a ComfyUI ModelPatcher's diffusion model (raises :class:`~.family.UnsupportedModel`, naming
    the model as ComfyUI detected it: its model config's class, e.g. ``Flux2``, ``WAN21``)."""
    config = getattr(model.model, "model_config", None)
    name = type(config).__name__ if config is not None else None
    return family_of_diffusion_model(model.model.diffusion_model, name)
