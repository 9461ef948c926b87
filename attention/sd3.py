"""The SD3 family (Stable Diffusion 3 Medium, 3.5 Medium, 3.5 Large and Large Turbo, their finetunes and LoRAs;
ComfyUI's MMDiT, ``comfy/ldm/modules/diffusionmodules/mmdit.py``): ``joint_blocks``, each a ``context_block`` and an
``x_block`` (``DismantledBlock``s) whose queries, keys and values are joined over ``[txt | img]`` for one attention
(``_block_mixing``). ComfyUI keys them ``("double_block", i)`` in its ``dit`` patches, so the blocks are named
``"double"`` (layer strings ``"double 0-23"``). The attention is called on flat ``[n, tokens, heads * d]`` queries
and keys (values ``[n, tokens, heads, d]``); the swap and its patches are :mod:`.joint`'s.

Positions: SD3 has no RoPE. A fixed sin-cos ``pos_embed`` is added to the image tokens once, before the blocks, so a
key carries its position in its content: :meth:`SD3Family.rope` is None, a reference's keys keep the positions they
were made at, and ``reference_positions = "shifted"`` has nothing to shift (it is ``"shared"``).

The image-only attention: SD3.5 Medium's early blocks (``x_block_self_attn_layers``, MMDiT-X) call the attention a
second time, over the image tokens alone (``x_block.attn2``: its own projections and modulation, its output added
beside the joint attention's). The patches act on the joint attention and pass that call through untouched
(:func:`.joint_attention.is_joint`: a call of fewer than text + image tokens): the target's image tokens attend to
their own there. Swapping it would need the sources' keys and values of ``attn2``, which the records do not hold:
they keep the joint attention's input, projected with ``x_block.attn``'s weights after its own modulation; treating
the call as joint attention with no text would give ``attn2``'s queries the joint attention's keys.

``auto``: no published analysis of SD3's layers is known to us, and a tiny random model cannot measure which blocks
carry layout or appearance. So it is a choice: the Flux analogue, as for Qwen-Image: Stable Flow's vital layers of
FLUX.1-dev (0, 1, 17, 18, 25, 28, 53, 54, 56 of its 57 blocks, Avrahami et al. 2025) at the same relative depth,
round(i * depth / 57) (the last block at most): 0, 7, 8, 11, 12, 22, 23 of SD3 and SD3.5 Medium's 24 blocks; 0, 1,
11, 12, 17, 19, 35, 36, 37 of SD3.5 Large's 38. Fewer than all blocks on purpose: keys that carry their positions
cannot be moved off the target's (above), and swapping every block lets the reference's layout through (the ghosting
Personalize-Anything reports with shared positions). To revisit with measurements on the real models
(``layout_layers``/``reference_layers`` take any other set).
"""

from __future__ import annotations

import torch

from .. import host_api
from ..records import VALUES
from .joint import JointFamily
from .joint_attention import JointProjection
from .layer_set import LayerSet

STABLE_FLOW = (0, 1, 17, 18, 25, 28, 53, 54, 56)  # FLUX.1-dev's vital layers (flux.VITAL), over its 57 blocks
FLUX_BLOCKS = 57


def vital_blocks(depth: int) -> frozenset[tuple[str, int]]:
    """Stable Flow's vital layers at the same relative depth of ``depth`` joint blocks."""
    return frozenset(("double", min(round(i * depth / FLUX_BLOCKS), depth - 1)) for i in STABLE_FLOW)


def is_sd3(diffusion_model) -> bool:
    """ComfyUI's MMDiT (SD3, SD3.5) with its joint blocks and patches of 2 (:attr:`SD3Family.patch_size`); not
    AuraFlow's MMDiT (another class)."""
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    blocks = getattr(diffusion_model, "joint_blocks", None)
    return isinstance(diffusion_model, MMDiT) and blocks is not None and len(blocks) > 0 \
        and diffusion_model.patch_size == SD3Family.patch_size \
        and all(hasattr(b, "context_block") and hasattr(b, "x_block") for b in blocks)


def modulation(block, c: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """An x block's ``(shift, scale)`` of its attention input, ``[n, width]`` each (shift None with
    ``scale_mod_only``), from its ``adaLN_modulation(c)`` as ``DismantledBlock.pre_attention(_x)`` chunks it."""
    mods = block.adaLN_modulation(c)
    if block.scale_mod_only:
        return None, mods.chunk(4, dim=1)[0]
    shift, scale = mods.chunk(9 if block.x_block_self_attn else 6, dim=1)[:2]
    return shift, scale


class SD3Projection(JointProjection):
    """A block's image tokens: the x block's ``norm1``, modulated by its own shift and scale of ``c`` (``vec``);
    keys are ``qkv``'s key columns normed per head (``ln_k``: RMS or layer norm where the model has ``qk_norm``),
    values its value columns, as ``SelfAttention.pre_attention`` makes them, through the block's own weights."""

    def block(self, layer):
        return self.dm.joint_blocks[layer[1]].x_block

    def input_of(self, layer, args: dict, index: torch.Tensor | None, tokens: tuple[int, int, int]) -> torch.Tensor:
        from comfy.ldm.modules.diffusionmodules.mmdit import modulate

        block = self.block(layer)
        x, c = (args["img"], args["vec"]) if index is None else (args["img"][index], args["vec"][index])
        shift, scale = modulation(block, c)
        return modulate(block.norm1(x), shift, scale)

    def __call__(self, layer, kind: str, x: torch.Tensor, pe_img: torch.Tensor | None) -> torch.Tensor:
        """Keys or values ``[n, tokens, heads * d]`` (no RoPE: ``pe_img`` is None)."""
        attn = self.block(layer).attn
        width = x.shape[-1]
        part = slice(2 * width, 3 * width) if kind == VALUES else slice(width, 2 * width)  # q, k, v
        weight, bias = host_api.dense_linear(attn.qkv, x)  # dense: fp8 or quantized weights are sliced by value
        out = torch.nn.functional.linear(x, weight[part], None if bias is None else bias[part])
        if kind == VALUES:
            return out
        return attn.ln_k(out.unflatten(-1, (attn.num_heads, attn.head_dim))).flatten(2).to(out)


class SD3Family(JointFamily):
    name = "SD3"
    key = "sd3"
    models = "SD3 and SD3.5 (Medium, Large, their LoRAs)"

    def recognises(self, diffusion_model) -> bool:
        return is_sd3(diffusion_model)

    def blocks(self, diffusion_model) -> dict:
        return {"double": diffusion_model.joint_blocks}

    def auto_layers(self, model) -> LayerSet:
        """``"auto"``: Stable Flow's vital layers at the model's depth (the module docstring)."""
        return LayerSet(vital_blocks(len(model.model.diffusion_model.joint_blocks)))

    def projection(self, diffusion_model) -> SD3Projection:
        return SD3Projection(diffusion_model)

    def width(self, diffusion_model) -> int:
        return diffusion_model.hidden_size

    def text_width(self, model) -> int | None:
        """4096: CLIP-L and CLIP-G padded to T5-XXL's width, joined along the tokens with T5's (into
        ``context_embedder``)."""
        return getattr(model.model.diffusion_model.context_embedder, "in_features", None)


SD3 = SD3Family()
