"""The cross-attention mask ``M^c`` (L&R Sec. 3.2.2, "Adaptive mask blending", after MasaCtrl).

The subject token(s)' cross-attention, averaged over heads, decoder layers at one resolution
(paper: 32x32 for 512x512 images) and steps, is min-max normalised to [0, 1] per image and
thresholded (paper and MasaCtrl: 0.1; DreamMatcher 0.05) into a binary mask.
"""

from __future__ import annotations

import torch

from .. import host_api
from ..attention.capture import add_map_capture, averaged_steps, record_on_trajectory
from ..attention.layers import map_layers
from ..attention.maps import AttentionStore, NothingRecorded
from ..attention.tokens import subject_positions
from ..records import InversionTrajectory, SubjectMapRecord, map_key
from .adaptive import resize_mask

DEFAULT_RESOLUTION = 2  # latent size / 2: 32x32 at 512 px, the paper's


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map ``[B, h, w]`` to [0, 1]; a constant map becomes all zeros."""
    flat = maps.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = (high - low).clamp_min(torch.finfo(flat.dtype).tiny)
    return ((flat - low) / span * (high > low)).view_as(maps)


def cross_attention_mask(maps: torch.Tensor, image_size: tuple[int, int],
                         threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(soft, binary)`` MASKs ``[B, H, W]`` from averaged subject maps ``[B, h, w]``.

    The soft map is normalised at attention resolution and resized; the binary mask is the soft
    map above ``threshold`` (so both agree pixel for pixel).
    """
    soft = resize_mask(normalise(maps.float()), image_size)
    return soft, (soft > threshold).float()


def mask_on_path(model, trajectory: InversionTrajectory, clip, prompt: str, subject: str, resolution: int,
                 steps_to_average: int, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """M^c of the image at the start of ``trajectory`` (the Cross-Attention Mask node).

    The subject tokens' cross-attention of the decoder layers at latent size / ``resolution`` is
    averaged over those layers and ``steps_to_average`` steps spread evenly over the schedule, and
    made into ``(soft, binary)`` masks. A step that the trajectory's maker recorded for this model
    and prompt (stage 1 with record_attention on: :func:`step_maps`) is read; ``model`` is
    evaluated once, with the prompt, at each other step's recorded latent.

    Raises:
        KeyError: a subject word is not in the prompt.
        NothingRecorded: no decoder layer has that resolution at this image size.
    """
    positions = subject_positions(clip, prompt, subject)
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
    maps = step_maps(model, positive, trajectory, resolution, averaged_steps(len(trajectory) - 1, steps_to_average))
    h, w = trajectory.latents.shape[-2:]
    scale = host_api.pixels_per_latent(model)
    return cross_attention_mask(average_steps(maps, positions), (h * scale, w * scale), threshold)


def step_maps(model, positive, trajectory: InversionTrajectory, resolution: int,
              steps: list[int]) -> list[tuple[torch.Tensor, int, tuple[int, int]]]:
    """Per step: ``(sum over layers of [B, h*w, tokens], layer count, (h, w))``, read from the
    trajectory's :class:`SubjectMapRecord` where it covers the step for this model and prompt,
    else from one model pass per missing step.

    Raises:
        NothingRecorded: no decoder layer has that resolution at this image size.
    """
    recorded = trajectory.maps
    if recorded is None or not recorded.covers(map_key(model, positive), resolution):
        recorded = SubjectMapRecord(resolution)
    missing = [s for s in steps if s not in recorded.sums]
    fresh = SubjectMapRecord(resolution)
    if missing:
        patched = add_map_capture(model, fresh, map_layers(model), None, resolution, trajectory.sampling_sigmas)
        record_on_trajectory(patched, positive, trajectory, missing)
        if not fresh.sums:
            raise NothingRecorded("no decoder layer at this resolution")
    found = []
    for step in steps:
        source = recorded if step in recorded.sums else fresh
        found.append((source.sums[step], len(source.layers[step]), source.size))
    return found


def average_steps(maps: list[tuple[torch.Tensor, int, tuple[int, int]]], positions: list[int]) -> torch.Tensor:
    """The subject map ``[B, h, w]``: the summed token ``positions``, averaged over steps and layers."""
    # Steps read from a record (kept on the CPU) and steps run now (on the model's device) meet on the CPU.
    total = sum(s[:, :, positions].sum(-1).float().cpu() for s, _, _ in maps)
    count = sum(n for _, n, _ in maps)
    h, w = maps[0][2]
    return (total / count).reshape(-1, h, w)


def mask_from_store(store: AttentionStore, clip, prompt: str, subject: str,
                    threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """M^c from what an Attention Capture patch recorded in a sampler run (the Attention Map to Mask node).

    Raises:
        KeyError: a subject word is not in the prompt.
        NothingRecorded: the store holds no cross-attention (its model was not sampled).
    """
    if store.latent_size is None:
        raise NothingRecorded("no cross-attention was recorded")
    maps = store.average(subject_positions(clip, prompt, subject))
    h, w = store.latent_size
    return cross_attention_mask(maps, (h * 8, w * 8), threshold)
