"""The layout template of Pick-and-Draw's layout drawing (P&D Sec. 3.3).

A vanilla model samples with the generation's noise, sigmas and sampler (the user's GUIDER with
the vanilla prompt), for the guided layout steps only; at every step the subject's map of every
cross-attention layer is kept as the layout loss reads it, ``G(Â)``.

The maps come from the very pass the sampler's guidance reads (:func:`.probe.conditional_pass`: the
conditional half alone, with the model options a sampler run gets), at the step's latent, not from
the rows of the sampler's batched CFG pass: a batch of other rows rounds differently, and the
template must equal what the guidance reads when the generation is where the template was (the
layout loss's minimum, where the guidance must not move the latent). That costs one conditional
pass per template step beside the sampler's own.
"""

from __future__ import annotations

import copy

import torch

from ..records import LayoutTemplate, sigma_position
from .losses import layout_map
from .probe import Probe, conditional_pass

TEMPLATE_KEY = "lr_layout_template"


def record_template(guider, noise, sampler, sigmas: torch.Tensor, latent: dict, positions: list[int],
                    layers: tuple, last_step: int, base_model: str) -> LayoutTemplate:
    """Sample ``guider`` for steps ``0 .. last_step`` of ``sigmas`` and keep the subject's maps.

    Args:
        guider: a GUIDER of the vanilla model and the vanilla prompt (e.g. CFGGuider).
        noise: a NOISE (the generation's, so the template shares its seed).
        sampler: the SAMPLER of the generation.
        sigmas: the generation's SIGMAS.
        latent: the LATENT to start from.
        positions: the subject's token positions in the guider's positive prompt.
        layers: every cross-attention layer of the model.
        last_step: the last guided layout step.
        base_model: the vanilla model's base model.
    """
    import comfy.model_management
    import comfy.model_patcher
    import comfy.patcher_extension as ext
    import comfy.sample
    import comfy.utils
    import latent_preview

    store = comfy.model_management.intermediate_device()
    steps = min(last_step + 1, len(sigmas) - 1)
    schedule = sigmas[:steps + 1]
    probe = Probe(positions, map_layers=frozenset(layers), stop=True)
    maps: dict[tuple[int, tuple], torch.Tensor] = {}
    latents: dict[int, torch.Tensor] = {}
    search = schedule[:-1].cpu().float()
    # The options of the generation's sampler run (ComfyUI's CFGGuider adds the schedule to a clone of the
    # guider's), which the guidance's passes get: the template's pass gets the same.
    pass_options = comfy.model_patcher.create_model_options_clone(guider.model_options)
    pass_options.setdefault("transformer_options", {})["sample_sigmas"] = sigmas

    def file_maps(executor, model, conds, x_in, timestep, model_options):
        step = sigma_position(search, timestep.flatten()[0].cpu())
        # A step's first evaluation is at its latent (a second-order sampler's extra one comes after).
        if step is not None and (step, layers[0]) not in maps:
            probe.clear()
            conditional_pass(run, x_in, timestep, pass_options, probe)
            for layer in layers:
                maps[(step, layer)] = layout_map(probe.maps[layer].float()).to(store)
        return executor(model, conds, x_in, timestep, model_options)

    run = copy.copy(guider)  # the caller's guider keeps its options
    run.model_options = comfy.model_patcher.create_model_options_clone(guider.model_options)
    ext.add_wrapper_with_key(ext.WrappersMP.CALC_COND_BATCH, TEMPLATE_KEY, file_maps, run.model_options,
                             is_model_options=True)

    preview = latent_preview.prepare_callback(guider.model_patcher, steps)  # ComfyUI's progress bar and preview

    def callback(step, x0, x, total):
        latents[step] = x.detach().to(store)
        preview(step, x0, x, total)

    latent_image = comfy.sample.fix_empty_latent_channels(guider.model_patcher, latent["samples"])
    run.sample(noise.generate_noise({**latent, "samples": latent_image}), latent_image, sampler, schedule,
               denoise_mask=latent.get("noise_mask"), callback=callback,
               disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=noise.seed)
    return LayoutTemplate(maps=maps, sigmas={s: float(schedule[s]) for s in range(steps)}, latents=latents,
                          base_model=base_model)
