"""The adaptive mask ``M`` (L&R Sec. 3.2.2, "Adaptive mask blending"; Eq. 3-4 and Appendix C.2).

    M^k = OR(Resize(C(M^c)), M^SAM)       (clean_union, the default)
    M^k = OR(Resize(M^c), M^SAM)          (clean_union off: Eq. 3 as printed)
    M   = clip(Normalize(EDT_2(M^k)) + C(M^c), 0, 1)

``EDT_2`` is the exact Euclidean distance of each foreground pixel to the nearest background
pixel (scipy's ``distance_transform_edt``); ``Normalize`` maps the foreground's distances
linearly onto ``[low, high]`` (paper: [0.5, 1.0]) and leaves the background at exactly 0;
``C`` removes the connected sets of ``M^c`` smaller than a volume threshold (8-connectivity;
the paper gives no threshold: ours is a fraction of the image, default 1%).

Why ``clean_union`` is on by default: the paper introduces Eq. 3 with "we first discard noisy
regions of M^c based on M^SAM", after saying that M^c "includes noisy regions"; Appendix C.2
blames exactly those regions for the artifacts of an M^c-only mask. The OR as printed cannot
discard anything: every speck of M^c enters M^k, and through ``Normalize`` enters M at 0.5 or
more. Removing the small sets first (the paper's own ``C``, the operation it names "to discard
noisy pixel mask areas") does what the sentence says; the large parts of M^c still add to
M^SAM, so the OR keeps its stated purpose of covering what SAM misses. ``clean_union=False``
gives the formula as printed.

All masks here are ComfyUI MASKs, ``[B, H, W]`` floats in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``[B, h, w]`` to ``size`` bilinearly (values stay in [0, 1]; binarise afterwards).

    This is the one rule for all size mismatches: a latent-size M^c (64x64) and an image-size
    SAM mask (512x512) meet at the SAM mask's (image) size.
    """
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask.float()
    return F.interpolate(mask[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)


def binarize(mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """1 where ``mask > threshold``, else 0."""
    return (mask > threshold).float()


def match_batches(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast two mask batches against each other (sizes equal, or one of them 1)."""
    if a.shape[0] == b.shape[0]:
        return a, b
    if a.shape[0] == 1:
        return a.expand(b.shape[0], -1, -1), b
    if b.shape[0] == 1:
        return a, b.expand(a.shape[0], -1, -1)
    raise ValueError(f"batches of {a.shape[0]} and {b.shape[0]} masks cannot be paired")


def distance_transform(mask: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean distance (in pixels) of each foreground pixel to the background; 0 outside."""
    out = [ndimage.distance_transform_edt(m) for m in mask.cpu().numpy() > 0.5]
    return torch.from_numpy(np.stack(out)).float()


def normalize_foreground(distance: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Map each mask's foreground distances linearly onto ``[low, high]``; background stays 0.

    A foreground of one distance value (e.g. a one-pixel-wide line) maps to ``high``.
    """
    out = torch.zeros_like(distance)
    for i, d in enumerate(distance):
        fg = d > 0
        if not fg.any():
            continue
        lo, hi = d[fg].min(), d[fg].max()
        scaled = (d[fg] - lo) / (hi - lo) if hi > lo else torch.ones_like(d[fg])
        out[i][fg] = low + (high - low) * scaled
    return out


def area_threshold(fraction: float, size: tuple[int, int]) -> int:
    """``C``'s volume threshold: ``fraction`` of an ``(H, W)`` image, in whole pixels (at least 1)."""
    return max(1, round(fraction * size[0] * size[1]))


def label_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8-connected components of a boolean ``[H, W]``: labels ``[H, W]`` (0: background) and
    the pixel count of each label (index 0 counts the background)."""
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    return labels, np.bincount(labels.ravel(), minlength=count + 1)


def keep_large_components(mask: np.ndarray, min_pixels: int, largest_if_none: bool = False) -> np.ndarray:
    """``C`` on one boolean ``[H, W]``: its components of at least ``min_pixels`` pixels.

    ``largest_if_none``: where no component is that large, keep the largest one (ties: the first
    in scan order) rather than nothing.
    """
    labels, sizes = label_components(mask)
    keep = sizes >= min_pixels
    keep[0] = False
    if largest_if_none and not keep.any() and len(sizes) > 1:
        keep[1 + int(np.argmax(sizes[1:]))] = True
    return keep[labels]


def remove_small_components(mask: torch.Tensor, min_area: int) -> torch.Tensor:
    """``C`` on a batch ``[B, H, W]``: drop the 8-connected foreground components with fewer than
    ``min_area`` pixels."""
    out = [keep_large_components(m, min_area) for m in mask.cpu().numpy() > 0.5]
    return torch.from_numpy(np.stack(out)).float()


@dataclass(frozen=True)
class AdaptiveMask:
    """The adaptive mask and every intermediate, all ``[B, H, W]`` at the SAM mask's size."""

    mask: torch.Tensor  # M
    union: torch.Tensor  # M^k (from C(M^c) when clean_union)
    distance: torch.Tensor  # Normalize(EDT(M^k))
    components: torch.Tensor  # C(M^c)


def adaptive_mask(cross_attention: torch.Tensor, sam: torch.Tensor, threshold: float = 0.5,
                  min_component_area: float = 0.01, low: float = 0.5, high: float = 1.0,
                  clean_union: bool = True) -> AdaptiveMask:
    """Compute ``M`` from ``M^c`` (binary or soft, binarised at ``threshold``) and ``M^SAM``.

    Args:
        cross_attention: ``M^c``, ``[B, h, w]``, any size (resized to the SAM mask's).
        sam: ``M^SAM``, ``[B', H, W]``; ``B == B'`` or one of them 1.
        min_component_area: fraction of the image below which a component of ``M^c`` is dropped.
        low, high: the range the foreground's distances are mapped onto.
        clean_union: ``M^k`` from ``C(M^c)`` (the paper's "we first discard noisy regions of
            M^c"; see the module docstring) rather than from the raw ``M^c`` (Eq. 3 as printed).
    """
    size = tuple(sam.shape[-2:])
    mc = binarize(resize_mask(cross_attention, size), threshold)
    msam = binarize(sam.float(), 0.5)
    mc, msam = match_batches(mc, msam)
    cleaned = remove_small_components(mc, area_threshold(min_component_area, size))
    union = torch.maximum(cleaned if clean_union else mc, msam)
    distance = normalize_foreground(distance_transform(union), low, high)
    mask = (distance + cleaned).clamp(0, 1)
    return AdaptiveMask(mask=mask, union=union, distance=distance, components=cleaned)
