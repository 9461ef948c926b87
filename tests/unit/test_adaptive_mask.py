"""The adaptive mask's algebra on small hand-made masks with known answers: no host needed."""

from __future__ import annotations

import pytest
import torch

from comfyui_layout_retouch.masks.adaptive import (
    adaptive_mask,
    distance_transform,
    match_batches,
    normalize_foreground,
    remove_small_components,
    resize_mask,
)


def square(size=9, lo=2, hi=7, batch=1):
    m = torch.zeros(batch, size, size)
    m[:, lo:hi, lo:hi] = 1
    return m


def test_distance_values():
    d = distance_transform(square())[0]
    assert float(d[4, 4]) == 3.0  # the centre of a 5x5 square is 3 pixels from the background
    assert float(d[2, 4]) == 1.0 and float(d[3, 3]) == 2.0
    assert float(d[0, 0]) == 0.0 and float(d[2, 2]) == 1.0
    diag = torch.zeros(1, 9, 9)
    diag[0, 1:8, 1:8] = 1
    diag[0, 1, 1] = 0
    assert float(distance_transform(diag)[0, 2, 2]) == pytest.approx(2 ** 0.5)  # Euclidean, not city-block


def test_normalisation_range_and_background():
    n = normalize_foreground(distance_transform(square()), 0.5, 1.0)[0]
    fg = square()[0] > 0
    assert float(n[fg].min()) == 0.5 and float(n[fg].max()) == 1.0
    assert torch.equal(n[~fg], torch.zeros_like(n[~fg]))
    assert float(n[4, 4]) == 1.0 and float(n[2, 4]) == 0.5 and float(n[3, 4]) == pytest.approx(0.75)
    line = torch.zeros(1, 5, 5)
    line[0, 2, :] = 1  # one distance value only: maps to the top of the range
    assert torch.equal(normalize_foreground(distance_transform(line), 0.5, 1.0)[0, 2], torch.ones(5))


def test_small_components_removed_large_kept():
    m = torch.zeros(1, 12, 12)
    m[0, 0:2, 0:2] = 1  # 4 pixels
    m[0, 5:11, 5:10] = 1  # 30 pixels
    m[0, 2, 2] = 1  # touches the small blob diagonally: 8-connected, so that blob has 5 pixels
    kept = remove_small_components(m, 6)[0]
    assert float(kept[0:3, 0:3].sum()) == 0
    assert float(kept[5:11, 5:10].sum()) == 30
    assert torch.equal(remove_small_components(m, 5)[0], m[0])  # 5-pixel blob meets the threshold


def test_union_and_clipping():
    mc, msam = torch.zeros(1, 9, 9), torch.zeros(1, 9, 9)
    mc[0, 1:4, 1:4] = 1
    msam[0, 3:8, 3:8] = 1
    r = adaptive_mask(mc, msam, min_component_area=0)
    assert torch.equal(r.union[0], torch.maximum(mc, msam)[0])
    assert torch.equal(r.components, mc)
    assert float(r.mask.max()) == 1.0 and float(r.mask.min()) == 0.0
    assert torch.equal(r.mask[mc > 0], torch.ones(9))  # C(M^c) lifts its pixels to 1, clipped there
    outside = r.union[0] == 0
    assert torch.equal(r.mask[0][outside], torch.zeros(int(outside.sum())))
    only_sam = (msam[0] > 0) & (mc[0] == 0)
    assert float(r.mask[0][only_sam].min()) >= 0.5 and float(r.mask[0][only_sam].max()) <= 1.0
    torch.testing.assert_close(r.mask, (r.distance + r.components).clamp(0, 1))


def test_small_cross_attention_parts_removed_in_components_only():
    mc = torch.zeros(1, 20, 20)
    mc[0, 10:18, 10:18] = 1  # 64 px
    mc[0, 1, 1] = 1  # a speck
    r = adaptive_mask(mc, torch.zeros(1, 20, 20), min_component_area=0.01, clean_union=False)  # 4 px at 20x20
    assert float(r.components[0, 1, 1]) == 0 and float(r.components[0, 12, 12]) == 1
    assert float(r.union[0, 1, 1]) == 1  # the formula as printed: the union keeps it


def speck_scene():
    """M^c: an 80x120 subject and an 8x8 speck far away, at 400x400; M^SAM: the subject, a little wider."""
    mc, msam = torch.zeros(1, 400, 400), torch.zeros(1, 400, 400)
    mc[0, 40:160, 40:120] = 1
    mc[0, 331:339, 289:297] = 1  # 64 px, under 1% of the image (1600 px)
    msam[0, 36:164, 36:124] = 1
    return mc, msam


def test_clean_union_keeps_specks_out_of_m():
    mc, msam = speck_scene()
    speck = (slice(None), slice(331, 339), slice(289, 297))
    clean = adaptive_mask(mc, msam)  # clean_union is on by default
    assert float(clean.union[speck].max()) == 0 and float(clean.mask[speck].max()) == 0
    torch.testing.assert_close(clean.union, torch.maximum(clean.components, msam))
    raw = adaptive_mask(mc, msam, clean_union=False)  # the old formula: the speck enters M at 0.5 and more
    assert float(raw.union[speck].min()) == 1
    assert float(raw.mask[speck].min()) == 0.5 and float(raw.mask[speck].max()) > 0.5
    assert torch.equal(raw.components, clean.components)  # C(M^c) is the same either way
    outside = torch.ones(1, 400, 400, dtype=torch.bool)
    outside[speck] = False
    assert float(raw.mask[outside].sum()) > 0 and float(clean.mask[outside].sum()) > 0
    # away from the speck both agree (Normalize scales by the deepest pixel, the subject's, in both)
    torch.testing.assert_close(clean.mask[0, :200], raw.mask[0, :200])


def test_clean_union_keeps_large_parts_of_m_c():
    """What SAM misses but M^c covers with a large part still enters M^k (the OR's purpose)."""
    mc, msam = speck_scene()
    msam[0, 100:164] = 0  # SAM misses the lower half of the subject
    r = adaptive_mask(mc, msam)
    assert float(r.union[0, 100:160, 40:120].min()) == 1


def test_resizing_latent_to_image_size():
    mc = torch.zeros(1, 8, 8)
    mc[0, :, 4:] = 1  # right half at latent size
    msam = torch.zeros(1, 64, 64)
    r = adaptive_mask(mc, msam, min_component_area=0)
    assert r.mask.shape == (1, 64, 64)
    assert float(r.components[0, :, 40:].min()) == 1 and float(r.components[0, :, :24].max()) == 0
    assert torch.equal(resize_mask(mc, (8, 8)), mc)


def test_soft_input_with_threshold():
    soft = torch.linspace(0, 1, 81).view(1, 9, 9)
    hard = adaptive_mask(soft, torch.zeros(1, 9, 9), threshold=0.5, min_component_area=0).components
    assert torch.equal(hard, (soft > 0.5).float())
    low = adaptive_mask(soft, torch.zeros(1, 9, 9), threshold=0.1, min_component_area=0).components
    assert float(low.sum()) > float(hard.sum())


def test_batches():
    mc = torch.cat([square(), torch.zeros(1, 9, 9)])
    r = adaptive_mask(mc, square(batch=1), min_component_area=0)
    assert r.mask.shape == (2, 9, 9)
    assert float(r.components[1].sum()) == 0 and float(r.components[0].sum()) == 25
    a, b = match_batches(torch.zeros(1, 4, 4), torch.zeros(3, 4, 4))
    assert a.shape == b.shape == (3, 4, 4)
    with pytest.raises(ValueError, match="batches of 2 and 3"):
        match_batches(torch.zeros(2, 4, 4), torch.zeros(3, 4, 4))
