"""Reading what Pick-and-Draw's losses need from one UNet pass: subject maps and dense features.

Per cross-attention layer ``l`` of the chosen sets, for the conditional rows of a call:
- the subject map: the head-averaged ``softmax(Q_l K_l^T / sqrt(d))`` (P&D eq. 2) summed over the
  subject's token positions, ``[B, h, w]``;
- the dense feature ``Psi_l``: the hidden states entering the cross-attention (after its
  LayerNorm), ``[B, h*w, D]``, the image features whose projection is ``Q_l``, so the mask
  ``M_l`` from ``A_l`` and the features it selects belong to one layer (P&D eq. 3).

The patches ride in a copy of the caller's ``model_options`` (nothing is set on a ModelPatcher):
an ``attn2`` replace patch per layer, chaining the patch already there, and one ``attn2_patch``
appended after the caller's. Both keep autograd's graph when the pass runs with gradients. After
the last layer that is needed the pass stops (:class:`StopForward`), so the rest of the UNet is
neither run nor differentiated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..attention.attend import attend_as_before
from ..attention.maps import conditional_rows, cross_attention_probs
from ..records import Layer

BLOCK_ORDER = ("input", "middle", "output")


class StopForward(Exception):
    """Raised by a probe after the last layer it reads: the rest of the UNet pass is skipped."""


def call_order(layer: Layer) -> tuple[int, int, int]:
    """A layer's position in a UNet pass (input blocks, middle, output blocks)."""
    return BLOCK_ORDER.index(layer[0]), int(layer[1]), int(layer[2])


@dataclass
class Probe:
    """What one pass read, and what it is to read.

    Attributes:
        positions: the subject's token positions in the prompt.
        map_layers: layers whose subject map is read.
        feature_layers: layers whose dense features are read.
        stop: stop the pass after the last layer read (a pass run only for what it reads).
        maps: per layer, the subject map ``[B, h, w]`` of the conditional rows.
        features: per layer, the dense features ``[B, h*w, D]`` of the conditional rows.
    """

    positions: list[int]
    map_layers: frozenset[Layer]
    feature_layers: frozenset[Layer] = frozenset()
    stop: bool = False
    maps: dict[Layer, torch.Tensor] = field(default_factory=dict)
    features: dict[Layer, torch.Tensor] = field(default_factory=dict)

    @property
    def last(self) -> Layer:
        return max(self.map_layers | self.feature_layers, key=call_order)

    def clear(self) -> None:
        self.maps.clear()
        self.features.clear()


def _layer(extra_options: dict) -> Layer:
    return (*extra_options["block"], extra_options["block_index"])


class ReadFeatures:
    """An ``attn2_patch``: keeps the conditional rows' hidden states at the probe's feature layers."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    def __call__(self, n, context_attn2, value_attn2, extra_options):
        layer = _layer(extra_options)
        if layer in self.probe.feature_layers:
            rows = conditional_rows(extra_options, n.shape[0]).to(n.device, non_blocking=True)
            if len(rows):
                self.probe.features[layer] = n[rows]
        return n, context_attn2, value_attn2


class ReadMap:
    """An ``attn2`` replace patch: attends as before, keeps the subject map, and stops the pass
    after the probe's last layer when asked."""

    def __init__(self, probe: Probe, chained=None) -> None:
        self.probe = probe
        self.chained = chained

    def __call__(self, q, k, v, extra_options):
        out = attend_as_before(self.chained, q, k, v, extra_options)
        probe, layer = self.probe, _layer(extra_options)
        rows = conditional_rows(extra_options, q.shape[0]).to(q.device, non_blocking=True)
        if len(rows) and (layer in probe.map_layers or layer in probe.feature_layers):
            h, w = extra_options["activations_shape"][-2:]
            probs = cross_attention_probs(q[rows], k[rows], extra_options["n_heads"])
            probe.maps[layer] = probs[:, :, probe.positions].sum(-1).reshape(-1, h, w)
            if probe.stop and layer == probe.last:
                raise StopForward
        return out


def probed_options(model_options: dict, probe: Probe) -> dict:
    """A copy of ``model_options`` (a guider's or a ModelPatcher's) whose passes fill ``probe``;
    the caller's dict and the patches in it are untouched, and chained."""
    import comfy.model_patcher

    options = comfy.model_patcher.create_model_options_clone(model_options)  # nested dicts and lists copied
    transformer = options.setdefault("transformer_options", {})
    attn2 = transformer.setdefault("patches_replace", {}).setdefault("attn2", {})
    for layer in probe.map_layers | probe.feature_layers:
        attn2[layer] = ReadMap(probe, attn2.get(layer, attn2.get(layer[:2])))
    if probe.feature_layers:
        transformer.setdefault("patches", {}).setdefault("attn2_patch", []).append(ReadFeatures(probe))
    return options


def conditional_pass(guider, x: torch.Tensor, sigma: torch.Tensor, model_options: dict, probe: Probe) -> None:
    """One UNet pass of ``guider``'s positive conditioning at ``x`` ``[B, C, H, W]`` and ``sigma``
    ``[B]``, reading ``probe`` (inside a sampler run, where ``guider`` has processed its conds).

    Runs through ComfyUI's ``calc_cond_batch``, so the model's patches and wrappers apply; only
    the conditional half is computed (P&D's guidance reads that half alone).
    """
    import comfy.samplers

    try:
        comfy.samplers.calc_cond_batch(guider.inner_model, [guider.conds["positive"]], x, sigma,
                                       probed_options(model_options, probe))
    except StopForward:
        pass
