"""The recorded paths: every latent an inversion (or stage 1's sampler) passed through, with its records."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .attention import AttentionRecord, KeyedRecord, SubjectMapRecord
from .steps import sigma_position


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
        base_model: the base model it was made with (ComfyUI's model config name, e.g. ``SD15``).
        attention: what a swap reads from this path (:class:`AttentionRecord`), recorded by the
            inversion pass itself when asked (the swap's fast mode), per sampling step.
        maps: what stage 1 recorded for a Cross-Attention Mask on this path
            (:class:`SubjectMapRecord`), or None.
        cache: the reference cache: filled by a retouch run that uses this inversion as its
            reference, under that run's key; it lives as long as this object.
        null_text: a Null-Text Inversion's fitted unconditional embeddings ``[steps, tokens, dim]``
            (its ``null_negative``, one per sampling step): the negative the path was walked with; None
            for a DDIM inversion.
    """

    latents: torch.Tensor
    sigmas: torch.Tensor
    steps: int
    scheduler: str
    base_model: str
    attention: AttentionRecord | None = field(default=None, compare=False, repr=False)
    cache: KeyedRecord = field(default_factory=KeyedRecord, compare=False, repr=False)
    maps: SubjectMapRecord | None = field(default=None, compare=False, repr=False)
    null_text: torch.Tensor | None = field(default=None, compare=False, repr=False)

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


def base_model(model) -> str:
    """The base model: ComfyUI's name for the model's configuration, e.g. ``SD15``, ``SDXL``, ``Segmind_Vega``,
    ``Flux`` (what records are checked against; the attention architecture is its family, ``attention.families``)."""
    return type(model.model.model_config).__name__
