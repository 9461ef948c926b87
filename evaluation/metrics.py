"""The papers' metrics as formulas on embeddings and logits (L&R Sec. 4.1, Fig. 1, Fig. 4a; P&D Sec. 4.1).

- Identity (DreamBooth's DINO and CLIP-I, L&R's I_DINO and I_CLIP): per generated image, the mean
  over the reference photos {I_r^m} of the cosine similarity of their embeddings.
- Prompt fidelity (CLIP-T, L&R's T_CLIP): per generated image, the cosine similarity of its CLIP
  image embedding and the CLIP text embedding of its prompt.
- Inception Score (Salimans et al. 2016; L&R Fig. 4a): ``exp(E_x KL(p(y|x) || p(y)))`` with
  ``p(y)`` the mean of ``p(y|x)`` over the images of one set (one prompt of one method).
- Centre spread (L&R Fig. 1's sigma^2, "the averaged variances of 2D center points"): the mean of
  the variances of the centres' x and y, in image fractions [0, 1].

Aggregation (:func:`mean_of_means`): a method's score is the mean over prompts of the mean over
that prompt's images, as the papers average their per-prompt sets of 8 images; with the same
number of images per prompt this is the plain mean over all images.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarities ``[N, M]`` of embeddings ``a [N, D]`` and ``b [M, D]`` (in float64)."""
    a = torch.nn.functional.normalize(a.double(), dim=-1)
    b = torch.nn.functional.normalize(b.double(), dim=-1)
    return a @ b.T


def identity_scores(generated: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """I_DINO / I_CLIP per generated image ``[N]``: the mean cosine to the references ``[M, D]``."""
    return cosine_matrix(generated, references).mean(dim=1)


def text_scores(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """T_CLIP per image ``[N]``: the cosine of image ``i``'s embedding and its prompt's ``texts[i]``."""
    return torch.nn.functional.cosine_similarity(images.double(), texts.double(), dim=-1)


def inception_score(logits: torch.Tensor) -> float:
    """The Inception Score of one image set from the classifier's logits ``[N, C]`` (N >= 1).

    1 when every image gets the same class distribution; the number of classes when the images
    are confidently classified into distinct classes, spread evenly.
    """
    log_p = torch.log_softmax(logits.double(), dim=1)
    p = log_p.exp()
    log_marginal = torch.logsumexp(log_p, dim=0, keepdim=True) - math.log(log_p.shape[0])
    kl = torch.where(p > 0, p * (log_p - log_marginal), 0.0).sum(dim=1)  # 0 log 0 = 0
    return float(torch.exp(kl.mean()))


def centre_spread(centres: torch.Tensor) -> float:
    """L&R Fig. 1's sigma^2 of centres ``[N, 2]`` in [0, 1]: the mean of var(x) and var(y)
    (population variances, over all N)."""
    return float(centres.double().var(dim=0, unbiased=False).mean())


def mask_centre(mask: torch.Tensor) -> tuple[float, float]:
    """The centroid ``(x, y)`` of a boolean mask ``[H, W]`` (not empty), as fractions of the width
    and height: pixel ``(i, j)`` covers ``[j, j + 1) / W``, so its centre is ``(j + 0.5) / W``."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(xs) == 0:
        raise ValueError("the mask is empty: no centre")
    height, width = mask.shape
    return float((xs.double() + 0.5).mean() / width), float((ys.double() + 0.5).mean() / height)


def centre_density(centres: torch.Tensor, size: int = 128, sigma: float = 0.05) -> torch.Tensor:
    """L&R Fig. 1's map ``[size, size]`` in [0, 1]: a Gaussian of fixed ``sigma`` (image
    fractions) at each centre ``[N, 2]`` (x, y), summed, divided by its maximum (all 0 for N = 0)."""
    grid = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    density = torch.zeros(size, size, dtype=torch.float64)
    for x, y in centres.double().tolist():
        density += torch.exp(-((grid[:, None] - y) ** 2 + (grid[None, :] - x) ** 2) / (2 * sigma**2))
    top = density.max()
    return density / top if top > 0 else density


def mean_of_means(per_prompt: Mapping[str, Iterable[float]]) -> float:
    """The mean over prompts of the mean over each prompt's values (prompts without values are
    left out); NaN when no prompt has one."""
    means = [sum(v) / len(v) for v in (list(values) for values in per_prompt.values()) if v]
    return sum(means) / len(means) if means else float("nan")
