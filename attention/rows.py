"""Where each path's rows sit in one UNet call of the retouch stage.

A stock sampler calls the UNet with one chunk of ``B`` target rows per CFG half in
``cond_or_uncond`` (0 = positive, 1 = negative; both halves in one call, or one per call).
The swap appends, per half, the layout path's ``L`` rows and the reference path's ``R`` rows:

    [target half 0 | target half 1 | layout half 0 | layout half 1 | reference half 0 | reference half 1]

so each target half reads the sources' rows of the same half: the layout row paired with it
(``L`` is 1, shared, or ``B``, one per target), and the reference rows all together (``R = M``
reference images of one subject, their keys and values joined along the tokens, as the paper's
``{I_r^m}`` and multi-reference KV methods do). A path whose attention the target does not read at a step, or reads from a record (:mod:`.sources`), has no rows in that
step's calls (``n_layout`` or ``n_reference`` is 0 there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowLayout:
    """Row positions of one UNet call, and the denoising step it belongs to.

    Attributes:
        halves: the call's ``cond_or_uncond`` list.
        batch: target rows per half (``B``).
        n_layout: layout rows per half in this call (1, shared by all targets, or ``B``, one
            each; 0 when the path does not run in this call).
        n_reference: reference rows per half (``M``, every one read by every target; 0 when the
            path does not run in this call).
        step: the denoising step, from the sigma's place in the inversions' schedule.
    """

    halves: tuple[int, ...]
    batch: int
    n_layout: int
    n_reference: int
    step: int

    @property
    def n_target(self) -> int:
        return len(self.halves) * self.batch

    @property
    def total(self) -> int:
        return len(self.halves) * (self.batch + self.n_layout + self.n_reference)

    def target(self) -> slice:
        return slice(0, self.n_target)

    def sources(self) -> slice:
        return slice(self.n_target, self.total)

    def layout_for_targets(self) -> torch.Tensor:
        """For each target row, the index of the layout row it reads (same half)."""
        return self.pair(self.n_layout, self.n_target)

    def layout_rows(self) -> slice:
        start = self.n_target
        return slice(start, start + len(self.halves) * self.n_layout)

    def reference_rows(self) -> slice:
        start = self.n_target + len(self.halves) * self.n_layout
        return slice(start, self.total)

    def pair(self, per_half: int, start: int = 0) -> torch.Tensor:
        """For each target row, the index of its source row among ``len(halves) * per_half`` rows
        (one block per half, in call order) that begin at ``start``."""
        rows = []
        for h in range(len(self.halves)):
            for b in range(self.batch):
                rows.append(start + h * per_half + (b if per_half == self.batch else 0))
        return torch.tensor(rows, dtype=torch.long)

    def joined_for_targets(self, tensor: torch.Tensor) -> torch.Tensor:
        """``[len(halves) * M, tokens, inner]`` (one block of ``M`` rows per half) to
        ``[n_target, M * tokens, inner]``: each target row gets all ``M`` rows of its half, joined
        along the tokens in row order (attention over the joined keys does not depend on that order)."""
        per_half = tensor.shape[0] // len(self.halves)
        joined = [tensor[h * per_half:(h + 1) * per_half].flatten(0, 1)[None].expand(self.batch, -1, -1)
                  for h in range(len(self.halves))]
        return torch.cat(joined)
