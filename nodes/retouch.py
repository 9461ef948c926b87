"""Stage-2 nodes: the multi-source attention swap patch."""

from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from ..attention.layers import AUTO
from ..attention.patching import record_problem, swap_model
from ..attention.prompts import PromptProblem, path_prompts
from ..attention.session import CacheMode, SourceMode
from ..attention.swap import SwapSpec
from ..records import base_model
from . import labels
from .inputs import (
    AUTO_LAYERS,
    NodeInputError,
    check_mask,
    check_same_size,
    layer_input,
    raise_for,
    schedule_text,
)
from .types import Inversion

CATEGORY = "layout_retouch/retouch"
NODE = "Multi-Source Attention Swap"
# The combo labels, as saved workflows store them, and what each means.
SOURCE_MODES = dict(zip(labels.SOURCE_PATHS, (SourceMode.RECORDED, SourceMode.FAST, SourceMode.REDENOISE), strict=True))
CACHE_MODES = dict(zip(labels.REFERENCE_CACHE, (CacheMode.OFFLOADED, CacheMode.DEVICE, CacheMode.OFF), strict=True))


class MultiSourceAttentionSwap(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LR_MultiSourceAttentionSwap",
            display_name=NODE,
            category=CATEGORY,
            description="Layout-and-Retouch stage 2: patches the personalized model so that a stock KSampler, started "
                        "from the layout's inverted latent, keeps the layout's structure and takes the subject's "
                        "appearance from the reference.",
            inputs=[
                io.Model.Input("model", tooltip="The personalized model."),
                Inversion.Input("reference_inversion", tooltip="DDIM Inversion of the reference photo, or of several "
                                "photos of the subject in one batch (as the paper's {I_r^m}): every target "
                                "reads the keys and values of all of them."),
                Inversion.Input("layout_inversion", tooltip="DDIM Inversion of the layout image (stage 1's output)."),
                io.Conditioning.Input("reference_positive", tooltip="The reference prompt y_r, e.g. 'a photo of sks "
                                      "vase'; also give it to the KSampler."),
                io.Conditioning.Input("reference_negative", tooltip="Negative prompt of the reference path; with a "
                                      "Null-Text Inversion as reference_inversion, its null_negative (one "
                                      "embedding per step, the path CFG sampling walks)."),
                io.Conditioning.Input("layout_positive", tooltip="The layout prompt y_p (stage 1's personalized prompt)."),
                io.Conditioning.Input("layout_negative", tooltip="Negative prompt of the layout path."),
                io.Int.Input("lambda2", default=10, min=0, max=10000,
                             tooltip="Steps in which the target copies the layout's attention (structure); later "
                                     "steps take the reference's self-attention keys and values. Paper: 10 of 50; "
                                     "the schedule's step count means never the reference."),
                io.Int.Input("mask_start", default=30, min=0, max=10000,
                             tooltip="First step of the mask blend (paper: 30, the 31st of 50), at or after lambda2. Needs a "
                                     "mask."),
                io.String.Input("layout_layers", default=AUTO,
                                tooltip="Blocks swapped with the layout while step < lambda2. " + AUTO_LAYERS),
                io.String.Input("reference_layers", default=AUTO,
                                tooltip="Blocks that take the reference's keys and values from lambda2 on, and blend "
                                        "with the mask from mask_start on. " + AUTO_LAYERS),
                io.Combo.Input("source_paths", options=list(SOURCE_MODES), default=labels.RECORDED,
                               tooltip="recorded: the sources follow their inversions exactly. fast: as recorded, "
                                       "but their attention is read from what their DDIM Inversion or Step-Blended "
                                       "KSampler recorded (record_attention on), so those rows do not run. "
                                       "re-denoised (paper): they are denoised again from their inverted noise "
                                       "beside the target."),
                io.Combo.Input("reference_cache", options=list(CACHE_MODES), default=labels.CACHE_RAM,
                               tooltip="Keep the reference's attention after a run, so the next generation with "
                                       "the same reference, model and reference prompts runs no reference rows "
                                       "(recorded and fast modes; in the fast mode only when the reference "
                                       "inversion recorded nothing). It lives as long as ComfyUI caches the "
                                       "reference's DDIM Inversion; its size is in docs/tuning.md."),
                io.Mask.Input("mask", optional=True, tooltip="Where the target keeps its own self-attention (1) or "
                              "takes the layout's (0), from mask_start on. No mask: no blend."),
                io.Combo.Input("reference_positions", options=list(labels.POSITIONS), default=labels.SHIFTED, optional=True,
                               tooltip="DiTs with RoPE (Flux, Chroma, Qwen-Image; a UNet's and SD3's keys carry none to "
                                       "move). shifted: each "
                                       "reference's keys sit beside the image, off the target's positions, so the "
                                       "target takes the subject's look without the photo's layout. shared: at the "
                                       "target's own positions (Stable Flow's injection), which pulls the reference's "
                                       "layout in."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The patched model: sample it with a KSampler "
                                     "(Advanced) from the layout's inverted latent, add_noise disabled, with the "
                                     "inversions' steps and scheduler and sampler ddim or euler.")],
        )

    @classmethod
    def execute(cls, model, reference_inversion, layout_inversion, reference_positive, reference_negative,
                layout_positive, layout_negative, lambda2, mask_start, layout_layers, reference_layers,
                source_paths, reference_cache, mask=None, reference_positions=labels.SHIFTED) -> io.NodeOutput:
        ref, lay = reference_inversion, layout_inversion
        made_with = base_model(model)
        for name, traj in (("reference_inversion", ref), ("layout_inversion", lay)):
            if traj.base_model != made_with:
                raise NodeInputError(NODE, name, f"was made with a {traj.base_model} model, not this {made_with} model.",
                                     "invert with the same personalized model.")
        if not torch.equal(ref.sigmas, lay.sigmas):
            raise NodeInputError(NODE, "reference_inversion", f"walks {schedule_text(ref)} but layout_inversion walks "
                                 f"{schedule_text(lay)}.", "give both DDIM Inversion nodes the same steps and "
                                 "scheduler; a Step-Blended KSampler whose trajectory is the layout path needs "
                                 "denoise 1.0 and the inversion's steps and scheduler.")
        check_same_size(NODE, "layout_inversion", lay.latents[0], "reference_inversion", ref.latents[0])
        steps = len(lay) - 1
        for name, value, meaning in (("lambda2", lambda2, "the layout in every step, never the reference"),
                                     ("mask_start", mask_start, "no blend")):
            if value > steps:
                raise NodeInputError(NODE, name, f"is {value} but the inversions' schedule has {steps} sampling steps "
                                     f"({lay.steps} asked of {lay.scheduler}), so it would never be reached.",
                                     f"set {name} to at most {steps} ({steps}: {meaning}); the paper uses 10 and 30 "
                                     "of 50 steps.")
        if mask_start < lambda2:  # (checked here, after the schedule: a lambda2 beyond it is the root cause)
            raise NodeInputError(NODE, "mask_start", f"is {mask_start}, before lambda2 = {lambda2}: the blend acts "
                                 "only from the reference phase on, so it would start at lambda2 anyway.",
                                 "set mask_start at or after lambda2 (paper: 30 and 10 of 50).")
        prompts = {}  # each source path's prompts, checked and prepared in one place (attention/prompts.py)
        for path, traj, positive, negative in (("reference", ref, reference_positive, reference_negative),
                                               ("layout", lay, layout_positive, layout_negative)):
            try:
                prompts[path] = path_prompts(model, positive, negative, traj)
            except PromptProblem as error:
                raise NodeInputError(NODE, f"{path}_{('positive', 'negative')[error.half]}", *error.problem) from None
        if mask is not None:
            check_mask(NODE, "mask", mask, lay.latents.shape[1])
        spec = SwapSpec(lambda2, mask_start, layer_input(NODE, "layout_layers", layout_layers, model),
                        layer_input(NODE, "reference_layers", reference_layers, model))
        mode = SOURCE_MODES[source_paths]
        if mode is SourceMode.FAST:
            found = record_problem(model, spec, mask, {"layout": lay, "reference": ref})
            if found is not None:
                raise_for(found[1], NODE, found[0])
        return io.NodeOutput(swap_model(
            model, lay, ref, prompts["layout"], prompts["reference"], spec, mode, CACHE_MODES[reference_cache], mask,
            lambda name, problem: NodeInputError(NODE, name, *problem), reference_positions))
