"""Every combo label the nodes offer, as saved workflows store them: defined here once, and imported by the
nodes, the workflow builders (``tools/``), the benchmark and the tests, so a rename reaches them all (and
``tests/host/test_labels.py`` fails on a saved workflow holding a label no node offers)."""

from __future__ import annotations

from ..attention.family import POSITIONS  # a DiT's reference positions: ("shifted", "shared")

# Multi-Source Attention Swap: source_paths and reference_cache.
RECORDED = "recorded"
FAST = "recorded, attention from the inversions (fast)"
REDENOISED = "re-denoised (paper)"
SOURCE_PATHS = (RECORDED, FAST, REDENOISED)
CACHE_RAM, CACHE_GPU, CACHE_OFF = "offloaded to RAM", "kept on the GPU", "off"
REFERENCE_CACHE = (CACHE_RAM, CACHE_GPU, CACHE_OFF)
SHIFTED, SHARED = POSITIONS

# DDIM Inversion: record_for.
RECORD_BOTH, RECORD_REFERENCE, RECORD_LAYOUT = "layout and reference", "reference", "layout"
RECORD_FOR = (RECORD_BOTH, RECORD_REFERENCE, RECORD_LAYOUT)

# Cross-Attention Mask: resolution (the latent's size over the map's).
HALF, QUARTER, FULL = "1/2 of the latent (32x32 at 512 px)", "1/4 of the latent (16x16 at 512 px)", \
    "1/1 of the latent (64x64 at 512 px)"
RESOLUTIONS = {HALF: 2, QUARTER: 4, FULL: 1}
