"""Pick-and-Draw's two losses (P&D Sec. 3.2-3.3, eq. 6-8), on features and maps already read.

- Appearance (UREMD, eq. 6-7): every generated feature inside the generation's subject mask is
  matched to its nearest palette feature by cosine distance, ``C_ij = 1 - cos(V_i^ref, V_j^gen)``;
  the loss is the mean over generated features of ``min_i C_ij``, averaged over the layers read.
- Layout (eq. 8): per cross-attention layer, the Frobenius norm between the generation's and the
  template's subject maps, each min-max normalised and smoothed with Attend-and-Excite's Gaussian
  (kernel 3, sigma 0.5, reflect padding), averaged over the layers.

The appearance cost ``1 - cos(p, g)`` is differentiated in the equal form ``||p/|p| - g/|g|||^2 / 2``
at each feature's nearest palette entry (picked by the cosine, as eq. 7's min): the same value and
gradient, but exactly 0 where a feature is in the palette (``g @ p.T`` leaves float rounding there).
How far the sampler steps along these gradients is its business (:mod:`.sampler`).
"""

from __future__ import annotations

import math

import torch

from ..masks.cross_attention import normalise

KERNEL, SIGMA = 3, 0.5  # Attend-and-Excite's smoothing (Chefer et al. 2023), which P&D follows


def gaussian_kernel(size: int = KERNEL, sigma: float = SIGMA) -> torch.Tensor:
    """Attend-and-Excite's 2-D kernel ``[size, size]``, summing to 1.

    Written as their ``GaussianSmoothing`` computes it, ``exp(-((x - mean) / (2 * sigma)) ** 2)``
    per axis (a Gaussian of standard deviation ``sigma * sqrt(2)``), so maps smooth as in their
    code and in P&D's, which reuses it.
    """
    grid = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    one = torch.exp(-((grid / (2 * sigma)) ** 2)) / (sigma * math.sqrt(2 * math.pi))
    kernel = one[:, None] * one[None, :]
    return kernel / kernel.sum()


def smooth(maps: torch.Tensor) -> torch.Tensor:
    """Maps ``[B, h, w]`` smoothed with :func:`gaussian_kernel` after reflect padding, as
    Attend-and-Excite pads (maps of side 1 are padded by replication: reflection needs 2)."""
    x = maps[:, None]
    pad = KERNEL // 2
    mode = "reflect" if min(maps.shape[-2:]) > pad else "replicate"
    x = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode=mode)
    kernel = gaussian_kernel().to(x)[None, None]
    return torch.nn.functional.conv2d(x, kernel)[:, 0]


def layout_map(subject_map: torch.Tensor) -> torch.Tensor:
    """``G(Â)``: a subject map ``[B, h, w]`` min-max normalised per image, then smoothed."""
    return smooth(normalise(subject_map))


def layout_loss(generated: list[torch.Tensor], template: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 8 per image ``[B]``: the mean over layers of ``||G(Â_gen) - G(Â_temp)||_F``.

    Args:
        generated: per layer, the generation's raw subject map ``[B, h, w]``.
        template: per layer (same order), the template's ``G(Â)`` ``[B, h, w]`` (:func:`layout_map`).
    """
    norms = [(layout_map(g) - t.to(g)).flatten(1).norm(dim=1) for g, t in zip(generated, template, strict=True)]
    return torch.stack(norms).mean(0)


def subject_mask(subject_map: torch.Tensor, threshold: float) -> torch.Tensor:
    """Eq. 3: the pixels whose normalised map is at least ``threshold``, ``[B, h*w]`` bool."""
    return (normalise(subject_map.detach()) >= threshold).flatten(1)


def uremd(generated: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Eq. 6-7: ``mean_j min_i (1 - cos(palette_i, generated_j))`` for one image and layer.

    Args:
        generated: the generated features inside the mask ``[m, D]`` (m >= 1).
        palette: the reference's features ``[n, D]`` (n >= 1).
    """
    g = torch.nn.functional.normalize(generated.to(torch.promote_types(generated.dtype, torch.float32)), dim=-1)
    p = torch.nn.functional.normalize(palette.to(g), dim=-1)
    nearest = (g.detach() @ p.T).argmax(dim=1)  # eq. 7's min over the palette (the gradient follows the min)
    return ((p[nearest] - g) ** 2).sum(-1).mean() / 2  # 1 - cos for unit vectors, exactly 0 at a match


def appearance_loss(features: list[torch.Tensor], masks: list[torch.Tensor],
                    palettes: list[torch.Tensor]) -> torch.Tensor:
    """UREMD per image ``[B]``, averaged over the layers where the image's mask is not empty
    (0 where it is empty at every layer: no subject to pull yet).

    Args:
        features: per layer, the generation's features ``[B, h*w, D]``.
        masks: per layer, its subject mask ``[B, h*w]`` (:func:`subject_mask`).
        palettes: per layer, the palette's features ``[n, D]``.
    """
    dtype = torch.promote_types(features[0].dtype, torch.float32)
    losses = []
    for b in range(features[0].shape[0]):
        per_layer = [uremd(f[b][m[b]], p) for f, m, p in zip(features, masks, palettes, strict=True) if m[b].any()]
        # An image with no subject yet contributes 0, still on the graph (its gradient is 0).
        losses.append(torch.stack(per_layer).mean() if per_layer else (features[0][b].sum() * 0).to(dtype))
    return torch.stack(losses)
