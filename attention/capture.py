"""Recording attention during a sampler run (MasaCtrl's and DreamMatcher's cross-attention maps).

Cross-attention probabilities ``softmax(Q K^T / sqrt(d))`` are computed for the positive
(conditional) target rows only, averaged over heads and summed over the steps in range, per
layer: ``[B, h*w, tokens]`` each, never a self-attention map. The attention output itself still
comes from ComfyUI's ``optimized_attention`` (or a patch already on the key, which is chained).
Optionally the self-attention keys and values of those rows are kept per layer and step,
offloaded to ComfyUI's intermediate device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import public
from ..records import StepOfCall
from .attend import ROWS_KEY, attend_as_before
from .family import family_of
from .layers import LayerSet, layer_keys, replace_patch

CAPTURE_KEY = "lr_attention_capture"


@public
class NothingRecorded(LookupError):
    """A store holds no cross-attention for what was asked."""


@dataclass
class AttentionStore:
    """What an Attention Capture patch recorded in the latest sampler run (reset at each run).

    Attributes:
        maps: per layer ``(block_name, block_id, block_index)``: the head-averaged cross-attention
            probabilities of the conditional target rows, ``[B, h*w, tokens]``, summed over steps.
        counts: per layer, how many steps were summed into ``maps``.
        sizes: per layer, the ``(h, w)`` of its tokens.
        kv: per ``(layer, step)``: self-attention ``(K, V)`` ``[B, h*w, inner]``, when asked for.
        latent_size: the ``(H, W)`` of the latent sampled, for resizing to the image.
    """

    maps: dict[tuple, torch.Tensor] = field(default_factory=dict)
    counts: dict[tuple, int] = field(default_factory=dict)
    sizes: dict[tuple, tuple[int, int]] = field(default_factory=dict)
    kv: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    latent_size: tuple[int, int] | None = None

    def clear(self) -> None:
        self.maps.clear()
        self.counts.clear()
        self.sizes.clear()
        self.kv.clear()
        self.latent_size = None

    def add_cross(self, layer: tuple, step: int, size: tuple[int, int], probs: torch.Tensor) -> None:
        self.sizes[layer] = size
        self.maps[layer] = probs if layer not in self.maps else self.maps[layer] + probs
        self.counts[layer] = self.counts.get(layer, 0) + 1

    def average(self, positions: list[int], layers: list[tuple] | None = None) -> torch.Tensor:
        """The mean map of the summed token ``positions`` over ``layers`` (default: all) at the
        finest recorded size among them, ``[B, h, w]``."""
        layers = [k for k in (layers or self.maps) if self.counts.get(k)]
        if not layers:
            raise NothingRecorded("no cross-attention was recorded")
        h, w = max((self.sizes[k] for k in layers), key=lambda s: s[0] * s[1])
        total = None
        for k in layers:
            lh, lw = self.sizes[k]
            m = self.maps[k][:, :, positions].sum(-1) / self.counts[k]
            m = m.reshape(-1, 1, lh, lw)
            if (lh, lw) != (h, w):
                m = torch.nn.functional.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
            total = m if total is None else total + m
        return (total / len(layers))[:, 0]


def conditional_rows(extra_options: dict, rows_total: int) -> torch.Tensor:
    """Indices of the positive-prompt target rows of a call (none in a swap's call of source rows only)."""
    halves = list(extra_options.get("cond_or_uncond", [0]))
    swap_rows = extra_options.get(ROWS_KEY)
    per_half = swap_rows.per_half if swap_rows is not None else rows_total // len(halves)
    batch = swap_rows.batch if swap_rows is not None else per_half
    picked = [h * per_half + b for h, half in enumerate(halves) if half == 0 for b in range(batch)]
    return torch.tensor(picked, dtype=torch.long)


def cross_attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """Head-averaged ``softmax(Q K^T / sqrt(d))``: ``[rows, tokens_q, tokens_k]``."""
    b, n, inner = q.shape
    d = inner // heads
    dtype = torch.promote_types(q.dtype, torch.float32)  # float32 at least (float64 stays)
    qh = q.reshape(b, n, heads, d).transpose(1, 2).to(dtype)
    kh = k.reshape(b, k.shape[1], heads, d).transpose(1, 2).to(dtype)
    return torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1).mean(1)


class CaptureAttention:
    """An ``attn2`` (or, for K/V, ``attn1``) replace patch that records and then attends as usual."""

    def __init__(self, kind: str, store: AttentionStore, steps: range | None, resolution: int | None,
                 chained=None, sampling_sigmas: torch.Tensor | None = None) -> None:
        self.kind = kind
        self.store = store
        self.steps = steps
        self.resolution = resolution  # keep only layers at latent size / resolution; None = all
        self.chained = chained
        # Steps counted on this schedule; None: on the running sampler's own (a KSamplerAdvanced
        # that starts at step 10 counts its first step as 0 there).
        self.sigmas = None if sampling_sigmas is None else sampling_sigmas[:-1]
        self.position = StepOfCall()

    def step_of(self, extra_options: dict) -> int | None:
        sigmas = extra_options.get("sample_sigmas") if self.sigmas is None else self.sigmas
        if sigmas is None:
            return None
        return self.position(extra_options["sigmas"], sigmas)

    def wanted(self, extra_options: dict) -> tuple | None:
        h, w = extra_options["activations_shape"][-2:]
        latent_h = extra_options["original_shape"][-2]
        # The UNet halves odd sizes rounding up (stride-2 convolutions, padding 1): ceil at each level.
        if self.resolution is not None and h != -(-latent_h // self.resolution):
            return None
        step = self.step_of(extra_options)
        if step is None or (self.steps is not None and step not in self.steps):
            return None
        return (*extra_options["block"], extra_options["block_index"]), step, (h, w)

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        out = attend_as_before(self.chained, q, k, v, extra_options)
        found = self.wanted(extra_options)
        rows = conditional_rows(extra_options, q.shape[0]).to(q.device, non_blocking=True)
        if found is not None and len(rows):
            layer, step, size = found
            store = self.store
            store.latent_size = tuple(extra_options["original_shape"][-2:])
            if self.kind == "cross":
                store.add_cross(layer, step, size, cross_attention_probs(q[rows], k[rows], heads).to(torch.float32))
            else:
                import comfy.model_management

                dest = comfy.model_management.intermediate_device()
                store.sizes[layer] = size
                store.kv[(layer, step)] = (k[rows].detach().to(dest), v[rows].detach().to(dest))
        return out


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
    """A clone of ``model`` recording into ``store``, which each sampler run starts afresh;
    patches already on the keys are chained."""
    import comfy.patcher_extension as ext

    m = add_map_capture(model, store, layers, steps, resolution)
    if self_kv:
        for key in layer_keys(model, layers):
            patch = CaptureAttention("self", store, steps, resolution, replace_patch(model, "attn1", key))
            m.set_model_attn1_replace(patch, *key)

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
