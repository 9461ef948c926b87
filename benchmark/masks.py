"""Timing the mask pipeline at 512x512: Segment Anything (random weights of an official size;
speed does not depend on them) and the adaptive mask's algebra."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ..masks import sam as sam_lib
from ..masks.adaptive import adaptive_mask

logger = logging.getLogger(__name__)


def time_masks(sizes: list[str], size: int = 512, device: str = "cpu") -> dict[str, float]:
    """Seconds for one SAM segmentation per model size, and for the adaptive mask, at ``size``."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    prompt = np.zeros((size, size), np.float32)
    prompt[size // 4:3 * size // 4, size // 3:3 * size // 4] = 1
    out = {}
    for name in sizes:
        config = sam_lib.SamConfig(*sam_lib.OFFICIAL_SIZES[name])
        sam = sam_lib.SamModel(sam_lib.build_sam(config), config, "random weights")
        start = time.perf_counter()
        with torch.inference_mode():
            sam_lib.segment(sam, image, prompt, device=device)
        out[f"SAM {name} segment"] = time.perf_counter() - start
    mc = torch.zeros(1, size // 8, size // 8)
    mc[0, size // 32:size // 12, size // 24:size // 10] = 1
    start = time.perf_counter()
    for _ in range(5):
        adaptive_mask(mc, torch.from_numpy(prompt)[None])
    out["adaptive mask"] = (time.perf_counter() - start) / 5
    for name, seconds in out.items():
        logger.info("%-22s %8.3f s (%dx%d, %s)", name, seconds, size, size, device)
    return out
