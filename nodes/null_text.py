"""The Null-Text Inversion node (Mokady et al. 2023), for Pick-and-Draw's reference palette."""

from __future__ import annotations

import comfy.samplers
from comfy_api.v0_0_2 import io

from ..sampling import inversion, null_text
from .inputs import (
    NodeInputError,
    check_conditioning,
    check_latent,
    inversion_schedule_inputs,
    raise_for,
    schema_problem,
)
from .types import Inversion

CATEGORY = "layout_retouch/sampling"
NULL_TEXT = "Null-Text Inversion"


class NullTextInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LR_NullTextInversion",
            display_name=NULL_TEXT,
            category=CATEGORY,
            description="Inverts an encoded image for guided sampling: DDIM inversion, then one unconditional "
                        "embedding fitted per step so that a KSampler at the given cfg, with 'null_negative' as "
                        "its negative, redraws the image.",
            inputs=[
                io.Model.Input("model", tooltip="The model to invert with; sample with the same model."),
                io.Conditioning.Input("positive", tooltip="The prompt describing the image (Mokady et al. use its "
                                      "caption); sample with the same positive."),
                io.Conditioning.Input("negative", tooltip="The unconditional prompt the embeddings start from, a "
                                      "single CLIP Text Encode (the paper: the empty prompt)."),
                io.Latent.Input("latent", tooltip="The image to invert, encoded with VAE Encode."),
                io.Int.Input("steps", default=50, min=1, max=10000,
                             tooltip="Steps of the schedule; use the same steps in the sampler that starts from the "
                                     "inverted latent. Each step costs up to 'iterations' forward and backward passes."),
                *inversion_schedule_inputs(),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="The guidance you will sample with (paper: 7.5); must be above 1, where the "
                                       "unconditional embedding matters."),
                io.Int.Input("iterations", default=10, min=1, max=1000,
                             tooltip="Adam iterations per step at most (paper: 10)."),
                io.Float.Input("learning_rate", default=0.01, min=0.0001, max=1.0, step=0.001, round=0.0001,
                               tooltip="Adam's learning rate for the embeddings (paper: 0.01)."),
                io.Float.Input("early_stop", default=1e-5, min=0.0, max=1.0, step=1e-6, round=1e-7,
                               tooltip="A step stops fitting once its loss falls below early_stop + 2e-5 per step "
                                       "from the noise end (the paper's code: 1e-5)."),
            ],
            outputs=[
                io.Latent.Output(display_name="inverted_latent", tooltip="The noise latent: feed it to a "
                                 "KSamplerAdvanced with add_noise disabled, start_at_step 0, the same steps, "
                                 "scheduler and cfg, and 'null_negative' as negative."),
                Inversion.Output(display_name="inversion", tooltip="The null-text denoising path (every step's "
                                 "latent from the inverted latent down to the reconstruction): the latents CFG "
                                 "sampling with 'null_negative' passes through, for the retouch nodes."),
                io.Conditioning.Output(display_name="null_negative", tooltip="The fitted unconditional embeddings, "
                                       "one per step, each active at its own step only: the negative of the "
                                       "sampler that redraws the image, on the same steps and scheduler, and of "
                                       "the retouch's reference path (Multi-Source Attention Swap's "
                                       "reference_negative) where 'inversion' is its reference_inversion."),
            ],
        )

    @classmethod
    def validate_inputs(cls, sampler_name: str | None = None) -> bool | str:
        # One input (nodes/inputs.py, schema_problem): cfg is checked when the node runs.
        if found := schema_problem(cls, NULL_TEXT, locals()):
            return found
        problem = inversion.sampler_problem(sampler_name)
        return True if problem is None else str(NodeInputError(NULL_TEXT, "sampler_name", *problem))

    @classmethod
    def execute(cls, model, positive, negative, latent, steps, scheduler, sampler_name, cfg, iterations=10,
                learning_rate=0.01, early_stop=1e-5) -> io.NodeOutput:
        node = NULL_TEXT
        raise_for(inversion.sampler_problem(sampler_name), node, "sampler_name")
        raise_for(null_text.cfg_problem(cfg), node, "cfg")
        check_latent(node, "latent", latent["samples"], model)
        check_conditioning(node, "positive", positive, model)
        check_conditioning(node, "negative", negative, model)
        raise_for(null_text.negative_problem(negative), node, "negative")
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)
        raise_for(inversion.schedule_problem(sigmas, scheduler, steps), node, "scheduler")
        samples, trajectory, null_negative = null_text.null_text_invert(
            model, positive, negative, latent, steps, scheduler, cfg, iterations, learning_rate, early_stop)
        out = {k: v for k, v in latent.items() if k != "noise_mask"}
        out["samples"] = samples
        return io.NodeOutput(out, trajectory, null_negative)
