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
- :class:`KeyedRecord`: the reference cache, ``InversionTrajectory.cache``. A retouch run that
  uses the trajectory as its reference fills it under a key of the model and the reference
  prompts (:func:`model_key`); a run under another key starts it afresh. It lives and dies with
  its trajectory, so two workflows share it only when ComfyUI hands both the same cached
  inversion, and then only under equal keys.

ComfyUI deep-copies ``model_options`` on every ``ModelPatcher.clone()``; objects here that ride in
a patched model's options (trajectories, :class:`Same` keys) return themselves from
``__deepcopy__``, so clones of one patched model share one cache instead of copying it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

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
