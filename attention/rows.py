"""Where each path's rows sit in one UNet call of the retouch stage.

A stock sampler calls the UNet with one block of ``B`` target rows per CFG half in
``cond_or_uncond`` (0 = positive, 1 = negative; both halves in one call, or one per call).
The swap appends to each half's block the layout path's ``L`` rows and the reference path's
``R`` rows of that half:

    [target, layout, reference of half 0 | target, layout, reference of half 1]

so the call keeps ComfyUI's own convention, one block of equal size per entry of
``cond_or_uncond``, and a patch of another pack that splits a call by that list (IPAdapter's
attention patches do) still gives every row its own half. Each target row reads the sources'
rows of its half: the layout row paired with it (``L`` is 1, shared, or ``B``, one per target),
and the reference rows all together (``R = M`` reference images of one subject, their keys and
values joined along the tokens, as the paper's ``{I_r^m}`` and multi-reference KV methods do).
A path whose attention the target does not read at a step, or reads from a record
(:mod:`.sources`), has no rows in that step's calls (``n_layout`` or ``n_reference`` is 0 there).
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
    def per_half(self) -> int:
        return self.batch + self.n_layout + self.n_reference

    @property
    def n_target(self) -> int:
        return len(self.halves) * self.batch

    @property
    def total(self) -> int:
        return len(self.halves) * self.per_half

    def _rows(self, start: int, count: int) -> torch.Tensor:
        """Rows ``start .. start + count`` of every half's block, half by half."""
        return torch.tensor([h * self.per_half + start + i for h in range(len(self.halves)) for i in range(count)],
                            dtype=torch.long)

    def target_index(self) -> torch.Tensor:
        """The target rows, half by half (the order of the sampler's own batch)."""
        return self._rows(0, self.batch)

    def layout_index(self) -> torch.Tensor:
        """The layout rows, half by half."""
        return self._rows(self.batch, self.n_layout)

    def reference_index(self) -> torch.Tensor:
        """The reference rows, half by half."""
        return self._rows(self.batch + self.n_layout, self.n_reference)

    def sources_index(self) -> torch.Tensor:
        """The source rows (layout, then reference, per half), half by half: themselves a batch
        of one equal block per half."""
        return self._rows(self.batch, self.n_layout + self.n_reference)

    def sources(self) -> RowLayout:
        """The layout of the source rows alone (no targets), as :meth:`sources_index` orders them."""
        return RowLayout(self.halves, 0, self.n_layout, self.n_reference, self.step)

    def targets(self) -> RowLayout:
        """The layout of the target rows alone."""
        return RowLayout(self.halves, self.batch, 0, 0, self.step)

    def layout_for_targets(self) -> torch.Tensor:
        """For each target row, the index of the layout row it reads (same half)."""
        return torch.tensor([h * self.per_half + self.batch + (b if self.n_layout == self.batch else 0)
                             for h in range(len(self.halves)) for b in range(self.batch)], dtype=torch.long)

    def pair(self, per_half: int) -> torch.Tensor:
        """For each target row, the index of its source row among ``len(halves) * per_half`` rows
        of one path (one block per half, half by half)."""
        return torch.tensor([h * per_half + (b if per_half == self.batch else 0)
                             for h in range(len(self.halves)) for b in range(self.batch)], dtype=torch.long)

    def joined_for_targets(self, tensor: torch.Tensor) -> torch.Tensor:
        """``[len(halves) * M, tokens, inner]`` (one block of ``M`` rows per half) to
        ``[n_target, M * tokens, inner]``: each target row gets all ``M`` rows of its half, joined
        along the tokens in row order (attention over the joined keys does not depend on that order)."""
        per_half = tensor.shape[0] // len(self.halves)
        joined = [tensor[h * per_half:(h + 1) * per_half].flatten(0, 1)[None].expand(self.batch, -1, -1)
                  for h in range(len(self.halves))]
        return torch.cat(joined)

    def assemble(self, target: torch.Tensor, sources: torch.Tensor | None) -> torch.Tensor:
        """One call's rows from the target rows and the source rows (in :meth:`sources_index` order)."""
        if sources is None or sources.shape[0] == 0:
            return target
        out = target.new_empty((self.total, *target.shape[1:]))
        out[self.target_index().to(target.device, non_blocking=True)] = target
        out[self.sources_index().to(target.device, non_blocking=True)] = sources.to(target.dtype)
        return out
