"""The sources' attention kept outside the UNet call: the reference cache and the fast mode.

Per step and swapped layer, the target rows read three things from the source rows: the
layout's self-attention output (copied in the layout phase, blended under the mask), the
layout's cross-attention output (copied in the layout phase) and the reference's self-attention
keys and values (reference phase). When the sources follow their recorded inversions, their
latents and prompts do not depend on the target, so these tensors are the same in every run.
An :class:`AttentionRecord` keeps them per ``(step, CFG half, layer, kind)``; a step whose needs
are all recorded runs without that path's rows.

- Reference cache: a retouch run fills a record as its reference rows run and leaves it on the
  reference inversion, under a key of the model, the reference prompts and the layers
  (:func:`model_key`). The next generation with the same reference runs no reference rows.
- Fast mode: the DDIM inversion pass records them itself (at the inversion's own prompt), so
  the retouch runs no source rows at all. An inversion at cfg 1 evaluates the conditional half
  only; it then stands in for the unconditional half too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .rows import RowLayout

SELF_OUT, CROSS_OUT, KEYS, VALUES = "self_out", "cross_out", "keys", "values"
KINDS = (SELF_OUT, CROSS_OUT, KEYS, VALUES)
Layer = tuple[str, int, int]  # (block name, block id, transformer index), as ComfyUI's patch keys
Need = tuple[Layer, str]


class AttentionRecord:
    """Attention tensors ``[rows, tokens, inner]`` of one source path per (step, half, layer, kind).

    Args:
        device: where tensors are kept (None: where they were computed).
        stand_in_half: read half 0 where half 1 was not recorded (an inversion at cfg 1).
    """

    def __init__(self, device: torch.device | str | None = None, stand_in_half: bool = False) -> None:
        self.device = device
        self.stand_in_half = stand_in_half
        self.tensors: dict[tuple[int, int, Layer, str], torch.Tensor] = {}

    def _key(self, step: int, half: int, layer: Layer, kind: str) -> tuple[int, int, Layer, str]:
        key = (step, half, layer, kind)
        if key not in self.tensors and self.stand_in_half and half != 0:
            return (step, 0, layer, kind)
        return key

    def put(self, step: int, half: int, layer: Layer, kind: str, tensor: torch.Tensor) -> None:
        self.tensors[(step, half, layer, kind)] = tensor.detach().to(self.device or tensor.device, copy=True)

    def get(self, step: int, half: int, layer: Layer, kind: str) -> torch.Tensor:
        return self.tensors[self._key(step, half, layer, kind)]

    def covers(self, step: int, halves: tuple[int, ...], needs: frozenset[Need]) -> bool:
        return all(self._key(step, half, layer, kind) in self.tensors for half in halves for layer, kind in needs)

    def layers(self) -> set[Layer]:
        return {key[2] for key in self.tensors}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


@dataclass
class KeyedRecord:
    """One record and the key it was made under; a different key starts it afresh.

    Lives on a reference inversion (:class:`~..sampling.trajectory.InversionTrajectory`), so it
    lasts as long as ComfyUI keeps that inversion in its node cache, and holds one key at a time.
    """

    key: tuple | None = None
    record: AttentionRecord | None = None

    def for_key(self, key: tuple, device) -> AttentionRecord:
        if self.record is None or not keys_equal(self.key, key) or self.record.device != device:
            self.key, self.record = key, AttentionRecord(device)
        return self.record


def keys_equal(a, b) -> bool:
    """Equality for cache keys: tensors by value, other objects by ``==``."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu()))
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(keys_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


class Same:
    """Compares equal only to the very same object (held, so its id cannot be reused)."""

    def __init__(self, obj) -> None:
        self.obj = obj

    def __eq__(self, other) -> bool:
        return isinstance(other, Same) and other.obj is self.obj

    def __deepcopy__(self, memo) -> Same:
        return self  # ModelPatcher.clone() deep-copies model_options, where keys travel


def _options_key(value, skip: str):
    """A key of a model_options value: dicts and lists by content, anything else by identity."""
    if isinstance(value, dict):
        return tuple(sorted(((repr(k), _options_key(v, skip)) for k, v in value.items() if k != skip),
                            key=lambda kv: kv[0]))
    if isinstance(value, (list, tuple)):
        return tuple(_options_key(v, skip) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return value
    return Same(value)


def model_key(model, skip: str) -> tuple:
    """What the source rows' attention depends on in a ModelPatcher: its weights (the diffusion
    model object, its weight patches and object patches) and its options (patches, wrappers),
    leaving out the entries named ``skip`` (the swap's own)."""
    import weakref

    base = model.model
    return (
        weakref.ref(base), model.patches_uuid, _options_key(dict(model.object_patches), skip),
        _options_key(model.model_options, skip), str(base.get_dtype()), str(getattr(base, "manual_cast_dtype", None)),
    )


@dataclass
class StepSources:
    """Where the target rows of one UNet call read each source path's attention: from that
    path's rows in the call (kept into ``write`` when given) or, when the path has no rows in
    the call, from ``read``."""

    rows: RowLayout
    read: dict[str, AttentionRecord] = field(default_factory=dict)
    write: dict[str, AttentionRecord] = field(default_factory=dict)

    def for_targets(self, path: str, layer: Layer, kind: str, computed: torch.Tensor | None,
                    like: torch.Tensor) -> torch.Tensor:
        """``[n_target, tokens, inner]``: each target row's source tensor of ``path``.

        Args:
            computed: the path's rows' tensor in this call (``len(halves) * n`` rows), or None
                when the path has no rows here.
        """
        halves, step = self.rows.halves, self.rows.step
        if computed is None:
            record = self.read[path]
            computed = torch.cat([record.get(step, half, layer, kind) for half in halves]).to(like.device, like.dtype)
        elif path in self.write:
            n = computed.shape[0] // len(halves)
            for h, half in enumerate(halves):
                self.write[path].put(step, half, layer, kind, computed[h * n:(h + 1) * n])
        return computed[self.rows.pair(computed.shape[0] // len(halves))]
