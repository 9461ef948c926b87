"""The reference palette of Pick-and-Draw's appearance picking (P&D Sec. 3.2, eq. 3).

Along the reference's path (a null-text inversion's denoising path, as in the paper, or a DDIM
inversion), the model is run once per guided step with the reference prompt; at each chosen layer
the features ``Psi_l`` inside the reference's own subject mask ``M_l`` (its normalised map at
least ``tau``) form the palette of that step and layer.
"""

from __future__ import annotations

import torch

from ..attention.capture import record_on_trajectory
from ..errors import Problem
from ..records import InversionTrajectory, Layer, Palette, sigma_position
from .losses import subject_mask
from .probe import Probe, conditional_pass


class EmptyMask(ValueError):
    """No pixel of the subject's map reaches the threshold at a step and layer."""


def build_palette(model, positive, trajectory: InversionTrajectory, positions: list[int], steps: dict[int, int],
                  layers: tuple[Layer, ...], threshold: float, base_model: str) -> Palette:
    """The palette of ``trajectory``'s image(s) at ``steps`` and ``layers``.

    Args:
        model: the model the guidance will run (the personalized one).
        positive: the reference prompt's CONDITIONING.
        trajectory: the reference's path; its batch's images join one palette.
        positions: the subject's token positions in the reference prompt.
        steps: per step of the generation's schedule to read, the trajectory's step at the same sigma.
        layers: the layers to read (the decoder at 1/2 of the latent in the paper).
        threshold: ``tau`` of eq. 3 on the min-max normalised map.
        base_model: the base model, kept to refuse a palette on another.

    Raises:
        EmptyMask: a step and layer whose mask holds no pixel (message names them).
    """
    import comfy.model_management

    store = comfy.model_management.intermediate_device()
    probe = Probe(positions, map_layers=frozenset(layers), feature_layers=frozenset(layers), stop=True)
    features: dict[tuple[int, Layer], torch.Tensor] = {}

    own_step = {on_path: step for step, on_path in steps.items()}

    def visit(guider, model_options, latent, sigma, on_path):
        step = own_step[on_path]
        probe.clear()
        conditional_pass(guider, latent, sigma, model_options, probe)
        for layer in layers:
            mask = subject_mask(probe.maps[layer], threshold)
            if not mask.any():
                raise EmptyMask(f"no pixel of the subject's map reaches {threshold} at step {step}, layer {layer}")
            features[(step, layer)] = probe.features[layer][mask].float().to(store)

    record_on_trajectory(model, positive, trajectory, sorted(own_step), visit)
    sigmas = trajectory.sampling_sigmas
    h, w = trajectory.latents.shape[-2:]
    return Palette(features=features, sigmas={s: float(sigmas[on_path]) for s, on_path in steps.items()},
                   layers=tuple(layers), latent_size=(h, w), base_model=base_model)


def steps_on_path(trajectory: InversionTrajectory, sigmas: torch.Tensor | None,
                  steps: range) -> dict[int, int] | tuple[str, Problem]:
    """Per step of ``steps`` (counted on ``sigmas``, or on the trajectory's own schedule when None),
    the trajectory's step at its sigma; or ``(input name, problem)`` when one cannot be read."""
    own = trajectory.sampling_sigmas
    schedule = own if sigmas is None else sigmas.cpu().float()
    n_steps = len(schedule) - 1
    if steps.stop > n_steps:
        return "appearance_end", (f"is {steps.stop - 1}, but the schedule has {n_steps} steps (0 to {n_steps - 1}).",
                                  "keep the appearance steps within the generation's steps.")
    found = {}
    for step in steps:
        on_path = sigma_position(own[:-1], schedule[step], rtol=1e-4, atol=1e-6)
        if on_path is None:
            return "reference_inversion", (f"has no latent at step {step} (sigma {float(schedule[step]):.4g}) of the "
                                           "generation's schedule.",
                                           "invert the reference with the generation's steps and scheduler.")
        found[step] = on_path
    return found
