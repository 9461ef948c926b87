"""Stage-1 sampling and DDIM inversion nodes."""

from __future__ import annotations

from functools import partial

import comfy.model_management
import comfy.samplers
from comfy_api.v0_0_2 import io

from ..attention.layers import AUTO
from ..attention.recording import add_recording
from ..masks.cross_attention import DEFAULT_RESOLUTION
from ..records import SubjectMapRecord, map_key
from ..sampling import inversion, step_blend
from . import labels
from .inputs import (
    NodeInputError,
    check_conditioning,
    check_latent,
    check_same_family,
    inversion_schedule_inputs,
    layer_input,
    raise_for,
    record_layers_input,
    schema_problem,
)
from .types import Inversion

CATEGORY = "layout_retouch/sampling"
STEP_BLENDED = "Step-Blended KSampler"
BOTH = labels.RECORD_BOTH
# DDIM Inversion's record_for: the swap's paths this image is recorded for.
RECORD_FOR = dict(zip(labels.RECORD_FOR, (("layout", "reference"), ("reference",), ("layout",)), strict=True))
DDIM_INVERSION = "DDIM Inversion"
SEED_MAX = 0xFFFFFFFFFFFFFFFF


class StepBlendedKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LR_StepBlendedKSampler",
            display_name=STEP_BLENDED,
            category=CATEGORY,
            description="Layout-and-Retouch stage 1: the vanilla model draws the first lambda1 steps (a free layout), "
                        "the personalized model the rest (the subject), on one noise and one schedule.",
            inputs=[
                io.Model.Input("vanilla_model", tooltip="Plain base model (e.g. SD 1.5) that draws the layout."),
                io.Model.Input("personalized_model", tooltip="Your subject's model: a DreamBooth checkpoint, the base "
                               "model with a LoRA, or the base model itself when the prompt uses an embedding."),
                io.Conditioning.Input("vanilla_positive", tooltip="The prompt without the personalized token, "
                                      "e.g. 'a red vase on a beach'."),
                io.Conditioning.Input("vanilla_negative", tooltip="Negative prompt for the vanilla model."),
                io.Conditioning.Input("personalized_positive", tooltip="The same prompt with the personalized token, "
                                      "e.g. 'a sks vase on a beach' or 'a embedding:my_vase vase on a beach'."),
                io.Conditioning.Input("personalized_negative", tooltip="Negative prompt for the personalized model."),
                io.Latent.Input("latent_image", tooltip="The latent to denoise (Empty Latent Image, or an encoded "
                                "image with denoise < 1)."),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                             tooltip="Seed of the one noise both models share."),
                io.Int.Input("steps", default=50, min=1, max=10000, tooltip="Total denoising steps (paper: 50)."),
                io.Int.Input("lambda1", default=5, min=0, max=10000,
                             tooltip="Steps drawn by the vanilla model before the personalized model takes over. "
                                     "Paper: 5 of 50, 3 for hard layouts. 0 = personalized only, steps = vanilla only."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale for both models."),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default="ddim",
                               tooltip="Sampler for both models (paper: DDIM)."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="ddim_uniform",
                               tooltip="Noise schedule for both models (paper: DDIM's uniform timesteps)."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the schedule to run; below 1 keeps the input latent's structure."),
                io.Boolean.Input("record_attention", default=False, optional=True,
                                 tooltip="Keep what a Multi-Source Attention Swap reads from the layout at the "
                                         "personalized model's steps, for the swap's fast mode with 'trajectory' as "
                                         "its layout path (the vanilla steps still run as rows), and the "
                                         "decoder's cross-attention at 1/2 of the latent, which a Cross-Attention "
                                         "Mask on 'trajectory' with this prompt reads instead of running the model. "
                                         "Exact: it is the very computation those nodes would repeat. Costs RAM: "
                                         "docs/tuning.md gives the size."),
                record_layers_input(),
                io.String.Input("batch_seeds", default="", optional=True, force_input=True,
                                tooltip="One seed per latent of the batch, e.g. '3,4' (the headless runner's "
                                        "--batch sets it): latent k starts from the noise of its own seed, so each "
                                        "image equals its single run with that seed. Empty: 'seed' for the batch, "
                                        "as a stock KSampler draws it."),
            ],
            outputs=[
                io.Latent.Output(display_name="layout_latent", tooltip="The layout latent: decode it to see the "
                                 "layout image, or invert it for the retouch stage."),
                Inversion.Output(display_name="trajectory", tooltip="Stage 1's own path (every step's latent, ending "
                                 "at the layout latent): use it as the retouch's layout inversion, with the same "
                                 "steps and scheduler, and no layout inversion is needed."),
                io.Latent.Output(display_name="start_latent", tooltip="The noise stage 1 started from: with "
                                 "'trajectory' as the layout path, the retouch sampler starts here."),
            ],
        )

    @classmethod
    def validate_inputs(cls, denoise: float | None = None) -> bool | str:
        # One input (nodes/inputs.py, schema_problem): lambda1 against steps is checked when the node runs.
        if found := schema_problem(cls, STEP_BLENDED, locals()):
            return found
        problem = step_blend.denoise_problem(denoise)
        return True if problem is None else str(NodeInputError(STEP_BLENDED, "denoise", *problem))

    @classmethod
    def execute(cls, vanilla_model, personalized_model, vanilla_positive, vanilla_negative, personalized_positive,
                personalized_negative, latent_image, seed, steps, lambda1, cfg, sampler_name, scheduler,
                denoise, record_attention=False, attention_layers=AUTO, batch_seeds="") -> io.NodeOutput:
        node = STEP_BLENDED
        raise_for(step_blend.lambda1_problem(steps, lambda1), node, "lambda1")
        raise_for(step_blend.denoise_problem(denoise), node, "denoise")
        seeds = seed_list(batch_seeds)
        raise_for(step_blend.batch_seeds_problem(seeds, latent_image["samples"].shape[0]), node, "batch_seeds")
        check_same_family(node, "vanilla_model", vanilla_model, "personalized_model", personalized_model)
        raise_for(step_blend.unpersonalized_problem(vanilla_model, personalized_model), node, "personalized_model")
        raise_for(step_blend.same_prompts_problem(vanilla_model, personalized_model, (vanilla_positive, vanilla_negative),
                                                  (personalized_positive, personalized_negative)),
                  node, "personalized_positive")
        check_latent(node, "latent_image", latent_image["samples"], personalized_model)
        for name, conditioning, model in (("vanilla_positive", vanilla_positive, vanilla_model),
                                          ("vanilla_negative", vanilla_negative, vanilla_model),
                                          ("personalized_positive", personalized_positive, personalized_model),
                                          ("personalized_negative", personalized_negative, personalized_model)):
            check_conditioning(node, name, conditioning, model)
        recorder = maps = None
        if record_attention:
            layers = layer_input(node, "attention_layers", attention_layers, personalized_model, "personalized_model")
            maps = SubjectMapRecord(DEFAULT_RESOLUTION, map_key(personalized_model, personalized_positive),
                                    comfy.model_management.intermediate_device())
            recorder = partial(add_recording, layers=layers, paths=("layout",), maps=maps)
        return io.NodeOutput(*step_blend.layout_stage(
            vanilla_model, personalized_model, (vanilla_positive, vanilla_negative),
            (personalized_positive, personalized_negative), latent_image,
            step_blend.SamplerSettings(seed, steps, cfg, sampler_name, scheduler, denoise, seeds), lambda1, recorder,
            maps))


def seed_list(text: str) -> tuple[int, ...]:
    """``'3, 4,5'`` -> ``(3, 4, 5)``; an empty text -> ``()``."""
    try:
        return tuple(int(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise NodeInputError(STEP_BLENDED, "batch_seeds", f"'{text}' is not a list of whole numbers.",
                             "write seeds separated by commas, e.g. '3,4', or leave it empty.") from None


class DDIMInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LR_DDIMInversion",
            display_name=DDIM_INVERSION,
            category=CATEGORY,
            description="Runs deterministic DDIM backwards from an encoded image to noise, so that a KSampler "
                        "(add_noise disabled) on the same schedule redraws the image; keeps the whole path.",
            inputs=[
                io.Model.Input("model", tooltip="The model to invert with (the personalized model in the paper)."),
                io.Conditioning.Input("positive", tooltip="Prompt for the inversion; the paper uses the empty prompt."),
                io.Latent.Input("latent", tooltip="The image to invert, encoded with VAE Encode."),
                io.Int.Input("steps", default=50, min=1, max=10000,
                             tooltip="Steps of the schedule; use the same steps as the sampler that starts from the "
                                     "inverted latent."),
                *inversion_schedule_inputs(),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Guidance during inversion; 1.0 (the paper's) uses the positive prompt alone."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Negative prompt, needed when cfg is not 1, and for recording the "
                                              "attention of both CFG halves."),
                io.Boolean.Input("record_attention", default=False, optional=True,
                                 tooltip="Keep the attention a Multi-Source Attention Swap reads from this image, "
                                         "for its fast mode (no source rows in the retouch pass). Exact when this "
                                         "node's positive and negative are the swap's prompts for this image; "
                                         "without a negative the positive half stands in for both CFG halves. "
                                         "Costs one more model evaluation (and the negative half, if connected) "
                                         "and RAM: docs/tuning.md gives the size."),
                record_layers_input(),
                io.Combo.Input("record_for", options=list(RECORD_FOR), default=BOTH, optional=True,
                               tooltip="What to record: what the swap reads from this image as its reference (the "
                                       "self-attention's input, from which its keys and values are projected), "
                                       "as its layout (the attention outputs), or both. A reference's record is "
                                       "a third of both's size."),
            ],
            outputs=[
                io.Latent.Output(display_name="inverted_latent", tooltip="The noise latent: feed it to a "
                                 "KSamplerAdvanced with add_noise disabled, start_at_step 0, same steps and scheduler."),
                Inversion.Output(display_name="inversion", tooltip="Every latent of the inversion, for the retouch "
                                 "nodes."),
            ],
        )

    @classmethod
    def validate_inputs(cls, sampler_name: str | None = None) -> bool | str:
        if found := schema_problem(cls, DDIM_INVERSION, locals()):
            return found
        problem = inversion.sampler_problem(sampler_name)
        return True if problem is None else str(NodeInputError(DDIM_INVERSION, "sampler_name", *problem))

    @classmethod
    def execute(cls, model, positive, latent, steps, scheduler, sampler_name, cfg, negative=None,
                record_attention=False, attention_layers=AUTO, record_for=BOTH) -> io.NodeOutput:
        node = DDIM_INVERSION
        raise_for(inversion.sampler_problem(sampler_name), node, "sampler_name")
        if negative is None and abs(cfg - 1.0) > 1e-6:
            raise NodeInputError(node, "negative", f"is not connected but cfg is {cfg}.",
                                 "connect a negative CONDITIONING (e.g. the empty prompt), or set cfg to 1.0.")
        check_latent(node, "latent", latent["samples"], model)
        for name, conditioning in (("positive", positive), ("negative", negative)):
            if conditioning is not None:
                check_conditioning(node, name, conditioning, model)
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)
        raise_for(inversion.schedule_problem(sigmas, scheduler, steps), node, "scheduler")
        recorder = None
        if record_attention:
            recorder = partial(add_recording, layers=layer_input(node, "attention_layers", attention_layers, model),
                               paths=RECORD_FOR[record_for])
        samples, trajectory = inversion.ddim_invert(model, positive, negative, latent, steps, scheduler, cfg, recorder)
        out = {k: v for k, v in latent.items() if k != "noise_mask"}
        out["samples"] = samples
        return io.NodeOutput(out, trajectory)
