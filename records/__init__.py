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

The modules, by what they hold: :mod:`.attention` (the records and their kinds), :mod:`.trajectory`
(the recorded paths), :mod:`.keys` (what a record's validity depends on), :mod:`.steps` (the step
of a call) and :mod:`.guidance` (Pick-and-Draw's palette and template); their names are re-exported here.
"""

from .attention import (
    CROSS_OUT,
    KEYS,
    KINDS,
    LAYOUT_KINDS,
    PROJECTED,
    REFERENCE_KINDS,
    SELF_IN,
    SELF_OUT,
    SELF_VALUE_IN,
    VALUES,
    AttentionRecord,
    KeyedRecord,
    Layer,
    Need,
    SubjectMapRecord,
)
from .guidance import LayoutTemplate, Palette
from .keys import Same, keys_equal, map_key, model_key
from .steps import StepOfCall, sigma_position
from .trajectory import InversionTrajectory, base_model

__all__ = ["CROSS_OUT", "KEYS", "KINDS", "LAYOUT_KINDS", "PROJECTED", "REFERENCE_KINDS", "SELF_IN", "SELF_OUT",
           "SELF_VALUE_IN", "VALUES", "AttentionRecord", "InversionTrajectory", "KeyedRecord", "Layer", "LayoutTemplate",
           "Need", "Palette", "Same", "StepOfCall", "SubjectMapRecord", "keys_equal", "map_key", "model_key",
           "base_model", "sigma_position"]
