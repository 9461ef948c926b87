"""Multi-source attention swap (L&R Sec. 3.2.2, Alg. 1; the swap itself after MasaCtrl).

Per denoising step ``s`` and swapped layer, for the target rows of a UNet call:

- ``s < lambda2`` (layout phase): self- and cross-attention take the layout path's Q, K, V,
  so the target's attention output *is* the layout's: it is copied, not computed.
- ``s >= lambda2`` (reference phase): self-attention takes the target's own Q with the
  reference path's K, V; cross-attention is the target's own.
- ``s >= mask_start``: the target's self-attention output is blended with the layout's,
  ``phi* = M * phi_t + (1 - M) * phi_o``, with ``M`` resized to the layer's resolution. The
  blend is applied before ``to_out``, which is affine, so it equals the blend after it.

Source rows always attend to themselves. Attention runs through ComfyUI's
``optimized_attention`` (SDPA, xformers or sub-quadratic, as ComfyUI chose). What the target
reads from a source path comes from that path's rows in the call, or from a record when the
path has no rows in it (:class:`~.sources.StepSources`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F

from ..records import CROSS_OUT, KEYS, SELF_OUT, VALUES, Layer, Need
from .attend import ROWS_KEY, SOURCES_KEY, Attend, host_attention
from .layers import LayerSet
from .rows import RowLayout
from .sources import StepSources


class Phase(Enum):
    OWN = "own"  # the target attends as usual
    LAYOUT = "layout"  # the target takes the layout's Q, K, V: its output is the layout's
    REFERENCE = "reference"  # the target's Q with the reference's K, V (self-attention only)


def mask_tokens(mask: torch.Tensor, rows: RowLayout, size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """Resize a MASK ``[Bm, H, W]`` (Bm = 1 or B) to ``[n_target, h * w, 1]`` for the target rows."""
    m = F.interpolate(mask[:, None].to(like.device, like.dtype), size=size, mode="bilinear", align_corners=False)
    m = m.flatten(2).transpose(1, 2)  # [Bm, h*w, 1]
    m = m.expand(rows.batch, -1, -1) if m.shape[0] == 1 else m
    return m.repeat(len(rows.halves), 1, 1)


def swap_self_attention(q, k, v, rows: RowLayout, phase: Phase, attend: Attend, mask: torch.Tensor | None = None,
                        layer: Layer | None = None, sources: StepSources | None = None) -> torch.Tensor:
    """Self-attention for one call's rows with the target rows swapped per ``phase``.

    Args:
        q, k, v: ``[rows.total, tokens, inner]``, projected.
        mask: ``[n_target, tokens, 1]`` blend weights for the target (1 keeps the target), or None.
        layer, sources: the layer's key and where a path without rows in the call is read from.
    """
    if phase is Phase.OWN and mask is None:
        return attend(q, k, v)
    sources = sources or StepSources(rows)
    src = rows.sources()
    out_sources = attend(q[src], k[src], v[src]) if q[src].shape[0] else q[src]
    layout = None
    if phase is Phase.LAYOUT or mask is not None:
        computed = out_sources[:len(rows.halves) * rows.n_layout] if rows.n_layout else None
        layout = sources.for_targets("layout", layer, SELF_OUT, computed, q)
    if phase is Phase.LAYOUT:
        out_target = layout
    elif phase is Phase.REFERENCE:
        ref = rows.reference_rows()
        present = rows.n_reference > 0
        k_ref = sources.for_targets("reference", layer, KEYS, k[ref] if present else None, k)
        v_ref = sources.for_targets("reference", layer, VALUES, v[ref] if present else None, v)
        out_target = attend(q[rows.target()], k_ref, v_ref)
    else:
        t = rows.target()
        out_target = attend(q[t], k[t], v[t])
    if mask is not None and phase is not Phase.LAYOUT:
        out_target = mask * out_target + (1 - mask) * layout
    return torch.cat([out_target, out_sources])


def swap_cross_attention(q, k, v, rows: RowLayout, phase: Phase, attend: Attend, layer: Layer | None = None,
                         sources: StepSources | None = None) -> torch.Tensor:
    """Cross-attention with the target rows taking the layout's output in the layout phase."""
    if phase is not Phase.LAYOUT:
        return attend(q, k, v)
    sources = sources or StepSources(rows)
    src = rows.sources()
    out_sources = attend(q[src], k[src], v[src]) if q[src].shape[0] else q[src]
    computed = out_sources[:len(rows.halves) * rows.n_layout] if rows.n_layout else None
    return torch.cat([sources.for_targets("layout", layer, CROSS_OUT, computed, q), out_sources])


@dataclass(frozen=True)
class SwapSpec:
    """When and where the swap acts (steps in denoising order, 0 = noisiest)."""

    lambda2: int
    mask_start: int
    layout_layers: LayerSet
    reference_layers: LayerSet

    def self_phase(self, block: tuple[str, int], step: int) -> Phase:
        if step < self.lambda2:
            return Phase.LAYOUT if block in self.layout_layers else Phase.OWN
        return Phase.REFERENCE if block in self.reference_layers else Phase.OWN

    def cross_phase(self, block: tuple[str, int], step: int) -> Phase:
        return Phase.LAYOUT if step < self.lambda2 and block in self.layout_layers else Phase.OWN

    def blends(self, block: tuple[str, int], step: int) -> bool:
        return step >= self.mask_start and block in self.reference_layers


@dataclass(frozen=True)
class SourceNeeds:
    """What the target rows read from each source path at a step: ``(layer, kind)`` pairs."""

    spec: SwapSpec
    self_layers: tuple[Layer, ...]
    cross_layers: tuple[Layer, ...]
    masked: bool

    def of(self, path: str, step: int) -> frozenset[Need]:
        needs = set()
        for layer in self.self_layers:
            phase = self.spec.self_phase(layer[:2], step)
            if path == "layout" and (phase is Phase.LAYOUT or (self.masked and self.spec.blends(layer[:2], step))):
                needs.add((layer, SELF_OUT))
            if path == "reference" and phase is Phase.REFERENCE:
                needs.update({(layer, KEYS), (layer, VALUES)})
        if path == "layout":
            needs.update((layer, CROSS_OUT) for layer in self.cross_layers
                         if self.spec.cross_phase(layer[:2], step) is Phase.LAYOUT)
        return frozenset(needs)


class SwapAttention:
    """An ``attn1`` (self) or ``attn2`` (cross) replace patch; a plain attention outside a retouch run."""

    def __init__(self, kind: str, spec: SwapSpec, mask: torch.Tensor | None) -> None:
        self.kind = kind
        self.spec = spec
        self.mask = mask

    def to(self, device_or_dtype):
        if self.mask is not None:
            self.mask = self.mask.to(device_or_dtype)
        return self

    def __call__(self, q, k, v, extra_options):
        attend = host_attention(extra_options["n_heads"], extra_options.get("attn_precision"))
        rows: RowLayout | None = extra_options.get(ROWS_KEY)
        if rows is None:
            return attend(q, k, v)
        block = extra_options["block"]
        layer, sources = (*block, extra_options.get("block_index", 0)), extra_options.get(SOURCES_KEY)
        if self.kind == "cross":
            return swap_cross_attention(q, k, v, rows, self.spec.cross_phase(block, rows.step), attend, layer, sources)
        mask = None
        if self.mask is not None and self.spec.blends(block, rows.step):
            h, w = extra_options["activations_shape"][-2:]
            mask = mask_tokens(self.mask, rows, (h, w), q)
        return swap_self_attention(q, k, v, rows, self.spec.self_phase(block, rows.step), attend, mask, layer,
                                   sources)
