"""The pack's own socket types, each carrying one object of the layers below (who owns it: records/)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

# Carries records.InversionTrajectory: every latent of a DDIM inversion (or of stage 1), in
# sampler space, with its sigmas, its attention record and the reference cache.
Inversion = io.Custom("LR_INVERSION")

# Carries attention.maps.AttentionStore: cross-attention maps (and optional self-attention
# K/V) recorded during a sampler run by the Attention Capture patch. For experimenters' own
# nodes: ``maps``, ``counts``, ``sizes``, ``latent_size`` and ``kv`` (per (layer, step), the
# conditional rows' self-attention keys and values) are its public fields.
AttentionStore = io.Custom("LR_ATTENTION_STORE")

# Carries masks.sam.SamModel: a Segment Anything model, its size and its file.
Sam = io.Custom("LR_SAM")

# Carries records.Palette: Pick-and-Draw's reference features per guided step and layer.
Palette = io.Custom("LR_PALETTE")

# Carries records.LayoutTemplate: a vanilla run's smoothed subject maps per step and layer.
LayoutTemplate = io.Custom("LR_LAYOUT_TEMPLATE")
