"""Pick-and-Draw (Lv et al., ACM MM 2024) as nodes of ComfyUI's custom-sampling graph.

Reference Palette (appearance) and Layout Template (layout) feed the Pick-and-Draw Sampler, a
SAMPLER for SamplerCustomAdvanced with the personalized model's GUIDER, so any scheduler, noise
and the model's other patches still apply.
"""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..attention.layers import ALL, AUTO, cross_attention_problem, layer_keys, layers_at, parse_layers
from ..attention.tokens import subject_positions, subject_problem
from ..guidance.palette import EmptyMask, build_palette, steps_on_path
from ..guidance.sampler import Guidance, guided_sampler
from ..guidance.template import record_template
from ..masks.cross_attention import DEFAULT_RESOLUTION
from ..records import base_model
from .inputs import NodeInputError, check_conditioning, layer_input, raise_for
from .types import Inversion, LayoutTemplate, Palette

CATEGORY = "layout_retouch/pick_and_draw"
PALETTE, TEMPLATE, SAMPLER = "Reference Palette", "Layout Template", "Pick-and-Draw Sampler"


def subject_inputs(prompt_default: str, prompt_tip: str, subject_default: str):
    return [
        io.Clip.Input("clip", tooltip="The CLIP model that encoded the prompt (its tokenizer finds the subject)."),
        io.String.Input("prompt", multiline=True, default=prompt_default, tooltip=prompt_tip),
        io.String.Input("subject", default=subject_default,
                        tooltip="The subject word(s) as in the prompt: the class noun for DreamBooth ('dog' in "
                                "'a sks dog'), 'embedding:name' for Textual Inversion. Several words are summed."),
    ]


def threshold_input(tip: str):
    return io.Float.Input("threshold", default=0.1, min=0.0, max=1.0, step=0.01, tooltip=tip)


def positions_for(node: str, clip, prompt: str, subject: str) -> list[int]:
    raise_for(subject_problem(clip, prompt, subject), node, "subject")
    return subject_positions(clip, prompt, subject)


def step_range(node: str, first_name: str, first: int, last: int) -> range:
    if last < first:
        raise NodeInputError(node, first_name, f"is {first}, after the last step {last}.",
                             "set the first step at or before the last (steps count from 0 at the noise end).")
    return range(first, last + 1)


class ReferencePalette(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LR_ReferencePalette",
            display_name=PALETTE,
            category=CATEGORY,
            description="Pick-and-Draw's palette: along the reference photo's inverted path, the decoder features "
                        "inside the reference's own subject mask at each appearance step, for the sampler's "
                        "appearance loss. One model pass per step; ComfyUI's cache keeps it per photo.",
            inputs=[
                io.Model.Input("model", tooltip="The model the generation uses (the personalized one)."),
                Inversion.Input("reference_inversion", tooltip="The reference's DDIM Inversion (the shipped "
                                "workflows': nearly the paper's palette at a seventeenth of the cost, docs/pick-and-draw.md) or "
                                "Null-Text Inversion (the paper's), with the generation's steps and scheduler."),
                *subject_inputs("a photo of a sks dog", "The reference prompt: the subject in plain words, with "
                                "the personalized token.", "dog"),
                io.Int.Input("appearance_start", default=10, min=0, max=10000,
                             tooltip="First appearance step (paper: 10 of 50, counted from the noise end)."),
                io.Int.Input("appearance_end", default=19, min=0, max=10000,
                             tooltip="Last appearance step, inclusive (paper: 19)."),
                io.String.Input("layers", default=AUTO, tooltip="Layers whose features form the palette: 'auto' = "
                                "the decoder at 1/2 of the latent (32x32 at 512 px, the paper's best; SD1.x "
                                "'output 6-8'), or e.g. 'output 3-5'."),
                threshold_input("tau: the reference's mask is its normalised subject map at or above it (paper: 0.1)."),
                io.Sigmas.Input("sigmas", optional=True, tooltip="The generation's SIGMAS (connect the scheduler "
                                "that feeds SamplerCustomAdvanced): the appearance steps then count on them, as the "
                                "sampler's do. Without it they count on the inversion's own schedule, which differs "
                                "from BasicScheduler's by one step where ddim_uniform's steps do not divide 1000."),
            ],
            outputs=[Palette.Output(display_name="palette", tooltip="For the Pick-and-Draw Sampler.")],
        )

    @classmethod
    def execute(cls, model, reference_inversion, clip, prompt, subject, appearance_start, appearance_end, layers,
                threshold, sigmas=None) -> io.NodeOutput:
        node = PALETTE
        raise_for(cross_attention_problem(model), node, "model")
        positions = positions_for(node, clip, prompt, subject)
        found = steps_on_path(reference_inversion, sigmas,
                              step_range(node, "appearance_start", appearance_start, appearance_end))
        if isinstance(found, tuple):
            raise NodeInputError(node, found[0], *found[1])
        if reference_inversion.base_model != base_model(model):
            raise NodeInputError(node, "reference_inversion", f"was made with a {reference_inversion.base_model} model, "
                                 f"and 'model' is {base_model(model)}.", "invert with the generation's model family.")
        chosen = (layers_at(model, DEFAULT_RESOLUTION) if layers.strip().lower() == AUTO
                  else layer_keys(model, layer_input(node, "layers", layers, model)))
        positive = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
        check_conditioning(node, "clip", positive, model)
        try:
            palette = build_palette(model, positive, reference_inversion, positions, found, chosen, threshold,
                                    base_model(model))
        except EmptyMask as e:
            raise NodeInputError(node, "threshold", f"finds no subject: {e}.",
                                 "lower the threshold, or check the subject word and the reference prompt.") from None
        return io.NodeOutput(palette)


class LayoutTemplateNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LR_LayoutTemplate",
            display_name=TEMPLATE,
            category=CATEGORY,
            description="Pick-and-Draw's layout template: the vanilla model samples the first steps with the "
                        "generation's noise, sigmas and sampler, and every cross-attention layer's subject map is "
                        "kept (min-max normalised, Gaussian-smoothed) for the sampler's layout loss.",
            inputs=[
                io.Noise.Input("noise", tooltip="The generation's NOISE (same seed)."),
                io.Guider.Input("guider", tooltip="A guider of the vanilla model with the vanilla prompt "
                                "(e.g. CFGGuider: plain SD 1.5, 'a dog in the snow')."),
                io.Sampler.Input("sampler", tooltip="The generation's base SAMPLER (e.g. ddim)."),
                io.Sigmas.Input("sigmas", tooltip="The generation's SIGMAS."),
                io.Latent.Input("latent_image", tooltip="The generation's starting LATENT."),
                *subject_inputs("a photo of a dog in the snow", "The vanilla prompt, as encoded for 'guider'.", "dog"),
                io.Int.Input("last_step", default=9, min=0, max=10000,
                             tooltip="Sample and keep maps up to this step (the sampler's last layout step; paper: 9)."),
            ],
            outputs=[LayoutTemplate.Output(display_name="template", tooltip="For the Pick-and-Draw Sampler.")],
        )

    @classmethod
    def execute(cls, noise, guider, sampler, sigmas, latent_image, clip, prompt, subject, last_step) -> io.NodeOutput:
        node = TEMPLATE
        model = guider.model_patcher
        raise_for(cross_attention_problem(model), node, "guider")
        positions = positions_for(node, clip, prompt, subject)
        if len(sigmas) < 2:
            raise NodeInputError(node, "sigmas", "holds no step.", "connect a scheduler's SIGMAS with steps >= 1.")
        layers = layer_keys(model, parse_layers(ALL))
        return io.NodeOutput(record_template(guider, noise, sampler, sigmas, latent_image, positions, layers,
                                             last_step, base_model(model)))


class PickAndDrawSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LR_PickAndDrawSampler",
            display_name=SAMPLER,
            category=CATEGORY,
            description="A SAMPLER for SamplerCustomAdvanced: the base sampler with Pick-and-Draw's gradient guidance "
                        "on the latent (appearance from the palette, layout from the template) in the first steps, "
                        "each update at most as far as the loss's linearised minimum (so a generation at the "
                        "minimum stays put); each guided step logs its losses and the update's size. Without "
                        "palette and template, or with alpha = beta = 0, it is the base sampler.",
            inputs=[
                io.Sampler.Input("sampler", tooltip="The base SAMPLER that takes the steps (paper: ddim)."),
                *subject_inputs("a photo of a sks dog in the snow", "The generation's positive prompt, as encoded "
                                "for the GUIDER.", "dog"),
                Palette.Input("palette", optional=True, tooltip="Reference Palette: the appearance loss. None: off."),
                LayoutTemplate.Input("template", optional=True, tooltip="Layout Template: the layout loss. None: off."),
                io.Float.Input("eta", default=10.0, min=0.0, max=1000.0, step=0.1,
                               tooltip="Guidance ratio eta_g (paper: 10)."),
                io.Float.Input("alpha", default=10.0, min=0.0, max=1000.0, step=0.1,
                               tooltip="Appearance loss weight (paper: 10)."),
                io.Float.Input("beta", default=100.0, min=0.0, max=10000.0, step=1.0,
                               tooltip="Layout loss weight (paper: 100)."),
                io.Int.Input("layout_start", default=0, min=0, max=10000, tooltip="First layout step (paper: 0)."),
                io.Int.Input("layout_end", default=9, min=0, max=10000, tooltip="Last layout step, inclusive (paper: 9)."),
                io.Int.Input("appearance_start", default=10, min=0, max=10000,
                             tooltip="First appearance step (paper: 10)."),
                io.Int.Input("appearance_end", default=19, min=0, max=10000,
                             tooltip="Last appearance step, inclusive (paper: 19)."),
                io.Int.Input("iterations", default=3, min=0, max=100, tooltip="Updates per guided step (paper: 3)."),
                threshold_input("tau: the generation's mask is its normalised subject map at or above it (paper: 0.1)."),
            ],
            outputs=[io.Sampler.Output(display_name="sampler", tooltip="Connect to SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, sampler, clip, prompt, subject, eta, alpha, beta, layout_start, layout_end, appearance_start,
                appearance_end, iterations, threshold, palette=None, template=None) -> io.NodeOutput:
        node = SAMPLER
        positions = positions_for(node, clip, prompt, subject)
        guidance = Guidance(eta, alpha, beta, step_range(node, "layout_start", layout_start, layout_end),
                            step_range(node, "appearance_start", appearance_start, appearance_end), iterations,
                            threshold)

        def report(input_name: str, problem) -> None:
            raise NodeInputError(node, input_name, *problem)

        return io.NodeOutput(guided_sampler(sampler, guidance, positions, palette, template,
                                            base_model, report, cross_attention_problem))
