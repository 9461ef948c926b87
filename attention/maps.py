"""Cross-attention maps, as every family's capture keeps them: the store, the conditional rows of a call, and
head-averaged attention probabilities (MasaCtrl's and DreamMatcher's cross-attention maps).

Probabilities ``softmax(Q K^T / sqrt(d))`` are computed for the positive (conditional) target rows only,
averaged over heads and summed over the steps in range, per layer: ``[B, h*w, tokens]`` each, never a
self-attention map. Optionally a UNet's self-attention keys and values of those rows are kept per layer and
step, offloaded to ComfyUI's intermediate device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import public
from .attend import ROWS_KEY


@public
class NothingRecorded(LookupError):
    """A store holds no cross-attention for what was asked."""


@dataclass
class AttentionStore:
    """What an Attention Capture patch recorded in the latest sampler run (reset at each run).

    Attributes:
        maps: per layer ``(block_name, block_id, block_index)``: the head-averaged cross-attention
            probabilities of the conditional target rows, ``[B, h*w, tokens]``, summed over steps.
        counts: per layer, how many steps were summed into ``maps``.
        sizes: per layer, the ``(h, w)`` of its tokens.
        kv: per ``(layer, step)``: self-attention ``(K, V)`` ``[B, h*w, inner]``, when asked for.
        latent_size: the ``(H, W)`` of the latent sampled, for resizing to the image.
    """

    maps: dict[tuple, torch.Tensor] = field(default_factory=dict)
    counts: dict[tuple, int] = field(default_factory=dict)
    sizes: dict[tuple, tuple[int, int]] = field(default_factory=dict)
    kv: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    latent_size: tuple[int, int] | None = None

    def clear(self) -> None:
        self.maps.clear()
        self.counts.clear()
        self.sizes.clear()
        self.kv.clear()
        self.latent_size = None

    def add_cross(self, layer: tuple, step: int, size: tuple[int, int], probs: torch.Tensor) -> None:
        self.sizes[layer] = size
        self.maps[layer] = probs if layer not in self.maps else self.maps[layer] + probs
        self.counts[layer] = self.counts.get(layer, 0) + 1

    def average(self, positions: list[int], layers: list[tuple] | None = None) -> torch.Tensor:
        """The mean map of the summed token ``positions`` over ``layers`` (default: all) at the
        finest recorded size among them, ``[B, h, w]``."""
        layers = [k for k in (layers or self.maps) if self.counts.get(k)]
        if not layers:
            raise NothingRecorded("no cross-attention was recorded")
        h, w = max((self.sizes[k] for k in layers), key=lambda s: s[0] * s[1])
        total = None
        for k in layers:
            lh, lw = self.sizes[k]
            m = self.maps[k][:, :, positions].sum(-1) / self.counts[k]
            m = m.reshape(-1, 1, lh, lw)
            if (lh, lw) != (h, w):
                m = torch.nn.functional.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
            total = m if total is None else total + m
        return (total / len(layers))[:, 0]


def conditional_rows(extra_options: dict, rows_total: int) -> torch.Tensor:
    """Indices of the positive-prompt target rows of a call (none in a swap's call of source rows only)."""
    halves = list(extra_options.get("cond_or_uncond", [0]))
    swap_rows = extra_options.get(ROWS_KEY)
    per_half = swap_rows.per_half if swap_rows is not None else rows_total // len(halves)
    batch = swap_rows.batch if swap_rows is not None else per_half
    picked = [h * per_half + b for h, half in enumerate(halves) if half == 0 for b in range(batch)]
    return torch.tensor(picked, dtype=torch.long)


def cross_attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """Head-averaged ``softmax(Q K^T / sqrt(d))``: ``[rows, tokens_q, tokens_k]``."""
    b, n, inner = q.shape
    d = inner // heads
    dtype = torch.promote_types(q.dtype, torch.float32)  # float32 at least (float64 stays)
    qh = q.reshape(b, n, heads, d).transpose(1, 2).to(dtype)
    kh = k.reshape(b, k.shape[1], heads, d).transpose(1, 2).to(dtype)
    return torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1).mean(1)
