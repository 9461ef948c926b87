"""Recording what a swap reads from a source while that source is inverted (the fast mode).

DDIM inversion evaluates the model at the same latents and sigmas that the swap's source rows
would be evaluated at later (the recorded path), except for the schedule's top sigma, which the
inversion reaches but never evaluates: the inversion evaluates it once more when
recording. Each evaluation keeps, per swapped layer and CFG half it ran, what is asked of it
among: the self-attention's output, its input (after the block's norm: the keys and values
are its projections, recomputed with the layer's own ``to_k``/``to_v`` when the swap reads them,
for half the memory of keeping both) and the cross-attention's output.

The model's family installs its recording patches (``install_recording``: the UNet's ``attn1``/``attn2``
patches, a joint-attention block's :class:`~.joint_attention.JointRecord`).
"""

from __future__ import annotations

import torch

from ..records import AttentionRecord, SubjectMapRecord
from .capture import add_map_capture
from .families import family_of
from .layer_set import LayerSet
from .layers import map_layers


def add_recording(model, record: AttentionRecord, sampling_sigmas: torch.Tensor, layers: LayerSet,
                  paths: tuple[str, ...] = ("layout", "reference"), maps: SubjectMapRecord | None = None):
    """A clone of ``model`` recording what a swap reads from this source as each of ``paths`` (the kinds of the
    model's family, its ``record_kinds``) into ``record`` on ``layers``, at the sampling steps that start at
    ``sampling_sigmas``; patches on the keys are chained. With ``maps``, it also adds the subject map (a UNet's
    decoder cross-attention at latent size / ``maps.resolution``, a DiT's map blocks) to it, per step (what a
    Cross-Attention Mask on this path reads). Bound to its layers, paths and maps, it is the ``recorder`` that
    ``sampling/`` takes from its caller."""
    # One clone, patched last: a later clone would deep-copy the patches set before it, records and all.
    m = model.clone() if maps is None else add_map_capture(model, maps, map_layers(model), None, maps.resolution,
                                                           sampling_sigmas)
    family = family_of(model)
    kinds = tuple(dict.fromkeys(kind for path in paths for kind in family.record_kinds[path]))
    family.install_recording(m, record, sampling_sigmas, layers, kinds)
    return m
