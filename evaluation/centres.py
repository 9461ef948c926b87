"""Where the subject lands in a generated image (L&R Fig. 1), with Segment Anything and DINO.

L&R locate "the bounding box of an object" without saying how. Here, for one image:

1. Segment Anything (the pack's loader, ``masks.sam``) is prompted with each point of a
   ``grid`` x ``grid`` lattice over the image (one positive point each, SAM's three candidates
   per point), as SAM's automatic mask generator does with a coarser lattice.
2. Candidates covering less than ``min_area`` or more than ``max_area`` of the image are dropped
   (specks; the whole background).
3. Each candidate's crop (its bounding box, outside the mask painted grey) is embedded with DINO;
   the candidate whose mean cosine to the reference photos' DINO embeddings is highest is the
   subject (the identity metric I_DINO, on the crop).
4. The centre is that mask's centroid in image fractions (:func:`metrics.mask_centre`).

An image where no candidate survives step 2 has no centre; the report counts them.
"""

from __future__ import annotations

import numpy as np
import torch

from ..masks.sam import SamModel
from .metrics import identity_scores, mask_centre
from .models import Dino

GREY = 124  # ~ the ImageNet mean: what DINO sees outside the mask


def grid_points(width: int, height: int, grid: int) -> np.ndarray:
    """``grid * grid`` point prompts ``[N, 2]`` (x, y) in pixels, at the centres of a lattice's cells."""
    steps = (np.arange(grid) + 0.5) / grid
    return np.array([(x * width, y * height) for y in steps for x in steps], dtype=np.float32)


def candidate_masks(sam: SamModel, pixels: np.ndarray, grid: int = 4, min_area: float = 0.01,
                    max_area: float = 0.9, device: str = "cpu") -> list[np.ndarray]:
    """SAM's masks (boolean ``[H, W]``) for the lattice's points on ``pixels`` (``uint8 [H, W, 3]``),
    within the area bounds; the model goes back to the CPU afterwards."""
    from segment_anything import SamPredictor

    height, width = pixels.shape[:2]
    out = []
    try:
        sam.model.to(device)
        predictor = SamPredictor(sam.model)
        predictor.set_image(pixels)
        for point in grid_points(width, height, grid):
            masks, _, _ = predictor.predict(point_coords=point[None], point_labels=np.ones(1, dtype=np.int64),
                                            multimask_output=True)
            out += [m for m in masks if min_area <= m.mean() <= max_area]
    finally:
        sam.model.to("cpu")
    return out


def masked_crop(pixels: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """The mask's bounding box of ``pixels``, grey outside the mask, ``uint8 [h, w, 3]``."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.where(mask[..., None], pixels, GREY)[y0:y1, x0:x1]
    return torch.from_numpy(np.ascontiguousarray(crop, dtype=np.uint8))


def subject_centre(sam: SamModel, dino: Dino, pixels: torch.Tensor, references: torch.Tensor, grid: int = 4,
                   min_area: float = 0.01, max_area: float = 0.9,
                   device: str = "cpu") -> tuple[tuple[float, float] | None, float | None]:
    """The subject's centre ``(x, y)`` in [0, 1] in an RGB ``uint8 [H, W, 3]`` image and the chosen
    mask's identity score, or ``(None, None)`` where SAM gives no mask in the bounds.

    ``references``: the reference photos' DINO embeddings ``[M, D]``.
    """
    picture = pixels.numpy()
    masks = candidate_masks(sam, picture, grid, min_area, max_area, device)
    if not masks:
        return None, None
    scores = identity_scores(dino.embed([masked_crop(picture, m) for m in masks]), references)
    best = int(torch.argmax(scores))
    return mask_centre(torch.from_numpy(masks[best])), float(scores[best])
