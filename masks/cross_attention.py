"""The cross-attention mask ``M^c`` (L&R Sec. 3.2.2, "Adaptive mask blending", after MasaCtrl).

The subject token(s)' cross-attention, averaged over heads, decoder layers at one resolution
(paper: 32x32 for 512x512 images) and steps, is min-max normalised to [0, 1] per image and
thresholded (paper and MasaCtrl: 0.1; DreamMatcher 0.05) into a binary mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map ``[B, h, w]`` to [0, 1]; a constant map becomes all zeros."""
    flat = maps.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = (high - low).clamp_min(torch.finfo(flat.dtype).tiny)
    return ((flat - low) / span * (high > low)).view_as(maps)


def to_image_size(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[B, h, w]`` maps to ``size`` (the image's ``(H, W)``), clamped to [0, 1]."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)


def cross_attention_mask(maps: torch.Tensor, image_size: tuple[int, int],
                         threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(soft, binary)`` MASKs ``[B, H, W]`` from averaged subject maps ``[B, h, w]``.

    The soft map is normalised at attention resolution and resized; the binary mask is the soft
    map above ``threshold`` (so both agree pixel for pixel).
    """
    soft = to_image_size(normalise(maps.float()), image_size)
    return soft, (soft > threshold).float()
