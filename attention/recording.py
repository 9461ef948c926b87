"""Recording what a swap reads from a source while that source is inverted (the fast mode).

DDIM inversion evaluates the model at the same latents and sigmas that the swap's source rows
would be evaluated at later (the recorded path), except for the schedule's top sigma, which the
inversion reaches but never evaluates: the inversion evaluates it once more when
recording. Each evaluation keeps, per swapped layer and CFG half it ran, what is asked of it
among: the self-attention's output, its input (after the block's norm: the keys and values
are its projections, recomputed with the layer's own ``to_k``/``to_v`` when the swap reads them,
for half the memory of keeping both) and the cross-attention's output.

These are the UNet's recording patches; the model's family installs them (``install_recording``), and
Flux records its blocks' attention input and output with :class:`.dit.JointRecord`.
"""

from __future__ import annotations

import torch

from ..records import (
    CROSS_OUT,
    KEYS,
    KINDS,
    SELF_IN,
    SELF_OUT,
    SELF_VALUE_IN,
    VALUES,
    AttentionRecord,
    Layer,
    StepOfCall,
    SubjectMapRecord,
)
from .attend import attend_as_before
from .capture import add_map_capture
from .family import family_of
from .layers import LayerSet, map_layers


class RecordSourceAttention:
    """An ``attn1`` (self) or ``attn2`` (cross) replace patch that attends as usual and records."""

    def __init__(self, kind: str, record: AttentionRecord, sampling_sigmas: torch.Tensor, chained=None,
                 kinds: tuple[str, ...] = KINDS) -> None:
        self.kind = kind
        self.record = record
        self.kinds = kinds
        self.step_of = StepOfCall(sampling_sigmas[:-1])  # step s starts at sampling_sigmas[s]
        self.chained = chained

    def __call__(self, q, k, v, extra_options):
        out = attend_as_before(self.chained, q, k, v, extra_options)
        step = self.step_of(extra_options["sigmas"])
        if step is None:  # the inversion's first evaluation, near sigma 0: no sampling step starts there
            return out
        layer = (*extra_options["block"], extra_options["block_index"])
        halves = list(extra_options["cond_or_uncond"])
        n = q.shape[0] // len(halves)
        kept = {SELF_OUT: out, KEYS: k, VALUES: v} if self.kind == "self" else {CROSS_OUT: out}
        for h, half in enumerate(halves):
            for kind, tensor in kept.items():
                if kind in self.kinds:
                    self.record.put(step, half, layer, kind, tensor[h * n:(h + 1) * n])
        return out


class RecordSelfInput:
    """An ``attn1_patch`` (run on every block before the self-attention's projections) that records
    the input its keys are projected from, and its values' where they differ (another pack's
    ``attn1_patch`` before it), on ``layers``. It changes nothing."""

    def __init__(self, record: AttentionRecord, sampling_sigmas: torch.Tensor, layers: set[Layer]) -> None:
        self.record = record
        self.step_of = StepOfCall(sampling_sigmas[:-1])
        self.layers = layers

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        layer = (*extra_options["block"], extra_options["block_index"])
        step = self.step_of(extra_options["sigmas"]) if layer in self.layers else None
        if step is not None:
            halves = list(extra_options["cond_or_uncond"])
            rows = n.shape[0] // len(halves)
            kept = {SELF_IN: context_attn1} if value_attn1 is context_attn1 else \
                {SELF_IN: context_attn1, SELF_VALUE_IN: value_attn1}
            for h, half in enumerate(halves):
                for kind, tensor in kept.items():
                    self.record.put(step, half, layer, kind, tensor[h * rows:(h + 1) * rows])
        return n, context_attn1, value_attn1


def add_recording(model, record: AttentionRecord, sampling_sigmas: torch.Tensor, layers: LayerSet,
                  paths: tuple[str, ...] = ("layout", "reference"), maps: SubjectMapRecord | None = None):
    """A clone of ``model`` recording what a swap reads from this source as each of ``paths`` (the kinds of the
    model's family, its ``record_kinds``) into ``record`` on ``layers``, at the sampling steps that start at
    ``sampling_sigmas``; patches on the keys are chained. With ``maps``, it also adds the subject map (a UNet's
    decoder cross-attention at latent size / ``maps.resolution``, Flux's double blocks) to it, per step (what a
    Cross-Attention Mask on this path reads). Bound to its layers, paths and maps, it is the ``recorder`` that
    ``sampling/`` takes from its caller."""
    # One clone, patched last: a later clone would deep-copy the patches set before it, records and all.
    m = model.clone() if maps is None else add_map_capture(model, maps, map_layers(model), None, maps.resolution,
                                                           sampling_sigmas)
    family = family_of(model)
    kinds = tuple(dict.fromkeys(kind for path in paths for kind in family.record_kinds[path]))
    family.install_recording(m, record, sampling_sigmas, layers, kinds)
    return m
