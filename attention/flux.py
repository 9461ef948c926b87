"""The Flux.1 family (dev, schnell, their finetunes and LoRAs): 19 double and 38 single blocks in the full model,
joint attention over ``[txt | img]`` with RoPE (ComfyUI's ``comfy/ldm/flux``); the swap and its patches are
:mod:`.joint`'s.
"""

from __future__ import annotations

import torch

from .. import host_api
from ..records import KEYS, VALUES
from .joint import JointFamily
from .joint_attention import JointProjection, rope_keys, to_heads, to_tokens

# Stable Flow (Avrahami et al. 2025, Sec. 3.2): the "vital layers" of FLUX.1-dev for image-token
# injection, numbered over the 19 double then 38 single blocks: 0, 1, 17, 18, 25, 28, 53, 54, 56.
VITAL = frozenset({("double", i) for i in (0, 1, 17, 18)} | {("single", i) for i in (6, 9, 34, 35, 37)})


def is_flux1(diffusion_model) -> bool:
    """Flux.1's transformer: double and single blocks, each modulated by its own layers from one ``vec``. Chroma
    (modulations computed outside the blocks, passed as tuples) and Flux.2 (``global_modulation``: the blocks'
    own modulation is None) share the block lists but not their calls."""
    double, single = getattr(diffusion_model, "double_blocks", None), getattr(diffusion_model, "single_blocks", None)
    if double is None or single is None or getattr(diffusion_model, "global_modulation", False):
        return False
    return all(getattr(b, "img_mod", None) is not None and getattr(b, "txt_mod", None) is not None for b in double) \
        and all(getattr(b, "modulation", None) is not None for b in single)


class FluxProjection(JointProjection):
    """A double block's image stream, a single block's image tokens: ``norm``, then the block's own modulation
    of ``vec``; the keys and values are columns of one ``qkv`` (double) or ``linear1`` (single) projection, of
    which only the ones asked for are computed."""

    def block(self, layer):
        return (self.dm.double_blocks if layer[0] == "double" else self.dm.single_blocks)[layer[1]]

    def modulation(self, layer, vec, index: torch.Tensor | None):
        """The block's ``(shift, scale)`` of the image tokens' attention input, for rows ``index``."""
        vec = vec if index is None else vec[index]
        block = self.block(layer)
        mod, _ = block.img_mod(vec) if layer[0] == "double" else block.modulation(vec)
        return mod.shift, mod.scale

    def input_of(self, layer, args: dict, index: torch.Tensor | None, tokens: tuple[int, int, int]) -> torch.Tensor:
        img = args["img"] if index is None else args["img"][index]
        block, (shift, scale) = self.block(layer), self.modulation(layer, args["vec"], index)
        if layer[0] == "double":
            return torch.addcmul(shift, block.img_norm1(img), 1 + scale)
        n_txt, h, w = tokens
        return torch.addcmul(shift, block.pre_norm(img[:, n_txt:n_txt + h * w]), 1 + scale)

    def __call__(self, layer, kind: str, x: torch.Tensor, pe_img: torch.Tensor | None) -> torch.Tensor:
        block = self.block(layer)
        linear, norm = (block.img_attn.qkv, block.img_attn.norm) if layer[0] == "double" else (block.linear1, block.norm)
        width = x.shape[-1]
        part = slice(width, 2 * width) if kind == KEYS else slice(2 * width, 3 * width)  # q, k, v; then the MLP's
        weight, bias = host_api.dense_linear(linear, x)  # dense: fp8 or quantized weights are sliced by value
        out = torch.nn.functional.linear(x, weight[part], None if bias is None else bias[part])
        if kind == VALUES:
            return out
        keys = norm.key_norm(to_heads(out, block.num_heads)).to(out)
        return to_tokens(rope_keys(keys, pe_img, out))


class FluxFamily(JointFamily):
    name = "Flux"
    key = "flux"
    models = "Flux.1 (dev, schnell, their LoRAs)"
    vital = VITAL

    def recognises(self, diffusion_model) -> bool:
        return is_flux1(diffusion_model)

    def blocks(self, diffusion_model) -> dict:
        return {"double": diffusion_model.double_blocks, "single": diffusion_model.single_blocks}

    def projection(self, diffusion_model) -> JointProjection:
        return FluxProjection(diffusion_model)

    def rope(self, diffusion_model) -> tuple:
        params = diffusion_model.params
        return params.theta, tuple(params.axes_dim)

    def width(self, diffusion_model) -> int:
        return diffusion_model.hidden_size

    def text_width(self, model) -> int | None:
        return model.model.model_config.unet_config.get("context_in_dim")  # T5's, into txt_in


FLUX = FluxFamily()
