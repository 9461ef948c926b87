"""The attention records: what a swap reads from a source path, per (step, CFG half, layer, kind), the subject
maps a stage-1 run keeps for a Cross-Attention Mask, and the reference cache's one keyed record."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .keys import keys_equal

SELF_OUT, CROSS_OUT, KEYS, VALUES = "self_out", "cross_out", "keys", "values"
# The self-attention's input (after its norm; keys and values are its projections), and the input of
# its values where another pack's attn1 patch made them differ: half the memory of keys and values.
SELF_IN, SELF_VALUE_IN = "self_in", "self_value_in"
KINDS = (SELF_OUT, CROSS_OUT, SELF_IN)  # what a recording inversion keeps by default
REFERENCE_KINDS = (SELF_IN,)  # what a swap reads from its reference path
LAYOUT_KINDS = (SELF_OUT, CROSS_OUT)  # what a swap reads from its layout path
PROJECTED = {KEYS: (SELF_IN,), VALUES: (SELF_VALUE_IN, SELF_IN)}  # stored inputs a kind is projected from
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
        self._kept: dict[tuple[int, int, Layer, str], torch.Tensor] = {}
        self._queued: dict[tuple[int, int, Layer, str], torch.Tensor] = {}  # one step's copies, not yet moved
        self._steps: dict[int, list[tuple[torch.Tensor, list]]] = {}  # per step: its flat buffers and their keys
        self._loaded: tuple = (None, None, {})  # (step, device, views): one step's tensors on a device

    @property
    def tensors(self) -> dict[tuple[int, int, Layer, str], torch.Tensor]:
        """Every kept tensor by ``(step, half, layer, kind)`` (queued copies moved first)."""
        self.settle()
        return self._kept

    def _key(self, step: int, half: int, layer: Layer, kind: str) -> tuple[int, int, Layer, str]:
        """Where ``kind`` is kept: itself, or the input it is projected from (keys and values), of
        ``half``, or of half 0 standing in."""
        for h in (half, 0) if self.stand_in_half and half != 0 else (half,):
            for stored in (kind, *PROJECTED.get(kind, ())):
                if (step, h, layer, stored) in self.tensors:
                    return (step, h, layer, stored)
        return (step, half, layer, kind)

    def put(self, step: int, half: int, layer: Layer, kind: str, tensor: torch.Tensor) -> None:
        """Keep a copy of ``tensor``.

        For a record kept elsewhere (a GPU's tensors in RAM) the copy waits on the computing device
        until the step ends and then moves with the rest of its step in one transfer
        (:meth:`settle`): a transfer per layer would make the CPU wait for the GPU at every layer,
        and the kernel launches of the sampler with it."""
        copy = tensor.detach().clone()  # the UNet may reuse the tensor once the layer is done
        if self.device is None:
            self._kept[(step, half, layer, kind)] = copy
            return
        if self._queued and next(iter(self._queued))[0] != step:
            self.settle()
        self._queued[(step, half, layer, kind)] = copy

    def settle(self) -> None:
        """Move the queued copies to ``device``: one flat buffer per dtype, one transfer each."""
        if not self._queued:
            return
        queued, self._queued = self._queued, {}
        groups: dict[torch.dtype, list] = {}
        for key, tensor in queued.items():
            groups.setdefault(tensor.dtype, []).append((key, tensor))
        for group in groups.values():
            flat = torch.cat([t.reshape(-1) for _, t in group]).to(self.device)
            shapes = [(key, t.shape) for key, t in group]
            self._steps.setdefault(group[0][0][0], []).append((flat, shapes))
            self._kept.update(_views(flat, shapes))

    def get(self, step: int, half: int, layer: Layer, kind: str,
            project: Callable[[Layer, str, torch.Tensor], torch.Tensor] | None = None,
            device: torch.device | None = None) -> torch.Tensor:
        """The tensor of ``kind``; keys and values kept as the self-attention's input are projected
        with ``project(layer, kind, input)`` (the layer's own ``to_k``/``to_v``). With ``device``,
        the tensor there: the step's tensors move there together, in one transfer per buffer."""
        key = self._key(step, half, layer, kind)
        tensor = self.tensors[key] if device is None else self._on(device, step)[key]
        if key[3] == kind:
            return tensor
        if project is None:
            raise KeyError(f"{kind} of {layer} at step {step} is kept as the attention's input; give a projection")
        return project(layer, kind, tensor)

    def _on(self, device: torch.device, step: int) -> dict:
        """Views of ``step``'s tensors on ``device``; the last step's stay there until :meth:`release`."""
        loaded_step, loaded_device, views = self._loaded
        if (loaded_step, loaded_device) != (step, device):
            self.settle()
            views = {}
            for flat, shapes in self._steps.get(step, []):
                views.update(_views(flat.to(device), shapes))
            views.update({key: t.to(device) for key, t in self._kept.items() if key[0] == step and key not in views})
            self._loaded = (step, device, views)
        return views

    def release(self) -> None:
        """Drop the step's tensors :meth:`get` moved to a device (when a run that read them ends)."""
        self._loaded = (None, None, {})

    def __deepcopy__(self, memo) -> AttentionRecord:
        return self  # rides in a recording model's options: its clones record into this one

    def covers(self, step: int, halves: tuple[int, ...], needs: frozenset[Need]) -> bool:
        return all(self._key(step, half, layer, kind) in self.tensors for half in halves for layer, kind in needs)

    def layers(self) -> set[Layer]:
        return {key[2] for key in self.tensors}

    def lacks(self, needs: set[Need]) -> set[Need]:
        """Of ``needs``, the (layer, kind) pairs kept at no step (as themselves or as their input)."""
        held = {key[2:] for key in self.tensors}
        return {(layer, kind) for layer, kind in needs
                if not any((layer, stored) in held for stored in (kind, *PROJECTED.get(kind, ())))}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def _views(flat: torch.Tensor, shapes: list) -> dict:
    """The tensors laid out one after another in ``flat``, by key: ``shapes`` lists ``(key, shape)``."""
    parts = flat.split([math.prod(shape) for _, shape in shapes])
    return {key: part.view(shape) for (key, shape), part in zip(shapes, parts, strict=True)}


@dataclass
class SubjectMapRecord:
    """Cross-attention probabilities of one sampler run, per step, for the Cross-Attention Mask.

    Per sampling step: the head-averaged ``softmax(Q K^T / sqrt(d))`` of the conditional rows,
    ``[B, h*w, tokens]``, summed over the decoder layers whose tokens are ``h x w`` = latent size
    / ``resolution``, with the set of layers summed. The mask averages these over its steps and
    layers, so a step found here needs no model pass. Valid only for a mask of the model and
    positive prompt in ``key`` (:func:`map_key`).
    """

    resolution: int
    key: tuple = ()
    device: torch.device | str | None = None  # where sums are kept (None: where they were computed)
    sums: dict[int, torch.Tensor] = field(default_factory=dict)
    layers: dict[int, frozenset[Layer]] = field(default_factory=dict)
    size: tuple[int, int] | None = None
    latent_size: tuple[int, int] | None = None

    def add_cross(self, layer: Layer, step: int, size: tuple[int, int], probs: torch.Tensor) -> None:
        """Add one layer's maps to its step's sum, kept where they were computed until :meth:`settle`."""
        self.size = size
        self.sums[step] = probs if step not in self.sums else self.sums[step] + probs
        self.layers[step] = self.layers.get(step, frozenset()) | {layer}

    def settle(self) -> None:
        """Move the sums to ``device``: once, when the recording run ends (one copy per step,
        not one per layer)."""
        if self.device is not None:
            self.sums = {step: s.to(self.device) for step, s in self.sums.items()}

    def __deepcopy__(self, memo) -> SubjectMapRecord:
        return self  # rides in a recording model's options: its clones record into this one

    def covers(self, key: tuple, resolution: int) -> bool:
        """Whether steps found here are what a mask of ``key`` (model and prompt) at ``resolution`` reads."""
        return resolution == self.resolution and keys_equal(self.key, key)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.sums.values())


@dataclass
class KeyedRecord:
    """One record and the key it was made under; a different key starts it afresh.

    Lives on a reference inversion (:class:`InversionTrajectory`), so it lasts as long as ComfyUI
    keeps that inversion in its node cache, and holds one key at a time.
    """

    key: tuple | None = None
    record: AttentionRecord | None = None

    def for_key(self, key: tuple, device) -> AttentionRecord:
        if self.record is None or not keys_equal(self.key, key) or self.record.device != device:
            self.key, self.record = key, AttentionRecord(device)
        return self.record
