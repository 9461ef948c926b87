"""Pick-and-Draw's losses against a direct, loop-by-loop reading of the paper's eq. 3 and 6-8."""

from __future__ import annotations

import math

import torch

from comfyui_layout_retouch.guidance.losses import (
    appearance_loss,
    gaussian_kernel,
    layout_loss,
    smooth,
    subject_mask,
    uremd,
)


def direct_uremd(gen: torch.Tensor, ref: torch.Tensor) -> float:
    """Eq. 6-7 as written: for each generated feature j, min over reference features i of
    1 - (V_i . V_j) / (|V_i| |V_j|); the mean over j."""
    total = 0.0
    for j in range(gen.shape[0]):
        costs = []
        for i in range(ref.shape[0]):
            dot = sum(float(a) * float(b) for a, b in zip(ref[i], gen[j], strict=True))
            costs.append(1 - dot / (float(ref[i].norm()) * float(gen[j].norm())))
        total += min(costs)
    return total / gen.shape[0]


def direct_smooth(m: torch.Tensor) -> torch.Tensor:
    """Attend-and-Excite's smoothing written out: reflect-pad by 1, then a 3x3 weighted sum with
    weights exp(-((x - 1) / (2 * 0.5))^2) per axis, normalised to sum 1."""
    one = [math.exp(-(((x - 1) / (2 * 0.5)) ** 2)) for x in range(3)]
    weights = [[a * b for b in one] for a in one]
    total = sum(sum(r) for r in weights)
    h, w = m.shape
    reflect = lambda i, n: -i if i < 0 else (2 * (n - 1) - i if i >= n else i)  # noqa: E731
    out = torch.zeros(h, w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            out[y, x] = sum(weights[dy][dx] / total * float(m[reflect(y + dy - 1, h), reflect(x + dx - 1, w)])
                            for dy in range(3) for dx in range(3))
    return out


def direct_layout(gen: list[torch.Tensor], temp: list[torch.Tensor]) -> float:
    """Eq. 8 as written for one image: each layer's maps min-max normalised, smoothed, and the
    Frobenius norm of the difference; the mean over layers."""
    norms = []
    for g, t in zip(gen, temp, strict=True):
        gn = (g - g.min()) / (g.max() - g.min())
        tn = (t - t.min()) / (t.max() - t.min())
        diff = direct_smooth(gn) - direct_smooth(tn)
        norms.append(math.sqrt(sum(float(v) ** 2 for v in diff.flatten())))
    return sum(norms) / len(norms)


def test_gaussian_kernel_is_attend_and_excites():
    k = gaussian_kernel()
    e = math.exp(-1)
    one = torch.tensor([e, 1.0, e], dtype=torch.float64) / (1 + 2 * e)
    torch.testing.assert_close(k, one[:, None] * one[None, :], rtol=0, atol=1e-15)


def test_uremd_equals_eq_6_7():
    gen, ref = torch.randn(7, 5, dtype=torch.float64), torch.randn(11, 5, dtype=torch.float64)
    assert abs(float(uremd(gen, ref)) - direct_uremd(gen, ref)) < 1e-6  # float32 inside
    assert float(uremd(ref[:3], ref)) < 1e-6  # every feature finds itself
    scaled = float(uremd(gen * 3.0, ref * 0.5))
    assert abs(scaled - float(uremd(gen, ref))) < 1e-6  # cosine: scale-free


def test_layout_loss_equals_eq_8():
    gen = [torch.rand(2, s, s, dtype=torch.float64) for s in (8, 4, 2)]
    temp = [torch.rand(2, s, s, dtype=torch.float64) for s in (8, 4, 2)]
    from comfyui_layout_retouch.guidance.losses import layout_map

    got = layout_loss(gen, [layout_map(t) for t in temp])
    for b in range(2):
        want = direct_layout([g[b] for g in gen], [t[b] for t in temp])
        assert abs(float(got[b]) - want) < 1e-9
    assert float(layout_loss(gen, [layout_map(g) for g in gen]).abs().max()) < 1e-12  # a map against itself
    torch.testing.assert_close(smooth(gen[0])[0], direct_smooth(gen[0][0]), rtol=0, atol=1e-12)


def test_appearance_loss_masks_and_averages_over_layers():
    torch.manual_seed(0)
    maps = [torch.rand(2, 4, 4), torch.rand(2, 2, 2)]
    feats = [torch.randn(2, 16, 6), torch.randn(2, 4, 6)]
    pals = [torch.randn(9, 6), torch.randn(5, 6)]
    masks = [subject_mask(m, 0.5) for m in maps]
    got = appearance_loss(feats, masks, pals)
    for b in range(2):
        per_layer = []
        for m, f, p in zip(maps, feats, pals, strict=True):
            norm = (m[b] - m[b].min()) / (m[b].max() - m[b].min())
            inside = f[b][norm.flatten() >= 0.5]
            per_layer.append(direct_uremd(inside.double(), p.double()))
        assert abs(float(got[b]) - sum(per_layer) / len(per_layer)) < 1e-5
    empty = [torch.zeros(2, 16, dtype=torch.bool), torch.zeros(2, 4, dtype=torch.bool)]
    assert torch.equal(appearance_loss(feats, empty, pals), torch.zeros(2))  # no subject yet: no pull
