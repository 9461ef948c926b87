"""The pack's own socket types. Each carries one frozen dataclass of the algorithm layer."""

from __future__ import annotations

from comfy_api.latest import io

# Carries sampling.trajectory.InversionTrajectory: every latent of a DDIM inversion, in
# sampler space, with its sigmas.
Inversion = io.Custom("LR_INVERSION")
