"""The pack's ComfyUI extension: every node it registers."""

from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from .attention_masks import AttentionCapture, AttentionMapToMask, CrossAttentionMask
from .custom_diffusion import CustomDiffusionLoader
from .masks import AdaptiveMask, SAMLoader, SAMSegment
from .null_text import NullTextInversion
from .pick_and_draw import LayoutTemplateNode, PickAndDrawSampler, ReferencePalette
from .retouch import MultiSourceAttentionSwap
from .sampling import DDIMInversion, StepBlendedKSampler


class LayoutRetouchExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [StepBlendedKSampler, DDIMInversion, MultiSourceAttentionSwap, CrossAttentionMask, AttentionCapture,
                AttentionMapToMask, AdaptiveMask, SAMLoader, SAMSegment, CustomDiffusionLoader, NullTextInversion,
                ReferencePalette, LayoutTemplateNode, PickAndDrawSampler]
