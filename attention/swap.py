"""Multi-source attention swap (L&R Sec. 3.2.2, Alg. 1; the swap itself after MasaCtrl).

The swap's phases and what it reads from the sources (:class:`SwapSpec`, :class:`SourceNeeds`), for every family,
and its math on separate self- and cross-attention (a UNet's; joint attention's is :mod:`.joint`'s). Per
denoising step ``s`` and swapped layer, for the target rows of a call:

- ``s < lambda2`` (layout phase): self- and cross-attention take the layout path's Q, K, V,
  so the target's attention output *is* the layout's: it is copied, not computed.
- ``s >= lambda2`` (reference phase): self-attention takes the target's own Q with the
  reference path's K, V; cross-attention is the target's own.
- ``s >= mask_start``: the target's self-attention output is blended with the layout's,
  ``phi* = M * phi_t + (1 - M) * phi_o``, with ``M`` resized to the layer's resolution. The
  blend is applied before ``to_out``, which is affine, so it equals the blend after it.

Source rows always attend to themselves. Attention runs through ComfyUI's
``optimized_attention`` (SDPA, xformers or sub-quadratic, as ComfyUI chose), or through the
patch another node had put on the key (the UNet's ``SwapAttention`` says where that one runs). What the target
reads from a source path comes from that path's rows in the call, or from a record when the
path has no rows in it (:class:`~.sources.StepSources`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F

from ..records import CROSS_OUT, KEYS, SELF_OUT, VALUES, Layer, Need
from .attend import Attend
from .layer_set import LayerSet
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


# A group of rows attending to themselves as the key computes without the swap: ComfyUI's
# attention, or the patch that was on the key (chained), told the group's own row layout.
Own = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, RowLayout], torch.Tensor]


def _plain(attend: Attend) -> Own:
    return lambda q, k, v, group: attend(q, k, v)


def layout_of_sources(out_sources: torch.Tensor | None, rows: RowLayout) -> torch.Tensor | None:
    """The layout rows' outputs, half by half, from the source rows' outputs."""
    if out_sources is None or not rows.n_layout:
        return None
    return out_sources[rows.sources().layout_index().to(out_sources.device, non_blocking=True)]


def _sources_attend_themselves(q, k, v, rows: RowLayout, own: Own) -> torch.Tensor | None:
    src = rows.sources_index().to(q.device, non_blocking=True)
    return own(q[src], k[src], v[src], rows.sources()) if len(src) else None


def _groups_attend_themselves(q, k, v, rows: RowLayout, own: Own) -> torch.Tensor:
    """Every row attends to itself through a chained patch, called for the sources, then for the
    targets (a patch that keeps what it saw, as Self-Attention Guidance does, keeps the targets')."""
    out_sources = _sources_attend_themselves(q, k, v, rows, own)
    t = rows.target_index().to(q.device, non_blocking=True)
    return rows.assemble(own(q[t], k[t], v[t], rows.targets()), out_sources)


def swap_self_attention(q, k, v, rows: RowLayout, phase: Phase, attend: Attend, mask: torch.Tensor | None = None,
                        layer: Layer | None = None, sources: StepSources | None = None,
                        own: Own | None = None) -> torch.Tensor:
    """Self-attention for one call's rows with the target rows swapped per ``phase``.

    Args:
        q, k, v: ``[rows.total, tokens, inner]``, projected.
        attend: ComfyUI's attention, for the target's queries on the references' keys and values.
        mask: ``[n_target, tokens, 1]`` blend weights for the target (1 keeps the target), or None.
        layer, sources: the layer's key and where a path without rows in the call is read from.
        own: how a group of rows attends to itself (default: ``attend``; a chained patch).
    """
    if phase is Phase.OWN and mask is None:
        return attend(q, k, v) if own is None else _groups_attend_themselves(q, k, v, rows, own)
    own = own or _plain(attend)
    sources = sources or StepSources(rows)
    out_sources = _sources_attend_themselves(q, k, v, rows, own)
    layout = None
    if phase is Phase.LAYOUT or mask is not None:
        layout = sources.for_targets("layout", layer, SELF_OUT, layout_of_sources(out_sources, rows), q)
    t = rows.target_index().to(q.device, non_blocking=True)
    if phase is Phase.LAYOUT:
        out_target = layout
    elif phase is Phase.REFERENCE:
        ref = rows.reference_index().to(q.device, non_blocking=True)
        present = rows.n_reference > 0
        k_ref = sources.for_targets("reference", layer, KEYS, k[ref] if present else None, k)
        v_ref = sources.for_targets("reference", layer, VALUES, v[ref] if present else None, v)
        out_target = attend(q[t], k_ref, v_ref)
    else:
        out_target = own(q[t], k[t], v[t], rows.targets())
    if mask is not None and phase is not Phase.LAYOUT:
        out_target = mask * out_target + (1 - mask) * layout
    return rows.assemble(out_target, out_sources)


def swap_cross_attention(q, k, v, rows: RowLayout, phase: Phase, attend: Attend, layer: Layer | None = None,
                         sources: StepSources | None = None, own: Own | None = None) -> torch.Tensor:
    """Cross-attention with the target rows taking the layout's output in the layout phase."""
    if phase is not Phase.LAYOUT:
        return attend(q, k, v) if own is None else _groups_attend_themselves(q, k, v, rows, own)
    own = own or _plain(attend)
    sources = sources or StepSources(rows)
    out_sources = _sources_attend_themselves(q, k, v, rows, own)
    layout = sources.for_targets("layout", layer, CROSS_OUT, layout_of_sources(out_sources, rows), q)
    return rows.assemble(layout, out_sources)


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
    layout_reads: tuple[str, ...] = (SELF_OUT,)  # what the layout phase reads of the layout (the family's)

    def of(self, path: str, step: int) -> frozenset[Need]:
        needs = set()
        for layer in self.self_layers:
            phase = self.spec.self_phase(layer[:2], step)
            if path == "layout" and phase is Phase.LAYOUT:
                needs.update((layer, kind) for kind in self.layout_reads)
            if path == "layout" and self.masked and self.spec.blends(layer[:2], step):
                needs.add((layer, SELF_OUT))
            if path == "reference" and phase is Phase.REFERENCE:
                needs.update({(layer, KEYS), (layer, VALUES)})
        if path == "layout":
            needs.update((layer, CROSS_OUT) for layer in self.cross_layers
                         if self.spec.cross_phase(layer[:2], step) is Phase.LAYOUT)
        return frozenset(needs)
