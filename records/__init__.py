"""What outlives one node run: the recorded paths and the attention records, with who owns them.

The bottom layer of the pack: it imports neither ``sampling/`` nor ``attention/``, both of which
build on it.

- :class:`InversionTrajectory`: every latent a DDIM inversion (or stage 1's sampler) passed
  through. Made by the DDIM Inversion and Step-Blended KSampler nodes and carried on their
  ``LR_INVERSION`` output, so it is owned by ComfyUI's node cache: it lives as long as ComfyUI
  keeps that node's output (until the node's inputs change or the cache drops it). It is
  immutable but for the two records it holds.
- :class:`AttentionRecord`: what a swap reads from one source path, per (step, CFG half,
  layer, kind). ``InversionTrajectory.attention`` is filled once, by the node that made the
  trajectory (record_attention on: the swap's fast mode).
- :class:`SubjectMapRecord`: what stage 1 recorded for a later Cross-Attention Mask on its
  own trajectory (``InversionTrajectory.maps``): the decoder's head-averaged cross-attention
  per step, valid for the model and prompt it was made with (:func:`map_key`).
- :class:`KeyedRecord`: the reference cache, ``InversionTrajectory.cache``. A retouch run that
  uses the trajectory as its reference fills it under a key of the model and the reference
  prompts (:func:`model_key`); a run under another key starts it afresh. It lives and dies with
  its trajectory, so two workflows share it only when ComfyUI hands both the same cached
  inversion, and then only under equal keys.

On a GPU a record kept in RAM moves a step at a time: the step's copies wait on the GPU until the
step ends and leave in one transfer, and a reading swap brings a step back in one transfer
(:meth:`AttentionRecord.settle`, :meth:`AttentionRecord.get` with a device): a transfer per layer
made the CPU wait for the GPU at every layer (measured on an H200: stage 1 recording took 3.2x stage 1).

ComfyUI deep-copies ``model_options`` on every ``ModelPatcher.clone()``; objects here that ride in
a patched model's options (trajectories, :class:`Same` keys) return themselves from
``__deepcopy__``, so clones of one patched model share one cache instead of copying it.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

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


def map_key(model, positive) -> tuple:
    """What a cross-attention map depends on: the model (:func:`model_key`) and the positive
    CONDITIONING (tensors by value)."""
    return model_key(model, ""), _options_key(positive, "")


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
    base = model.model
    return (
        weakref.ref(base), model.patches_uuid, _options_key(dict(model.object_patches), skip),
        _options_key(model.model_options, skip), str(base.get_dtype()), str(getattr(base, "manual_cast_dtype", None)),
    )


def _views(flat: torch.Tensor, shapes: list) -> dict:
    """The tensors laid out one after another in ``flat``, by key: ``shapes`` lists ``(key, shape)``."""
    parts = flat.split([math.prod(shape) for _, shape in shapes])
    return {key: part.view(shape) for (key, shape), part in zip(shapes, parts, strict=True)}


class StepOfCall:
    """The position of a model call's sigma in ``sigmas``, looked up once per call.

    Attention patches run on every layer with the same ``transformer_options["sigmas"]`` tensor;
    reading a GPU tensor's value makes the CPU wait for the GPU, so a lookup in each layer would
    hold the sampler's kernel launches back behind the GPU's work. The last call's tensor (kept,
    so its id cannot be reused) and its position are remembered.
    """

    def __init__(self, sigmas: torch.Tensor | None = None) -> None:
        self.sigmas = sigmas
        self.last: tuple = (None, None, None)

    def __call__(self, sigma: torch.Tensor, sigmas: torch.Tensor | None = None) -> int | None:
        """``sigma``: the call's sigmas ``[B]``; ``sigmas``: the schedule (default: the one given at creation)."""
        schedule = self.sigmas if sigmas is None else sigmas
        seen, seen_schedule, position = self.last
        if seen is not sigma or seen_schedule is not schedule:
            position = sigma_position(schedule, sigma[0].cpu())
            self.last = (sigma, schedule, position)
        return position

    def __deepcopy__(self, memo) -> StepOfCall:
        return StepOfCall(self.sigmas)  # a clone's patches start with nothing remembered


def sigma_position(sigmas: torch.Tensor, sigma: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-8) -> int | None:
    """The first position of ``sigma`` in ``sigmas`` (within tolerance), or None: how a step is
    known from the current sigma, never from a call count."""
    hits = torch.isclose(sigmas, torch.as_tensor(sigma).to(sigmas), rtol=rtol, atol=atol).nonzero()
    return int(hits[0, 0]) if hits.numel() else None


@dataclass(frozen=True)
class InversionTrajectory:
    """Every latent a DDIM inversion passed through, in ComfyUI's sampler space.

    Sampler space is the space a KSampler's model wrapper sees: the LATENT's ``samples`` after
    ``process_latent_in`` (for SD1.x: times 0.18215), with the noise of level ``sigma`` added.

    Attributes:
        latents: ``[K, B, C, H, W]``; ``latents[0]`` is the input latent, ``latents[k]`` the
            latent at noise level ``sigmas[k]``, ``latents[-1]`` the inverted noise.
        sigmas: ``[K]``, ascending from 0: the sampling schedule read backwards, so the
            denoising step ``s`` of a sampler on that schedule starts at ``latents[K - 1 - s]``.
            ``K`` is the schedule's length, which can exceed ``steps + 1`` (``ddim_uniform``).
        steps: the step count the schedule was made for.
        scheduler: the ComfyUI scheduler name.
        family: the model family it was made with (ComfyUI's model config name, e.g. ``SD15``).
        attention: what a swap reads from this path (:class:`AttentionRecord`), recorded by the
            inversion pass itself when asked (the swap's fast mode), per sampling step.
        maps: what stage 1 recorded for a Cross-Attention Mask on this path
            (:class:`SubjectMapRecord`), or None.
        cache: the reference cache: filled by a retouch run that uses this inversion as its
            reference, under that run's key; it lives as long as this object.
    """

    latents: torch.Tensor
    sigmas: torch.Tensor
    steps: int
    scheduler: str
    family: str
    attention: AttentionRecord | None = field(default=None, compare=False, repr=False)
    cache: KeyedRecord = field(default_factory=KeyedRecord, compare=False, repr=False)
    maps: SubjectMapRecord | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.latents.shape[0] != self.sigmas.shape[0]:
            raise ValueError(f"{self.latents.shape[0]} latents for {self.sigmas.shape[0]} sigmas")

    def __deepcopy__(self, memo) -> InversionTrajectory:
        # ComfyUI deep-copies model_options on every ModelPatcher.clone(); a trajectory is
        # immutable but for its cache, which clones of a patched model must share, so it is shared.
        return self

    def __len__(self) -> int:
        return int(self.sigmas.shape[0])

    @property
    def sampling_sigmas(self) -> torch.Tensor:
        """The schedule in sampling order (descending, ending at 0), as a KSampler uses it."""
        return self.sigmas.flip(0)

    def position(self, sigma: float | torch.Tensor) -> int | None:
        """Position of ``sigma`` in :attr:`sigmas`, or None when it is not on the schedule."""
        return sigma_position(self.sigmas, sigma, rtol=1e-4, atol=1e-6)

    def index_of(self, sigma: float | torch.Tensor) -> int:
        """Position of ``sigma`` in :attr:`sigmas`; raises KeyError when it is not on the schedule."""
        found = self.position(sigma)
        if found is None:
            raise KeyError(f"sigma {float(sigma):.6g} is not on this inversion's schedule")
        return found

    def latent_at(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """The recorded latent ``[B, C, H, W]`` at noise level ``sigma``."""
        return self.latents[self.index_of(sigma)]


def model_family(model) -> str:
    """ComfyUI's name for the model's architecture, e.g. ``SD15``, ``SDXL``, ``Segmind_Vega``."""
    return type(model.model.model_config).__name__


@dataclass(frozen=True)
class Palette:
    """Pick-and-Draw's appearance palette (P&D Sec. 3.2): the reference's features inside its
    subject mask, per guided step and layer. Made by the Reference Palette node; owned by
    ComfyUI's node cache like a trajectory.

    Attributes:
        features: per ``(step, layer)``: the features ``[n, D]`` (float32) of every reference
            image at the mask's pixels, the images' sets joined.
        sigmas: per step in ``features``: the sigma it was read at (the guidance finds its step by sigma).
        layers: the layers read, in call order.
        latent_size: the ``(H, W)`` of the reference's latent.
        family: the model family that computed it (ComfyUI's model config name).
    """

    features: dict[tuple[int, Layer], torch.Tensor]
    sigmas: dict[int, float]
    layers: tuple[Layer, ...]
    latent_size: tuple[int, int]
    family: str

    def step_at(self, sigma: float | torch.Tensor) -> int | None:
        """The palette's step read at ``sigma``, or None."""
        steps = list(self.sigmas)
        found = sigma_position(torch.tensor([self.sigmas[s] for s in steps]), sigma, rtol=1e-4, atol=1e-6)
        return None if found is None else steps[found]

    def __deepcopy__(self, memo) -> Palette:
        return self  # immutable; rides in a SAMPLER's options, which ComfyUI may copy


@dataclass(frozen=True)
class LayoutTemplate:
    """Pick-and-Draw's layout template (P&D Sec. 3.3): a vanilla model's run with the same seed
    and prompt, per step and cross-attention layer, the subject's map as the layout loss reads
    it (min-max normalised, Gaussian-smoothed), ``[B, h, w]``.

    Attributes:
        maps: per ``(step, layer)``: the smoothed normalised subject map ``[B, h, w]`` (float32).
        sigmas: per step: the sigma it was taken at.
        latents: per step: the run's latent ``[B, C, H, W]`` in sampler space where it was taken.
        family: the model family of the vanilla run.
    """

    maps: dict[tuple[int, Layer], torch.Tensor]
    sigmas: dict[int, float]
    latents: dict[int, torch.Tensor]
    family: str

    def step_at(self, sigma: float | torch.Tensor) -> int | None:
        """The template's step taken at ``sigma``, or None."""
        steps = list(self.sigmas)
        found = sigma_position(torch.tensor([self.sigmas[s] for s in steps]), sigma, rtol=1e-4, atol=1e-6)
        return None if found is None else steps[found]

    @property
    def latent_size(self) -> tuple[int, int]:
        return tuple(next(iter(self.latents.values())).shape[-2:])

    def __deepcopy__(self, memo) -> LayoutTemplate:
        return self
