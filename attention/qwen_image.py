"""The Qwen-Image family (Qwen-Image and its finetunes and LoRAs; ComfyUI's ``comfy/ldm/qwen_image``): 60 dual-stream
blocks (``transformer_blocks``, keyed ``("double_block", i)``), each with separate image and text projections
(``to_q/to_k/to_v``, ``add_q_proj/...``), RMS-normed queries and keys, and one joint attention over ``[txt | img]``
with Flux's RoPE embedding (``EmbedND``; the table's layout moved between releases: ``host_api.flux_rope_layout``).
The swap and its patches are :mod:`.joint`'s; the subject's text tokens are Qwen2.5-VL's, their positions counted
after the prompt template ComfyUI's text encoder drops (:mod:`.tokens`).

``auto``: no published analysis of Qwen-Image's layers is known to us, and a tiny random model cannot measure
which blocks carry layout or appearance. So it takes the Flux analogue: Stable Flow's vital layers of FLUX.1-dev
(0, 1, 17, 18, 25, 28, 53, 54, 56 of its 57 blocks, Avrahami et al. 2025) at the same relative depth of
Qwen-Image's 60 blocks (round(i * 60 / 57)): 0, 1, 18, 19, 26, 29, 56, 57, 59. It is a choice to revisit with
measurements on the real model (``layout_layers``/``reference_layers`` take any other set).
"""

from __future__ import annotations

import torch

from .. import host_api
from ..records import KEYS
from .joint import JointFamily
from .joint_attention import JointProjection, rope_keys, to_heads, to_tokens

VITAL = frozenset(("double", i) for i in (0, 1, 18, 19, 26, 29, 56, 57, 59))


def is_qwen_image(diffusion_model) -> bool:
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

    return isinstance(diffusion_model, QwenImageTransformer2DModel)


class QwenImageProjection(JointProjection):
    """A block's image tokens: ``img_norm1``, then the first half of the block's ``img_mod(temb)`` (shift, scale);
    keys ``norm_k(to_k(x))`` at the call's RoPE positions, values ``to_v(x)``, through the block's own layers."""

    def input_of(self, layer, args: dict, index: torch.Tensor | None, tokens: tuple[int, int, int]) -> torch.Tensor:
        block = self.dm.transformer_blocks[layer[1]]
        img, temb = (args["img"], args["vec"]) if index is None else (args["img"][index], args["vec"][index])
        shift, scale, _ = block.img_mod(temb).chunk(2, dim=-1)[0].chunk(3, dim=-1)
        return torch.addcmul(shift.unsqueeze(1), block.img_norm1(img), 1 + scale.unsqueeze(1))

    def at(self, pe: torch.Tensor, tokens: tuple[int, int, int]):
        return super().at(host_api.flux_rope_layout(pe), tokens)

    def __call__(self, layer, kind: str, x: torch.Tensor, pe_img: torch.Tensor | None) -> torch.Tensor:
        attn = self.dm.transformer_blocks[layer[1]].attn
        if kind != KEYS:
            return attn.to_v(x)
        keys = to_heads(attn.norm_k(attn.to_k(x).unflatten(-1, (attn.heads, -1))), attn.heads)
        return to_tokens(rope_keys(keys, pe_img, keys))


class QwenImageFamily(JointFamily):
    name = "Qwen-Image"
    key = "qwen_image"
    models = "Qwen-Image (its LoRAs)"
    vital = VITAL

    def recognises(self, diffusion_model) -> bool:
        return is_qwen_image(diffusion_model)

    def blocks(self, diffusion_model) -> dict:
        return {"double": diffusion_model.transformer_blocks}

    def projection(self, diffusion_model) -> QwenImageProjection:
        return QwenImageProjection(diffusion_model)

    def rope(self, diffusion_model) -> tuple:
        embed = diffusion_model.pe_embedder
        return embed.theta, tuple(embed.axes_dim)

    def width(self, diffusion_model) -> int:
        return diffusion_model.inner_dim

    def text_width(self, model) -> int | None:
        return model.model.diffusion_model.txt_in.in_features  # Qwen2.5-VL's hidden states, into txt_norm, txt_in


QWEN_IMAGE = QwenImageFamily()
