"""Recording attention during a sampler run: the subject's cross-attention maps (MasaCtrl's and DreamMatcher's),
through the model family's map-capture patches (:mod:`.maps` keeps them), and the evaluation of a recorded path.
"""

from __future__ import annotations

import torch

from .families import family_of
from .layer_set import LayerSet
from .maps import AttentionStore

CAPTURE_KEY = "lr_attention_capture"


def add_map_capture(model, store, layers: LayerSet, steps: range | None, resolution: int | None,
                    sampling_sigmas: torch.Tensor | None = None):
    """A clone of ``model`` adding the cross-attention maps of ``layers`` at ``steps`` (None: all;
    counted on ``sampling_sigmas`` when given, else on each run's own schedule) and latent size /
    ``resolution`` (None: any) to ``store`` (an :class:`AttentionStore` or a
    :class:`~..records.SubjectMapRecord`); patches already on the keys are chained."""
    m = model.clone()
    family_of(model).install_map_capture(m, model, store, layers, steps, resolution, sampling_sigmas)
    return m


def add_capture(model, store: AttentionStore, layers: LayerSet, steps: range | None, resolution: int | None,
                self_kv: bool = False):
    """A clone of ``model`` recording into ``store``, which each sampler run starts afresh (with ``self_kv``, a
    UNet's self-attention keys and values too); patches already on the keys are chained."""
    import comfy.patcher_extension as ext

    m = model.clone()
    family_of(model).install_map_capture(m, model, store, layers, steps, resolution, self_kv=self_kv)

    def reset_each_run(executor, *args, **kwargs):
        store.clear()
        return executor(*args, **kwargs)

    ext.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, CAPTURE_KEY, reset_each_run, m.model_options,
                             is_model_options=True)
    return m


def averaged_steps(n_steps: int, count: int) -> list[int]:
    """``count`` denoising steps spread evenly over ``0 .. n_steps - 1`` (all when count >= n_steps)."""
    if count >= n_steps:
        return list(range(n_steps))
    return sorted({round(i * (n_steps - 1) / max(count - 1, 1)) for i in range(count)})


def record_on_trajectory(model, positive, trajectory, steps: list[int], visit=None) -> None:
    """Evaluate ``model`` (with capture patches) at a recorded path's latents, at denoising ``steps``.

    No sampling happens: each chosen step's recorded latent is fed to the model once, through
    ComfyUI's own guider (conditioning, the model's patches, CFG 1). With ``visit``, it is called
    instead as ``visit(guider, model_options, latent, sigma, step)`` inside the guider's run
    (conds processed, model loaded), to make its own passes.
    """
    import comfy.model_management
    import comfy.samplers
    import comfy.utils

    sigmas = trajectory.sampling_sigmas[steps]
    latents = trajectory.latents.flip(0)[steps]  # denoising order
    progress = comfy.utils.ProgressBar(len(steps))

    @torch.no_grad()  # as k-diffusion's samplers: no autograd graph across the steps
    def sampler_function(model_k, x, sigmas_in, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(steps)):
            comfy.model_management.throw_exception_if_processing_interrupted()
            latent, sigma = latents[i].to(x), sigmas[i].to(x) * s_in
            if visit is None:
                model_k(latent, sigma, **(extra_args or {}))
            else:
                visit(model_k.inner_model, extra_args["model_options"], latent, sigma, steps[i])
            progress.update(1)
        return x

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, positive)
    guider.set_cfg(1.0)
    shape = trajectory.latents.shape[1:]
    # The sigma list ends with one extra value so that every chosen sigma is a step's start.
    schedule = torch.cat([sigmas, sigmas[-1:] * 0])
    guider.sample(torch.zeros(shape), torch.zeros(shape), comfy.samplers.KSAMPLER(sampler_function),
                  schedule.to(model.load_device), disable_pbar=True, seed=0)


def capture_model(model, layers: LayerSet, steps: range | None, self_kv: bool = False):
    """``(patched, store)``: a clone of ``model`` whose every sampler run records ``layers``'
    cross-attention maps (and self-attention K/V when ``self_kv``) at ``steps`` into ``store``
    (the Attention Capture node)."""
    store = AttentionStore()
    return add_capture(model, store, layers, steps, None, self_kv), store
