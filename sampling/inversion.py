"""DDIM inversion in ComfyUI's sampler space (L&R Alg. 1; MasaCtrl and DreamMatcher invert alike).

Deterministic DDIM (eta = 0) is Euler on the noise prediction in k-diffusion's sigma space, so
the inversion runs Euler upward along the sampling schedule read backwards:

    x(sigma_{k+1}) = x(sigma_k) + (sigma_{k+1} - sigma_k) * eps(x(sigma_k), sigma_k)

A stock KSampler with sampler ``ddim`` or ``euler`` on the same schedule walks the same sigmas
down again, so it reconstructs the input up to the scheme's first-order error. The whole path
is kept (:class:`InversionTrajectory`): the retouch stage drives its source rows along it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import Problem
from ..records import AttentionRecord, InversionTrajectory, base_model

# Samplers that are Euler on eps with no injected noise: the ones this inversion inverts.
# In ComfyUI "ddim" is Euler (comfy/samplers.py, sampler_object).
INVERTIBLE_SAMPLERS = ("ddim", "euler")

# The model is evaluated at this sigma instead of 0, as comfy_extras' FlipSigmas does; at
# sigma 0 the noise prediction would be divided out of ``x - denoised = 0 * eps``.
SIGMA_FLOOR = 1e-4

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]
# (model, record, sampling sigmas) -> a clone of the model that records into the record.
Recorder = Callable[[object, AttentionRecord, torch.Tensor], object]


def sampler_problem(sampler_name: str | None) -> Problem | None:
    """Why a reconstructing sampler cannot be inverted, or None."""
    if sampler_name is None or sampler_name in INVERTIBLE_SAMPLERS:
        return None
    return (f"'{sampler_name}' cannot be inverted: only deterministic first-order samplers retrace an inversion.",
            f"use {' or '.join(INVERTIBLE_SAMPLERS)} here and in the sampler that starts from the inverted latent.")


def schedule_problem(sigmas: torch.Tensor, scheduler: str, steps: int) -> Problem | None:
    """Why a sampling schedule (descending sigmas) cannot be inverted, or None."""
    if sigmas.numel() < 2:
        return f"'{scheduler}' with {steps} steps gives no step to invert.", "use at least 1 step."
    if not bool(torch.isfinite(sigmas).all()):
        return f"'{scheduler}' gives infinite sigmas, which cannot be inverted.", "use ddim_uniform."
    if float(sigmas[-1]) != 0.0:
        return (f"'{scheduler}' ends at sigma {float(sigmas[-1]):.4g}, not at a clean image, so the inversion has "
                "no clean start.", "use ddim_uniform (the paper's DDIM schedule) or normal.")
    if not bool((sigmas[:-1] > sigmas[1:]).all()):
        return (f"'{scheduler}' with {steps} steps repeats or raises a sigma, so the inversion would not walk back "
                "along the schedule.", "use ddim_uniform or normal, or change steps.")
    return None


def euler_invert(denoise: Denoiser, x: torch.Tensor, sigmas_up: torch.Tensor,
                 on_step: StepCallback | None = None) -> list[torch.Tensor]:
    """Run Euler on eps upward along ``sigmas_up``; return every latent visited.

    Args:
        denoise: ``denoise(x, sigma) -> x0``, the denoised prediction (k-diffusion convention);
            ``eps = (x - x0) / sigma``.
        x: the clean latent ``[B, C, H, W]`` in sampler space (at ``sigmas_up[0]``, usually 0).
        sigmas_up: ascending sigmas ``[K]``.
        on_step: called as ``on_step(k, x0, x_next)`` after each step ``k``.

    Returns:
        ``K`` latents: ``x`` itself, then the latent at each following sigma.
    """
    path = [x]
    s_in = x.new_ones([x.shape[0]])
    for k in range(sigmas_up.shape[0] - 1):
        sigma, sigma_next = sigmas_up[k], sigmas_up[k + 1]
        sigma_eval = torch.clamp(sigma, min=SIGMA_FLOOR)
        x0 = denoise(x, sigma_eval * s_in)
        eps = (x - x0) / sigma_eval
        x = x + (sigma_next - sigma) * eps
        path.append(x)
        if on_step is not None:
            on_step(k, x0, x)
    return path


def _positive_only(args):
    return args["cond_denoised"]


def ddim_invert(model, positive, negative, latent: dict[str, torch.Tensor], steps: int, scheduler: str,
                cfg: float, recorder: Recorder | None = None) -> tuple[torch.Tensor, InversionTrajectory]:
    """Invert a LATENT with ``model`` along the ``steps``-step ``scheduler`` schedule.

    The model runs through ComfyUI's own guider (conditioning, CFG, the model's patches and
    wrappers), with a sampler function that steps upward and records the path.

    Args:
        model: a ComfyUI ModelPatcher; it is used as it is and not modified.
        positive: the CONDITIONING for the inversion (the empty prompt in the paper).
        negative: the CONDITIONING for CFG's other half; unused at ``cfg == 1``.
        latent: the LATENT to invert (``samples`` ``[B, C, H, W]``, a VAE-encoded image).
        steps, scheduler: the schedule, the same as the sampler that will start from the result.
        cfg: guidance scale (1.0 in the paper: plain conditional prediction).
        recorder: patches the model to record what a swap reads from this path, for the swap's
            fast mode (one more model evaluation, at the schedule's top sigma); or None. The
            caller gives it (``attention.recording.add_recording`` bound to its layers). With a
            ``negative``, both CFG halves are recorded, also at ``cfg == 1``.

    Returns:
        ``(samples, trajectory)``: the inverted latent in LATENT space, ready for a stock
        KSamplerAdvanced with ``add_noise`` disabled, and the whole path in sampler space.
    """
    import comfy.model_management
    import comfy.sample
    import comfy.samplers
    import comfy.utils
    import latent_preview

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()
    sigmas_up = sigmas.flip(0)
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    progress = latent_preview.prepare_callback(model, sigmas_up.shape[0] - 1)
    recorded: list[torch.Tensor] = []
    attention = None
    if recorder is not None:
        attention = AttentionRecord(comfy.model_management.intermediate_device(), stand_in_half=negative is None)
        model = recorder(model, attention, sigmas)
        if negative is not None and cfg == 1.0:
            # Record the negative half too; the step still takes the positive prediction alone.
            model.set_model_sampler_post_cfg_function(_positive_only, disable_cfg1_optimization=True)

    @torch.no_grad()  # as k-diffusion's samplers: no autograd graph across the steps
    def sampler_function(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        store = comfy.model_management.intermediate_device()

        def denoise(x_k, sigma):
            comfy.model_management.throw_exception_if_processing_interrupted()
            return model_k(x_k, sigma, **(extra_args or {}))

        def on_step(k, x0, x_next):
            progress(k, x0, x_next, sigmas.shape[0] - 1)

        path = euler_invert(denoise, x, sigmas_up.to(x.device, x.dtype), on_step)
        if attention is not None:  # the sampler's first step starts at the top sigma: record it too
            denoise(path[-1], sigmas_up[-1].to(x.device, x.dtype) * x.new_ones([x.shape[0]]))
        recorded.extend(p.detach().to(store) for p in path)
        return path[-1]

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative if negative is not None else positive)
    guider.set_cfg(cfg)
    samples = guider.sample(
        torch.zeros_like(latent_image, device="cpu"), latent_image, comfy.samplers.KSAMPLER(sampler_function),
        sigmas_up.to(model.load_device), disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=0,
    )
    # The path's end, not the sampler's return: that is divided by 1 - sigma (inverse_noise_scaling), which a
    # flow model's top sigma 1 makes a division by zero (an SD model's inverse scaling is the identity).
    del samples
    samples = model.get_model_object("latent_format").process_out(recorded[-1].float()).to(
        comfy.model_management.intermediate_device())
    if attention is not None:
        attention.settle()
    trajectory = InversionTrajectory(
        latents=torch.stack(recorded), sigmas=sigmas_up.float(), steps=steps, scheduler=scheduler,
        base_model=base_model(model), attention=attention,
    )
    return samples, trajectory
