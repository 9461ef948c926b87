"""The swap against an explicit reference implementation on random tensors: no host needed."""

from __future__ import annotations

import math

import pytest
import torch

from comfyui_layout_retouch.attention.layers import parse_layers
from comfyui_layout_retouch.attention.rows import RowLayout
from comfyui_layout_retouch.attention.swap import (
    Phase,
    SwapSpec,
    mask_tokens,
    swap_cross_attention,
    swap_self_attention,
)

HEADS, DIM, TOKENS = 4, 8, 16


def explicit(q, k, v):
    """softmax(QK^T/sqrt(d))V for one head-split row, written out without reshapes."""
    out = torch.empty_like(q)
    for h in range(HEADS):
        cols = slice(h * DIM, (h + 1) * DIM)
        w = torch.softmax(q[:, cols] @ k[:, cols].T / math.sqrt(DIM), dim=-1)
        out[:, cols] = w @ v[:, cols]
    return out


def tensors(rows: RowLayout, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows.total, TOKENS, HEADS * DIM, generator=g, dtype=torch.float64) for _ in range(3)]


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V per head; ``[rows, tokens, heads * d]`` in and out."""
    b, n, inner = q.shape
    d = inner // heads
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, d).transpose(1, 2)  # noqa: E731
    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (weights @ split(v)).transpose(1, 2).reshape(b, n, inner)


def attend(q, k, v):
    return reference_attention(q, k, v, HEADS)


@pytest.mark.parametrize("halves,batch,n_src", [((1, 0), 2, 1), ((0,), 3, 3), ((1,), 1, 1)])
def test_row_pairing(halves, batch, n_src):
    rows = RowLayout(halves, batch, n_src, n_src, 0)
    lay = rows.layout_for_targets()
    assert len(lay) == rows.n_target
    for i in range(rows.n_target):
        half, b = divmod(i, batch)
        assert lay[i] == half * (batch + 2 * n_src) + batch + (b if n_src == batch else 0)


@pytest.mark.parametrize("halves,batch,n_layout,n_reference", [((1, 0), 2, 1, 3), ((0,), 3, 3, 1), ((0, 1), 1, 0, 2)])
def test_each_half_is_one_block(halves, batch, n_layout, n_reference):
    """Rows keep ComfyUI's convention, one equal block per entry of cond_or_uncond: [targets, layout,
    reference] per half, so another pack's patch that splits a call by halves pairs every row right."""
    rows = RowLayout(halves, batch, n_layout, n_reference, 0)
    size = batch + n_layout + n_reference
    assert rows.total == len(halves) * size
    for h in range(len(halves)):
        block = set(range(h * size, (h + 1) * size))
        assert set(rows.target_index()[h * batch:(h + 1) * batch].tolist()) <= block
        assert set(rows.layout_index()[h * n_layout:(h + 1) * n_layout].tolist()) <= block
        assert set(rows.reference_index()[h * n_reference:(h + 1) * n_reference].tolist()) <= block
    every = torch.cat([rows.target_index(), rows.sources_index()])
    assert sorted(every.tolist()) == list(range(rows.total))
    sources = rows.sources_index()
    assert torch.equal(sources[rows.sources().layout_index()], rows.layout_index())
    assert torch.equal(sources[rows.sources().reference_index()], rows.reference_index())
    target = torch.randn(rows.n_target, 4)
    source = torch.randn(len(sources), 4)
    both = rows.assemble(target, source)
    assert torch.equal(both[rows.target_index()], target) and torch.equal(both[sources], source)


@pytest.mark.parametrize("halves,batch,m", [((1, 0), 2, 3), ((0,), 1, 1), ((0,), 3, 2)])
def test_reference_rows_joined_for_every_target(halves, batch, m):
    """Every target of a half gets all M reference rows of that half, joined along the tokens."""
    rows = RowLayout(halves, batch, 1, m, 0)
    reference = torch.randn(len(halves) * m, TOKENS, 5)
    joined = rows.joined_for_targets(reference)
    assert joined.shape == (rows.n_target, m * TOKENS, 5)
    for i in range(rows.n_target):
        half = i // batch
        assert torch.equal(joined[i], torch.cat(list(reference[half * m:(half + 1) * m])))


def reference_keys(rows: RowLayout, k: torch.Tensor) -> torch.Tensor:
    """Each target row's reference keys (or values): its half's M reference rows, joined."""
    return rows.joined_for_targets(k[rows.reference_index()])


def test_reference_attention_is_explicit():
    rows = RowLayout((0,), 1, 1, 1, 0)
    q, k, v = tensors(rows)
    got = reference_attention(q, k, v, HEADS)
    for r in range(rows.total):
        torch.testing.assert_close(got[r], explicit(q[r], k[r], v[r]))


@pytest.mark.parametrize("halves,batch,m", [((1, 0), 2, 1), ((0,), 1, 1), ((1, 0), 2, 3)])
def test_reference_phase_uses_target_q_with_reference_kv(halves, batch, m):
    rows = RowLayout(halves, batch, 1, m, 12)
    q, k, v = tensors(rows)
    out = swap_self_attention(q, k, v, rows, Phase.REFERENCE, attend)
    k_ref, v_ref = reference_keys(rows, k), reference_keys(rows, v)
    for t in range(rows.n_target):
        half = t // batch
        refs = rows.reference_index()[half * m:(half + 1) * m]
        row = rows.target_index()[t]
        torch.testing.assert_close(out[row], explicit(q[row], torch.cat([k[r] for r in refs]),
                                                      torch.cat([v[r] for r in refs])))
        torch.testing.assert_close(out[row], explicit(q[row], k_ref[t], v_ref[t]))
    for s in rows.sources_index().tolist():  # the sources attend to themselves
        torch.testing.assert_close(out[s], explicit(q[s], k[s], v[s]))


def test_reference_order_does_not_matter():
    """Two references in either order give the target the same attention (up to rounding)."""
    rows = RowLayout((0, 1), 1, 1, 2, 12)
    q, k, v = tensors(rows)
    swapped = torch.arange(rows.total)
    ref = rows.reference_index()
    for half in range(2):
        a, b = ref[2 * half], ref[2 * half + 1]
        swapped[a], swapped[b] = b, a
    out = swap_self_attention(q, k, v, rows, Phase.REFERENCE, attend)
    out_swapped = swap_self_attention(q, k[swapped], v[swapped], rows, Phase.REFERENCE, attend)
    t = rows.target_index()
    torch.testing.assert_close(out[t], out_swapped[t], rtol=1e-12, atol=1e-12)
    first_only = torch.stack([explicit(q[t[i]], k[ref[2 * i]], v[ref[2 * i]]) for i in range(rows.n_target)])
    assert (out[t] - first_only).abs().max() > 1e-3  # both references are read, not the first alone


def test_layout_phase_copies_layout_output():
    rows = RowLayout((1, 0), 2, 1, 1, 0)
    q, k, v = tensors(rows)
    for fn in (swap_self_attention, swap_cross_attention):
        out = fn(q, k, v, rows, Phase.LAYOUT, attend)
        lay, targets = rows.layout_for_targets(), rows.target_index()
        for i, t in enumerate(targets.tolist()):
            assert torch.equal(out[t], out[lay[i]])
            torch.testing.assert_close(out[t], explicit(q[lay[i]], k[lay[i]], v[lay[i]]))


def test_mask_blend():
    rows = RowLayout((0, 1), 1, 1, 1, 40)
    q, k, v = tensors(rows)
    m = torch.rand(rows.n_target, TOKENS, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = swap_self_attention(q, k, v, rows, Phase.REFERENCE, attend, m)
    plain = swap_self_attention(q, k, v, rows, Phase.REFERENCE, attend)
    layout, t = plain[rows.layout_for_targets()], rows.target_index()
    torch.testing.assert_close(out[t], m * plain[t] + (1 - m) * layout)
    ones = swap_self_attention(q, k, v, rows, Phase.REFERENCE, attend, torch.ones_like(m))
    assert torch.equal(ones, plain)


def test_own_phase_is_plain_attention():
    rows = RowLayout((0,), 2, 1, 1, 0)
    q, k, v = tensors(rows)
    assert torch.equal(swap_self_attention(q, k, v, rows, Phase.OWN, attend), attend(q, k, v))
    assert torch.equal(swap_cross_attention(q, k, v, rows, Phase.OWN, attend), attend(q, k, v))


def test_mask_tokens_resize_and_rows():
    rows = RowLayout((0, 1), 2, 1, 1, 0)
    mask = torch.zeros(1, 64, 64)
    mask[:, :, 32:] = 1  # right half
    tokens = mask_tokens(mask, rows, (4, 4), torch.zeros(1))
    assert tokens.shape == (rows.n_target, 16, 1)
    grid = tokens[0, :, 0].view(4, 4)
    assert torch.equal(grid[:, 2:], torch.ones(4, 2)) and torch.equal(grid[:, :2], torch.zeros(4, 2))


def test_spec_phases():
    spec = SwapSpec(10, 30, parse_layers("output 9-11"), parse_layers("output 6-8"))
    assert spec.self_phase(("output", 9), 9) is Phase.LAYOUT
    assert spec.self_phase(("output", 6), 9) is Phase.OWN
    assert spec.self_phase(("output", 6), 10) is Phase.REFERENCE
    assert spec.self_phase(("output", 9), 10) is Phase.OWN
    assert spec.cross_phase(("output", 9), 9) is Phase.LAYOUT and spec.cross_phase(("output", 9), 10) is Phase.OWN
    assert not spec.blends(("output", 6), 29) and spec.blends(("output", 6), 30)


def test_parse_layers():
    assert parse_layers("output 6-11").blocks == frozenset(("output", i) for i in range(6, 12))
    assert parse_layers(" input 4-5, middle 0 ").blocks == frozenset({("input", 4), ("input", 5), ("middle", 0)})
    assert ("input", 99) in parse_layers("all")
    for bad in ("decoder", "output 9-6", "", "output six"):
        with pytest.raises(ValueError):
            parse_layers(bad)


@pytest.mark.parametrize("halves,batch,n_src", [((1, 0), 2, 1), ((0,), 3, 3)])
@pytest.mark.parametrize("phase", [Phase.LAYOUT, Phase.REFERENCE])
def test_records_stand_in_for_absent_source_rows(halves, batch, n_src, phase):
    """A call whose source rows are replaced by what an earlier call recorded gives the same targets."""
    from comfyui_layout_retouch.attention.sources import StepSources
    from comfyui_layout_retouch.records import AttentionRecord

    layer = ("output", 7, 0)
    full = RowLayout(halves, batch, n_src, n_src, 12)
    q, k, v = tensors(full)
    mask = torch.rand(full.n_target, TOKENS, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mask = None if phase is Phase.LAYOUT else mask
    records = {"layout": AttentionRecord(), "reference": AttentionRecord()}
    want = swap_self_attention(q, k, v, full, phase, attend, mask, layer, StepSources(full, {}, records))
    want_cross = swap_cross_attention(q, k, v, full, phase, attend, layer, StepSources(full, {}, records))
    assert all(r.tensors for r in records.values()) or phase is Phase.LAYOUT

    bare = RowLayout(halves, batch, 0, 0, 12)
    t = full.target_index()
    got = swap_self_attention(q[t], k[t], v[t], bare, phase, attend, mask, layer, StepSources(bare, records, {}))
    assert torch.equal(got, want[t])
    if phase is Phase.LAYOUT:
        got = swap_cross_attention(q[t], k[t], v[t], bare, phase, attend, layer, StepSources(bare, records, {}))
        assert torch.equal(got, want_cross[t])
