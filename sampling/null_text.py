"""Null-text inversion in ComfyUI's sampler space (Mokady et al. 2023, "Null-text Inversion for
Editing Real Images using Guided Diffusion Models", Sec. 3.2-3.3, Algorithm 1).

DDIM inversion at guidance 1 gives the pivots ``z*_k`` (:func:`.inversion.ddim_invert`). CFG
sampling at the user's guidance ``w`` from ``z*_T`` drifts off them; null-text inversion pulls it
back step by step from the noise end: at step ``s`` (``sigma_s -> sigma_{s+1}``) the unconditional
embedding ``null_s`` (the negative CONDITIONING's cross-attention tensor, started from ``null_{s-1}``,
the first from the negative itself) is fitted with Adam so that the CFG Euler step from ``zbar_s``,

    x0 = CFG(D(zbar_s, sigma_s | positive), D(zbar_s, sigma_s | null_s), w)
    zbar_{s+1} = zbar_s + (sigma_{s+1} - sigma_s) * (zbar_s - x0) / sigma_s

lands on ``z*_{s+1}`` (MSE, Eq. 3), stopping early as Mokady's code does when the loss falls below
``early_stop + s * 2e-5``; ``zbar_{s+1}`` is then that step with the fitted ``null_s``. The loss is
measured where Mokady measures it, on the DDIM latent (the model's input scaling,
``calculate_input``: ``x / sqrt(1 + sigma^2)`` for SD), so that the early-stop threshold keeps its
meaning. The learning rate is constant (Mokady's code lowers it by ``s / 100`` per step, a rule
tied to 50 steps).

Per Mokady's Sec. 3.3 the conditional prediction is computed once per step, without gradient;
each Adam iteration runs the unconditional half alone (one forward, one backward). Everything
runs through ComfyUI's guider, conditioning and ``calc_cond_batch``, so the model's patches and
wrappers apply, and ComfyUI's ``cfg_function`` (with the model's CFG functions) combines the
halves. Gradients flow through the embedding only (:mod:`.gradients`); the model's weights get
none and are not changed.

The fitted embeddings leave as one CONDITIONING, one entry per sampling step restricted to its
step by ComfyUI's timestep range (``start_percent``/``end_percent``, read by
``calculate_start_end_timesteps``): a stock KSampler with it as negative retraces ``zbar``.
With a batch of latents each image gets its own embedding (ComfyUI applies a CONDITIONING whose
batch equals the latent batch row-wise).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import Problem
from ..records import InversionTrajectory, base_model
from .gradients import gradients_enabled, normal_tensor
from .inversion import ddim_invert

# Mokady's code raises the early-stop threshold by this much per step from the noise end.
EARLY_STOP_PER_STEP = 2e-5


def cfg_problem(cfg: float | None) -> Problem | None:
    """Why a guidance scale makes null-text inversion pointless, or None."""
    if cfg is None or cfg > 1.0:
        return None
    return (f"is {cfg}: at guidance 1 or below the unconditional embedding has no effect on the path (1) or "
            "pushes it the wrong way, so there is nothing for null-text inversion to fit.",
            "set cfg to the guidance you will sample with (paper: 7.5); for guidance 1 use DDIM Inversion.")


def negative_problem(negative) -> Problem | None:
    """Why a negative CONDITIONING cannot be the unconditional embedding to fit, or None."""
    if len(negative) == 1:
        return None
    return (f"has {len(negative)} entries (combined or scheduled prompts); null-text inversion fits one "
            "unconditional embedding.", "connect a single CLIP Text Encode, e.g. of the empty prompt (the paper's).")


def percent_at(model_sampling, sigma: float) -> float:
    """The schedule percent whose sigma is ``sigma`` (bisection on ``percent_to_sigma``, which falls
    from ``+inf`` at 0 to 0 at 1), for ComfyUI's ``start_percent``/``end_percent`` keys."""
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = 0.5 * (low + high)
        if model_sampling.percent_to_sigma(middle) > sigma:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def step_conditioning(negative, embeddings: list[torch.Tensor], sigmas: torch.Tensor, model_sampling) -> list:
    """One CONDITIONING entry per sampling step, each seen only at its own step's sigma.

    Args:
        negative: the single-entry CONDITIONING the embeddings were fitted from; its options
            (pooled output and the like) travel with every entry.
        embeddings: ``len(sigmas) - 1`` tensors ``[B, tokens, dim]``, one per step.
        sigmas: the sampling schedule, descending, ending at 0.
        model_sampling: the model's ``model_sampling``, which turns percents into sigmas.

    Returns:
        The CONDITIONING. Entry ``s`` spans the sigmas between the geometric means of
        ``sigmas[s]`` with its neighbours (the ends open), so each step's sigma lies inside its
        own entry's range and half a step in log-sigma away from any other's.
    """
    bounds = [0.0]
    for s in range(1, len(embeddings)):
        bounds.append(percent_at(model_sampling, math.sqrt(float(sigmas[s - 1]) * float(sigmas[s]))))
    bounds.append(1.0)
    options = negative[0][1]
    return [[e, {**options, "start_percent": bounds[s], "end_percent": bounds[s + 1]}]
            for s, e in enumerate(embeddings)]


def _with_embedding(entry: dict, embedding: torch.Tensor) -> dict:
    """A copy of a processed cond entry whose cross-attention is ``embedding``."""
    import comfy.conds

    return {**entry, "model_conds": {**entry["model_conds"], "c_crossattn": comfy.conds.CONDCrossAttn(embedding)}}


def _guided(model, x: torch.Tensor, sigma: torch.Tensor, cond_pred: torch.Tensor, uncond_pred: torch.Tensor,
            positive: list, uncond: list, cfg: float, options: dict) -> torch.Tensor:
    """The denoised CFG prediction from both halves, as ``comfy.samplers.sampling_function`` forms it."""
    import comfy.samplers

    out = [cond_pred, uncond_pred]
    for fn in options.get("sampler_pre_cfg_function", []):
        out = fn({"conds": [positive, uncond], "conds_out": out, "cond_scale": cfg, "timestep": sigma, "input": x,
                  "sigma": sigma, "model": model, "model_options": options})
    return comfy.samplers.cfg_function(model, out[0], out[1], cfg, x, sigma, model_options=options, cond=positive,
                                       uncond=uncond)


def fit_embedding(guider, options: dict, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                  target: torch.Tensor, start: torch.Tensor, cfg: float, iterations: int, learning_rate: float,
                  threshold: float) -> torch.Tensor:
    """Fit the unconditional embedding of one step (Mokady et al. 2023, Algorithm 1, inner loop).

    Args:
        guider: the CFGGuider while it samples (processed ``conds``, ``inner_model``).
        options: the sampler's model_options (with ``sample_sigmas``).
        x: ``zbar_s`` ``[B, C, H, W]`` in sampler space; ``sigma``, ``sigma_next``: the step's sigmas (0-d).
        target: the pivot ``z*_{s+1}`` ``[B, C, H, W]``.
        start: the embedding to start from ``[B, tokens, dim]``.
        cfg, iterations, learning_rate: guidance, Adam iterations at most, Adam's learning rate.
        threshold: stop once the loss before an update falls below it.

    Returns:
        The fitted embedding ``[B, tokens, dim]`` (float32, detached).
    """
    import comfy.model_management
    import comfy.samplers
    from comfy.k_diffusion.sampling import to_d

    model = guider.inner_model
    positive, entry = guider.conds["positive"], guider.conds["negative"][0]
    sigma_in = sigma * x.new_ones([x.shape[0]])
    cond_pred = comfy.samplers.calc_cond_batch(model, [positive, None], x, sigma_in, options)[0]
    next_in = sigma_next * x.new_ones([x.shape[0]])
    goal = model.model_sampling.calculate_input(next_in, target)
    with gradients_enabled():
        embedding = normal_tensor(start).float().requires_grad_(True)
        optimiser = torch.optim.Adam([embedding], lr=learning_rate)
        for _ in range(iterations):
            comfy.model_management.throw_exception_if_processing_interrupted()
            uncond = [_with_embedding(entry, embedding)]
            uncond_pred = comfy.samplers.calc_cond_batch(model, [None, uncond], x, sigma_in, options)[1]
            denoised = _guided(model, x, sigma_in, cond_pred, uncond_pred, positive, uncond, cfg, options)
            x_next = x + to_d(x, sigma, denoised) * (sigma_next - sigma)
            loss = F.mse_loss(model.model_sampling.calculate_input(next_in, x_next), goal)
            # autograd.grad, not backward(): nothing but the embedding may receive a .grad
            (embedding.grad,) = torch.autograd.grad(loss, [embedding])
            optimiser.step()
            if loss.item() < threshold:
                break
    return embedding.detach()


def null_text_invert(model, positive, negative, latent: dict[str, torch.Tensor], steps: int, scheduler: str,
                     cfg: float, iterations: int = 10, learning_rate: float = 1e-2,
                     early_stop: float = 1e-5) -> tuple[torch.Tensor, InversionTrajectory, list]:
    """Null-text-invert a LATENT with ``model`` for CFG sampling at ``cfg`` on ``steps`` of ``scheduler``.

    Args:
        model: a ComfyUI ModelPatcher; used as it is and not modified.
        positive: the prompt CONDITIONING (the inversion's and the sampler's).
        negative: a single-entry CONDITIONING (:func:`negative_problem`), the first step's start.
        latent: the LATENT to invert (``samples`` ``[B, C, H, W]``).
        steps, scheduler: the schedule, the same as the sampler that will start from the result.
        cfg: the guidance the sampler will use (Mokady: 7.5); above 1 (:func:`cfg_problem`).
        iterations: Adam iterations per step at most (Mokady: 10).
        learning_rate: Adam's learning rate (Mokady: 1e-2).
        early_stop: Mokady's ``epsilon``: step ``s`` stops at a loss below ``early_stop + s * 2e-5``.

    Returns:
        ``(samples, trajectory, null_negative)``: the inverted latent ``z*_T`` in LATENT space,
        for a stock KSamplerAdvanced with ``add_noise`` disabled; the null-text denoising path
        ``zbar`` in sampler space (``latents[k]`` at ``sigmas[k]`` ascending, ``latents[-1] = z*_T``,
        ``latents[0]`` the reconstruction); the fitted embeddings as a CONDITIONING for that
        sampler's negative (:func:`step_conditioning`).
    """
    import comfy.model_management
    import comfy.samplers
    import comfy.utils
    from comfy.k_diffusion.sampling import to_d

    samples, pivots = ddim_invert(model, positive, None, latent, steps, scheduler, 1.0)
    sigmas = pivots.sampling_sigmas
    progress = comfy.utils.ProgressBar(len(sigmas) - 1)
    store = comfy.model_management.intermediate_device()
    path: list[torch.Tensor] = []
    embeddings: list[torch.Tensor] = []

    @torch.no_grad()  # as k-diffusion's samplers; fit_embedding turns gradients on for its own block
    def sampler_function(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        guider, options = model_k.inner_model, extra_args["model_options"]
        entry = guider.conds["negative"][0]
        embedding = comfy.utils.repeat_to_batch_size(entry["model_conds"]["c_crossattn"].cond, x.shape[0])
        s_in = x.new_ones([x.shape[0]])
        path.append(x.to(store))
        for s in range(len(sigmas) - 1):
            comfy.model_management.throw_exception_if_processing_interrupted()
            target = pivots.latents[-2 - s].to(x)
            embedding = fit_embedding(guider, options, x, sigmas[s], sigmas[s + 1], target, embedding, cfg,
                                      iterations, learning_rate, early_stop + s * EARLY_STOP_PER_STEP)
            guider.conds["negative"] = [_with_embedding(entry, embedding)]
            denoised = model_k(x, sigmas[s] * s_in, **extra_args)  # the full guided step, as a KSampler's
            x = x + to_d(x, sigmas[s], denoised) * (sigmas[s + 1] - sigmas[s])
            path.append(x.to(store))
            embeddings.append(embedding.to(store))
            progress.update(1)
        return x

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    guider.sample(torch.zeros_like(samples, device="cpu"), samples, comfy.samplers.KSAMPLER(sampler_function),
                  sigmas.to(model.load_device), disable_pbar=True, seed=0)
    trajectory = InversionTrajectory(latents=torch.stack(path[::-1]), sigmas=pivots.sigmas, steps=steps,
                                     scheduler=scheduler, base_model=base_model(model),
                                     null_text=torch.cat([e[:1] for e in embeddings]))
    null_negative = step_conditioning(negative, embeddings, sigmas, model.get_model_object("model_sampling"))
    return samples, trajectory, null_negative
