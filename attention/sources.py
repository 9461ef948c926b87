"""Where the target rows of one UNet call read the sources' attention: rows in the call, or records.

Per step and swapped layer, the target rows read three things from the source rows: the
layout's self-attention output (copied in the layout phase, blended under the mask), the
layout's cross-attention output (copied in the layout phase) and the reference's self-attention
keys and values (reference phase). When the sources follow their recorded inversions, their
latents and prompts do not depend on the target, so these tensors are the same in every run and
an :class:`~..records.AttentionRecord` can stand in for a path's rows:

- Reference cache: a retouch run fills a record as its reference rows run and leaves it on the
  reference inversion, under a key of the model, the reference prompts and the layers
  (:func:`~..records.model_key`). The next generation with the same reference runs no reference rows.
- Fast mode: the DDIM inversion pass records them itself (at the inversion's own prompt), so
  the retouch runs no source rows at all. An inversion at cfg 1 evaluates the conditional half
  only; it then stands in for the unconditional half too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..records import AttentionRecord, Layer
from .rows import RowLayout


@dataclass
class StepSources:
    """Where the target rows of one UNet call read each source path's attention: from that
    path's rows in the call (kept into ``write`` when given) or, when the path has no rows in
    the call, from ``read``."""

    rows: RowLayout
    read: dict[str, AttentionRecord] = field(default_factory=dict)
    write: dict[str, AttentionRecord] = field(default_factory=dict)
    project: Callable[[Layer, str, torch.Tensor], torch.Tensor] | None = None  # keys/values from a kept input

    def for_targets(self, path: str, layer: Layer, kind: str, computed: torch.Tensor | None,
                    like: torch.Tensor, project: Callable[[Layer, str, torch.Tensor], torch.Tensor] | None = None,
                    keep: bool = True) -> torch.Tensor:
        """``[n_target, tokens, inner]``: each target row's source tensor of ``path``: the layout row
        paired with it, or all reference rows of its half joined along the tokens (``M * tokens``).

        Args:
            computed: the path's rows' tensor in this call (``len(halves) * n`` rows), or None
                when the path has no rows here.
            project: the projection of this call (else the session's), for kinds kept as their input.
            keep: write ``computed`` to the path's record (False where the caller keeps its input instead).
        """
        halves, step = self.rows.halves, self.rows.step
        if computed is None:
            record, project = self.read[path], project or self.project
            computed = torch.cat([record.get(step, half, layer, kind, self._project(project, like),
                                             like.device).to(like.dtype) for half in halves])
        elif keep:
            self.put(path, layer, kind, computed)
        if path == "reference":
            return self.rows.joined_for_targets(computed)
        return computed[self.rows.pair(computed.shape[0] // len(halves)).to(computed.device, non_blocking=True)]

    def writes(self, path: str) -> bool:
        return path in self.write

    def put(self, path: str, layer: Layer, kind: str, computed: torch.Tensor) -> None:
        """Keep the path's rows' ``computed`` (``len(halves) * n`` rows) in its record, half by half, if it has one."""
        if path not in self.write:
            return
        halves = self.rows.halves
        n = computed.shape[0] // len(halves)
        for h, half in enumerate(halves):
            self.write[path].put(self.rows.step, half, layer, kind, computed[h * n:(h + 1) * n])

    @staticmethod
    def _project(project, like: torch.Tensor):
        """The projection, run where and in the dtype the call computes (as the rows would)."""
        if project is None:
            return None
        return lambda layer, kind, tensor: project(layer, kind, tensor.to(like.device, like.dtype))
