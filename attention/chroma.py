"""The Chroma family (Chroma1-HD, Chroma1-Base and their LoRAs): Flux.1-schnell's 19 double and 38 single blocks,
with no guidance embedding and each block's modulation computed outside it (one ``distilled_guidance_layer`` for
all), passed to the block as ``vec`` tuples (ComfyUI's ``comfy/ldm/chroma``). The blocks' attention, projections
and RoPE are Flux's, so Flux's projection serves with the modulation read from those tuples.

``auto``: Stable Flow's vital layers of FLUX.1-dev (:data:`.flux.VITAL`). Chroma keeps Flux's block layout and
was trained from FLUX.1-schnell, so its layers are taken to play the same roles; no published analysis of
Chroma's own layers is known to us, and a tiny random model cannot measure it.
"""

from __future__ import annotations

import torch

from .flux import VITAL, FluxFamily, FluxProjection


def is_chroma(diffusion_model) -> bool:
    """Chroma's transformer: Flux's block lists, the modulations from ``distilled_guidance_layer``; not Chroma
    Radiance (pixel space, patches of 16: ``nerf_blocks``)."""
    return hasattr(diffusion_model, "double_blocks") and hasattr(diffusion_model, "single_blocks") \
        and hasattr(diffusion_model, "distilled_guidance_layer") and not hasattr(diffusion_model, "nerf_blocks")


class ChromaProjection(FluxProjection):
    """Flux's, with the image tokens' modulation from the block's ``vec``: ``((img_mod1, img_mod2), (txt_mod1,
    txt_mod2))`` for a double block, one ``ChromaModulationOut`` for a single block."""

    def modulation(self, layer, vec, index: torch.Tensor | None):
        mod = vec[0][0] if layer[0] == "double" else vec
        if index is None:
            return mod.shift, mod.scale
        return mod.shift[index], mod.scale[index]


class ChromaFamily(FluxFamily):
    name = "Chroma"
    key = "chroma"
    models = "Chroma (its LoRAs)"
    vital = VITAL

    def recognises(self, diffusion_model) -> bool:
        return is_chroma(diffusion_model)

    def projection(self, diffusion_model) -> ChromaProjection:
        return ChromaProjection(diffusion_model)


CHROMA = ChromaFamily()
