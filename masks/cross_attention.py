"""The cross-attention mask ``M^c`` (L&R Sec. 3.2.2, "Adaptive mask blending", after MasaCtrl).

The subject token(s)' cross-attention, averaged over heads, decoder layers at one resolution
(paper: 32x32 for 512x512 images) and steps, is min-max normalised to [0, 1] per image and
thresholded (paper and MasaCtrl: 0.1; DreamMatcher 0.05) into a binary mask.
"""

from __future__ import annotations

import torch

from ..attention.capture import AttentionStore, NothingRecorded, add_capture, averaged_steps, record_on_trajectory
from ..attention.layers import parse_layers
from ..attention.tokens import subject_positions
from ..records import InversionTrajectory
from .adaptive import resize_mask

DECODER = "output 0-11"  # every decoder block; the resolution picks among them


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

    ``model`` is evaluated once at each of ``steps_to_average`` recorded latents, spread evenly
    over the schedule, with the prompt; the subject tokens' cross-attention of the decoder layers
    at latent size / ``resolution`` is averaged and made into ``(soft, binary)`` masks.

    Raises:
        KeyError: a subject word is not in the prompt.
        NothingRecorded: no decoder layer has that resolution at this image size.
    """
    positions = subject_positions(clip, prompt, subject)
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
    store = AttentionStore()
    patched = add_capture(model, store, parse_layers(DECODER), None, resolution)
    record_on_trajectory(patched, positive, trajectory, averaged_steps(len(trajectory) - 1, steps_to_average))
    h, w = trajectory.latents.shape[-2:]
    return cross_attention_mask(store.average(positions), (h * 8, w * 8), threshold)


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
