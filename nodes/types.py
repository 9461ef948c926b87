"""The pack's own socket types. Each carries one frozen dataclass of the algorithm layer."""

from __future__ import annotations

from comfy_api.latest import io

# Carries sampling.trajectory.InversionTrajectory: every latent of a DDIM inversion, in
# sampler space, with its sigmas.
Inversion = io.Custom("LR_INVERSION")

# Carries attention.capture.AttentionStore: cross-attention maps (and optional self-attention
# K/V) recorded during a sampler run by the Attention Capture patch.
AttentionStore = io.Custom("LR_ATTENTION_STORE")

# Carries masks.sam.SamModel: a Segment Anything model, its size and its file.
Sam = io.Custom("LR_SAM")
