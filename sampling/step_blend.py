"""Stage 1 of Layout-and-Retouch: step-blended denoising (L&R, Sec. 3.2, "step-blended denoising").

The vanilla model draws the first ``lambda1`` steps, where the image's layout is decided, and
the personalized model draws the rest. Both run on one noise and one sigma schedule, and the
latent is handed over with its leftover noise. Computed exactly as two chained stock
KSamplerAdvanced nodes (vanilla: add noise, steps ``0..lambda1``, leftover noise returned;
personalized: no added noise, steps ``lambda1..end``), and as a single stock KSampler when
``lambda1`` is 0 or ``steps``, so every result can be reproduced with stock nodes bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import Problem
from ..records import AttentionRecord, InversionTrajectory, SubjectMapRecord, base_model
from .inversion import Recorder


@dataclass(frozen=True)
class SamplerSettings:
    """The KSampler settings that both models share."""

    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    denoise: float = 1.0
    batch_seeds: tuple[int, ...] = ()  # one seed per latent of the batch; () = ComfyUI's batch noise from ``seed``


def batch_seeds_problem(batch_seeds: tuple[int, ...], batch_size: int) -> Problem | None:
    """Why per-image seeds do not fit a batch of ``batch_size`` latents, or None."""
    if batch_seeds and len(batch_seeds) != batch_size:
        return (f"holds {len(batch_seeds)} seeds for a batch of {batch_size} latents.",
                "give one seed per latent (e.g. '3,4' for a batch of 2), or leave it empty.")
    return None


def _same(a: Any, b: Any) -> bool:
    """Whether two patch or option structures hold the same things: tensors by value (a clone deep-copies its
    model options), anything else but plain values and containers by identity."""
    if a is b:
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):  # (a clone deep-copies its model options)
        return a.shape == b.shape and a.device == b.device and torch.equal(a, b)
    if isinstance(a, (bool, int, float, str, type(None))) and isinstance(b, (bool, int, float, str, type(None))):
        return a == b
    return False


# What a ModelPatcher applies to its base model besides its options (ComfyUI 0.3.64's clone copies each).
APPLIED = ("patches", "object_patches", "hook_patches", "wrappers", "callbacks", "injections", "attachments",
           "additional_models")


def _same_weights(a, b) -> bool:
    """Whether two ModelPatchers' base models hold equal weights (a first difference ends the comparison)."""
    if a.model is b.model:
        return True
    ours, theirs = a.model.state_dict(), b.model.state_dict()
    return ours.keys() == theirs.keys() and all(
        ours[k].shape == theirs[k].shape and torch.equal(ours[k], theirs[k].to(ours[k].device)) for k in ours)


def same_prompts_problem(vanilla, personalized, vanilla_prompts: tuple, personalized_prompts: tuple) -> Problem | None:
    """Why one model in both inputs with the same prompts personalizes nothing, or None. (One node output in both
    inputs is a Textual Inversion's wiring, whose embedding is in the personalized prompt; ComfyUI also hands one
    model to two loaders of the same file.)"""
    if personalized is not vanilla or not _same(list(vanilla_prompts), list(personalized_prompts)):
        return None
    return ("and personalized_negative are vanilla_positive and vanilla_negative, and personalized_model is "
            "vanilla_model itself (or the same file loaded twice), so stage 1 would be a plain generation.",
            "connect the personalized model (a DreamBooth checkpoint, a LoRA loader on the vanilla model), or write "
            "the Textual Inversion embedding ('embedding:name') in the personalized prompt.")


def unpersonalized_problem(vanilla, personalized) -> Problem | None:
    """Why ``personalized`` (a ModelPatcher other than ``vanilla``) is the vanilla model itself with nothing
    applied (equal weights, no patches, the same model options), or None.

    The same node output in both inputs is legal (a Textual Inversion lives in the prompt); another output that
    is the same model is a LoRA that loaded nothing (one of another family: ComfyUI's loader drops every key
    with 'lora key not loaded') or the same checkpoint loaded twice, and stage 1 would be a plain generation.
    """
    if personalized is vanilla:
        return None
    applied = (*APPLIED, "model_options")
    if not (all(_same(getattr(vanilla, name, None), getattr(personalized, name, None)) for name in applied)
            and _same_weights(vanilla, personalized)):
        return None
    return ("is the vanilla model itself with nothing applied (the same weights, no patches), so stage 1 would be a "
            "plain generation of the vanilla model. Likely a LoRA of another family (e.g. an SDXL LoRA on SD1.5: "
            "ComfyUI's loader drops every key, 'lora key not loaded' in its log), or the same checkpoint twice.",
            "load the personalized checkpoint, or a LoRA trained on this base model; for a Textual Inversion "
            "embedding, connect the same model to both inputs and write the embedding in the personalized prompt.")


def initial_noise(latent_image: torch.Tensor, settings: SamplerSettings, batch_index: list[int] | None) -> torch.Tensor:
    """The noise a batch starts from, on the CPU, shaped as ``latent_image`` ``[B, C, H, W]``.

    With ``settings.batch_seeds``, latent ``k`` gets the noise a batch of one gets from seed
    ``batch_seeds[k]``, so each image of the batch equals its single run with that seed;
    otherwise ComfyUI's batch noise (``comfy.sample.prepare_noise``: one seed for the batch,
    ``batch_index`` picking each latent's slice), as a stock KSampler draws it.
    """
    import comfy.sample

    if not settings.batch_seeds:
        return comfy.sample.prepare_noise(latent_image, settings.seed, batch_index)
    return torch.cat([comfy.sample.prepare_noise(latent_image[k:k + 1], seed, None)
                      for k, seed in enumerate(settings.batch_seeds)])


def lambda1_problem(steps: int | None, lambda1: int | None) -> Problem | None:
    """Why ``lambda1`` does not fit ``steps``, or None when it does (or a value is not known yet)."""
    if steps is None or lambda1 is None:
        return None
    if lambda1 < 0:
        return f"is {lambda1}, below 0.", "set lambda1 between 0 (personalized model only) and steps."
    if lambda1 > steps:
        return (f"is {lambda1}, larger than steps = {steps}.",
                "set lambda1 between 0 and steps (the paper uses 5 of 50, 3 for hard layouts), or raise steps.")
    return None


def denoise_problem(denoise: float | None) -> Problem | None:
    """Why ``denoise`` runs no step, or None."""
    if denoise is not None and denoise <= 0:
        return (f"is {denoise}: no step would run, so there is no layout and no trajectory.",
                "set denoise above 0 (1.0 for a new image).")
    return None


def step_blended_sample(
    vanilla_model,
    personalized_model,
    vanilla_conds: tuple[Any, Any],
    personalized_conds: tuple[Any, Any],
    latent: dict[str, torch.Tensor],
    settings: SamplerSettings,
    lambda1: int,
    record: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Denoise ``latent`` with the vanilla model for ``lambda1`` steps, then the personalized one.

    Args:
        vanilla_model, personalized_model: ComfyUI ModelPatchers of one family (checked by the caller).
        vanilla_conds, personalized_conds: ``(positive, negative)`` CONDITIONING for each model.
        latent: a ComfyUI LATENT dict (``samples`` ``[B, 4, H, W]``, optional ``batch_index``, ``noise_mask``).
        settings: seed (or per-image seeds), steps, cfg, sampler, scheduler and denoise, shared by both models.
        lambda1: steps given to the vanilla model, ``0 <= lambda1 <= steps``.
        record: if given, receives the sampler-space latent at the start of every step, in order.

    Returns:
        The denoised samples ``[B, 4, H, W]`` in LATENT space, on ComfyUI's intermediate device.
    """
    import comfy.model_management
    import comfy.sample
    import comfy.utils
    import latent_preview

    s = settings
    latent_image = comfy.sample.fix_empty_latent_channels(personalized_model, latent["samples"])
    noise = initial_noise(latent_image, s, latent.get("batch_index"))
    no_noise = torch.zeros(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout, device="cpu")
    noise_mask = latent.get("noise_mask")
    disable_pbar = not comfy.utils.PROGRESS_BAR_ENABLED
    progress = latent_preview.prepare_callback(personalized_model, s.steps)

    def run(model, conds, add_noise: bool, latent_image, first: int | None, last: int | None, full_denoise: bool):
        def callback(i, x0, x, _total):  # one progress bar over both models' steps
            progress((first or 0) + i, x0, x, s.steps)
            if record is not None:
                record.append(x.detach().to(comfy.model_management.intermediate_device()))
            comfy.model_management.throw_exception_if_processing_interrupted()

        return comfy.sample.sample(
            model, noise if add_noise else no_noise, s.steps, s.cfg, s.sampler_name, s.scheduler, conds[0], conds[1],
            latent_image, denoise=s.denoise, disable_noise=not add_noise, start_step=first, last_step=last,
            force_full_denoise=full_denoise, noise_mask=noise_mask, callback=callback,
            disable_pbar=disable_pbar, seed=s.seed,
        )

    if lambda1 == 0:
        return run(personalized_model, personalized_conds, True, latent_image, None, None, False)
    if lambda1 == s.steps:
        return run(vanilla_model, vanilla_conds, True, latent_image, None, None, False)
    # Arguments as KSamplerAdvanced passes them (nodes.py), so the chain is reproduced exactly.
    layout = run(vanilla_model, vanilla_conds, True, latent_image, 0, lambda1, False)
    return run(personalized_model, personalized_conds, False, layout, lambda1, 10000, True)


def sampling_sigmas(model, settings: SamplerSettings) -> torch.Tensor:
    """The schedule a KSampler with ``settings`` walks (descending, ending at 0), on the CPU."""
    import comfy.samplers

    sampler = comfy.samplers.KSampler(model, settings.steps, "cpu", settings.sampler_name, settings.scheduler,
                                      settings.denoise, model_options=model.model_options)
    return sampler.sigmas.cpu().float()


def recorded_trajectory(model, settings: SamplerSettings, record: list[torch.Tensor],
                        samples: torch.Tensor, attention=None, maps=None) -> InversionTrajectory:
    """Stage 1's own path as an :class:`InversionTrajectory`: the latent at the start of each
    step and, at sigma 0, the layout latent itself, so the retouch can drive its layout path
    along it without inverting the layout (valid for a retouch on the same schedule).

    ``attention``: what the personalized model's steps recorded for a swap (its fast mode), or None;
    ``maps``: what they recorded for a Cross-Attention Mask, or None.
    """
    sigmas = sampling_sigmas(model, settings)
    if len(record) != len(sigmas) - 1:
        raise RuntimeError(f"stage 1 recorded {len(record)} steps for {len(sigmas) - 1} sigmas")
    final = model.get_model_object("latent_format").process_in(samples.to(record[0]))
    latents = torch.stack([final, *reversed(record)])
    return InversionTrajectory(latents=latents, sigmas=sigmas.flip(0), steps=settings.steps,
                               scheduler=settings.scheduler, base_model=base_model(model), attention=attention, maps=maps)


def layout_stage(vanilla_model, personalized_model, vanilla_conds: tuple[Any, Any], personalized_conds: tuple[Any, Any],
                 latent: dict[str, torch.Tensor], settings: SamplerSettings, lambda1: int,
                 recorder: Recorder | None = None,
                 maps: SubjectMapRecord | None = None) -> tuple[dict, InversionTrajectory, dict]:
    """Stage 1 as the Step-Blended KSampler node runs it (arguments as :func:`step_blended_sample`).

    Args:
        recorder: patches the personalized model to record what a swap reads from the layout at
            its steps (the swap's fast mode with this stage's trajectory as the layout path); or None.
        maps: the cross-attention maps the recorder fills at the personalized model's steps, kept
            on the trajectory for a Cross-Attention Mask on it; or None.

    Returns:
        ``(layout, trajectory, start)``: the layout LATENT, stage 1's own path
        (:func:`recorded_trajectory`) and the LATENT it started from (its noise), where a retouch
        along that path starts.
    """
    import comfy.model_management

    record: list[torch.Tensor] = []
    personalized, attention = personalized_model, None
    if recorder is not None:
        attention = AttentionRecord(comfy.model_management.intermediate_device())
        personalized = recorder(personalized_model, attention, sampling_sigmas(personalized_model, settings))
    samples = step_blended_sample(vanilla_model, personalized, vanilla_conds, personalized_conds, latent, settings,
                                  lambda1, record)
    for kept in (attention, maps):
        if kept is not None:
            kept.settle()
    trajectory = recorded_trajectory(personalized_model, settings, record, samples, attention, maps)
    layout = {**latent, "samples": samples}
    start = {"samples": personalized_model.get_model_object("latent_format").process_out(trajectory.latents[-1])}
    return layout, trajectory, start
