"""The Flux.2 family (Flux.2 dev, Flux.2 Klein and their LoRAs; ComfyUI 0.33's ``comfy/ldm/flux`` with
``global_modulation``): Flux's double and single blocks without modulation layers of their own. The model computes
the modulations once a call (``double_stream_modulation_img``/``_txt``, ``single_stream_modulation``) and passes
them to the blocks as ``vec``, in the tuples Chroma's blocks take, so Chroma's projection serves
(:class:`.chroma.ChromaProjection`). Latents are packed (128 channels at 1/16 of the image), one token a latent
pixel (patch size 1). RoPE has four axes (theta 2000): the image tokens' index, row and column on the first three,
the text tokens' positions on the fourth (``txt_ids_dims``), so the shift moves the column axis alone. ComfyUI pads
the text to 512 tokens at the front (``model_base.Flux2.extra_conds``); the sources' rows take their text as the
model reads it (:mod:`.prompts`).

``auto``: no published analysis of Flux.2's layers is known to us, and a tiny random model cannot measure which
blocks carry layout or appearance. Stable Flow found FLUX.1-dev's first two double blocks vital (0 and 1 of 19;
Avrahami et al. 2025), the blocks where image tokens still keep a stream of their own. Flux.2 has few double blocks
(8 in dev and Klein 9B, 5 in Klein 4B, before 48, 24 and 20 single blocks: mflux's Flux.2 model and InvokeAI's
Klein presets), so ``auto`` takes every double block. It is a choice to revisit with measurements on the real model (``layout_layers``/``reference_layers`` take
any other set).
"""

from __future__ import annotations

from .chroma import ChromaProjection
from .flux import FluxFamily
from .layer_set import LayerSet


def is_flux2(diffusion_model) -> bool:
    """Flux.2's transformer: Flux's block lists, modulated once a call by the model (``global_modulation``), one
    token a latent pixel."""
    params = getattr(diffusion_model, "params", None)
    return getattr(params, "global_modulation", False) is True and hasattr(diffusion_model, "double_blocks") \
        and hasattr(diffusion_model, "single_stream_modulation") and getattr(diffusion_model, "patch_size", None) == 1


class Flux2Family(FluxFamily):
    name = "Flux.2"
    key = "flux2"
    models = "Flux.2 (dev, Klein, their LoRAs)"
    vital = frozenset()  # auto: every double block (the module's docstring)
    patch_size = 1

    def recognises(self, diffusion_model) -> bool:
        return is_flux2(diffusion_model)

    def projection(self, diffusion_model) -> ChromaProjection:
        return ChromaProjection(diffusion_model)

    def auto_layers(self, model) -> LayerSet:
        return LayerSet(frozenset(b for b in self.depths(model) if b[0] == "double"))


FLUX2 = Flux2Family()
