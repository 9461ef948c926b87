"""Pick-and-Draw's payloads: the reference's appearance palette and the vanilla run's layout template."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import Layer
from .steps import sigma_position


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
        base_model: the base model that computed it (ComfyUI's model config name).
    """

    features: dict[tuple[int, Layer], torch.Tensor]
    sigmas: dict[int, float]
    layers: tuple[Layer, ...]
    latent_size: tuple[int, int]
    base_model: str

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
        base_model: the base model of the vanilla run.
    """

    maps: dict[tuple[int, Layer], torch.Tensor]
    sigmas: dict[int, float]
    latents: dict[int, torch.Tensor]
    base_model: str

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
