"""Input checks of the nodes, and the one error type they raise: what the artist reads.

Algorithms (``sampling/``, ``attention/``, ``masks/``) return a :data:`~..errors.Problem`, or raise
plain exceptions; the node that called them turns either into a :class:`NodeInputError` naming
the node, the input and the fix.
"""

from __future__ import annotations

import comfy.samplers
import torch
from comfy_api.v0_0_2 import io

from ..attention.family import UnsupportedModel
from ..attention.layers import AUTO, auto_layers, layer_problem, model_problem, parse_layers, text_width
from ..attention.prompts import conditioning_problem
from ..errors import Problem, public
from ..records import base_model


@public
class NodeInputError(ValueError):
    """Bad input to a node: the message names the node, the input, the problem and the fix.

    ComfyUI shows the message in its error dialog, so it is written for the artist.
    """

    def __init__(self, node: str, input_name: str, problem: str, fix: str) -> None:
        self.node = node
        self.input_name = input_name
        super().__init__(f"{node}: input '{input_name}': {problem} Fix: {fix}")


def schema_problem(cls, node: str, values: dict) -> str | None:
    """For a node's ``validate_inputs``: the refusal of the first of ``values`` (the inputs it takes) outside its
    schema's bounds or choices, or None. ComfyUI 0.3.64 skips its own min/max and list checks of the inputs a
    ``validate_inputs`` takes, so each node's ``validate_inputs`` calls this first.

    ComfyUI lists a ``validate_inputs`` refusal once per input the function takes, so each node's takes one
    input (tests/host/test_bounds.py): checks across inputs (lambda1 against steps, mask_start against lambda2)
    run first thing when the node executes, where the swap also knows the schedule, the root cause of most."""
    for spec in cls.define_schema().inputs:  # (ComfyUI runs this on a locked copy of the class: no caching)
        value = values.get(spec.id)
        if value is None or isinstance(value, bool):
            continue
        info = spec.as_dict()
        low, high, options = info.get("min"), info.get("max"), info.get("options")
        if isinstance(value, (int, float)) and ((low is not None and value < low) or (high is not None and value > high)):
            span = f"between {low} and {high}" if low is not None and high is not None else \
                f"at least {low}" if low is not None else f"at most {high}"
            side = f"below its minimum {low}" if low is not None and value < low else f"above its maximum {high}"
            return str(NodeInputError(node, spec.id, f"is {value}, {side}.", f"set it {span}."))
        if options and isinstance(value, str) and value not in options:
            shown = ", ".join(f"'{o}'" for o in options[:8]) + (", ..." if len(options) > 8 else "")
            return str(NodeInputError(node, spec.id, f"is '{value}', which the node does not offer.",
                                      f"choose one of {shown}."))
    return None


def raise_for(problem: Problem | None, node: str, input_name: str) -> None:
    """Raise a :class:`NodeInputError` for ``problem``; do nothing when it is None."""
    if problem is not None:
        raise NodeInputError(node, input_name, *problem)


def check_conditioning(node: str, name: str, conditioning, model) -> None:
    """Raise unless every entry of a CONDITIONING has the text width ``model`` reads
    (:func:`~..attention.prompts.conditioning_problem`): a prompt encoded with another family's CLIP."""
    raise_for(conditioning_problem(conditioning, model), node, name)


AUTO_LAYERS = ("'auto' (the default): the model family's: a UNet's decoder at 1/1 and "
               "1/2 of the latent: SD1.x 'output 6-11' (MasaCtrl), SDXL 'output 3-5' (Visual Style Prompting); Flux "
               "and Chroma Stable Flow's vital layers (double 0, 1, 17, 18; single 6, 9, 34, 35, 37); Qwen-Image and "
               "SD3 those layers at the same relative depth. Or e.g. 'output 6-11', 'double 0-18', or 'all'.")


def record_layers_input():
    """The recording nodes' ``attention_layers`` input."""
    return io.String.Input("attention_layers", default=AUTO, optional=True,
                           tooltip="Where to record: the blocks the swap uses (its layout_layers and reference_layers "
                                   "together). " + AUTO_LAYERS)


def layer_input(node: str, name: str, text: str, model, model_input: str = "model"):
    """The layer set written in a node's text input, checked against ``model``'s attention blocks;
    ``auto``: the model family's default (:func:`attention.layers.auto_layers`). A model of a family the pack
    does not support is refused first, at ``model_input``."""
    raise_for(model_problem(model), node, model_input)
    if text.strip().lower() == AUTO:
        return auto_layers(model)
    try:
        parsed = parse_layers(text)
    except ValueError as e:
        raise NodeInputError(node, name, f"'{text}' cannot be read: {e}.", "write e.g. 'output 6-11'.") from None
    raise_for(layer_problem(model, parsed), node, name)
    return parsed


def check_same_family(node: str, name_a: str, model_a, name_b: str, model_b) -> None:
    """Raise unless both models share latent space, conditioning width and noise schedule.

    A DreamBooth checkpoint, a LoRA or a Textual Inversion on the same base pass; SD1.x with
    SDXL or SD2.x does not, since one noise and one latent cannot serve both.
    """
    fam_a, fam_b = base_model(model_a), base_model(model_b)
    ctx_a, ctx_b = _text_width(model_a), _text_width(model_b)
    sampling_a = model_a.get_model_object("model_sampling")
    sampling_b = model_b.get_model_object("model_sampling")
    same = (
        type(model_a.model.latent_format) is type(model_b.model.latent_format)
        and ctx_a == ctx_b
        and model_a.model.model_type == model_b.model.model_type  # eps / v-prediction / flow
        and torch.equal(sampling_a.sigmas.cpu(), sampling_b.sigmas.cpu())
    )
    if not same:
        raise NodeInputError(
            node, name_b,
            f"is a {fam_b} model (text width {ctx_b}) but {name_a} is a {fam_a} model (text width {ctx_a}); "
            "the two must share one latent space and one noise schedule.",
            f"load {name_a} and {name_b} from the same base family (e.g. both SD1.x).",
        )


def _text_width(model) -> int | None:
    """The text width the model reads, as its family knows it (a UNet's ``context_dim``, a DiT's text input), or the
    config's ``context_dim`` where the pack has no family for it (refused at its model input)."""
    try:
        return text_width(model)
    except UnsupportedModel:
        return model.model.model_config.unet_config.get("context_dim")


def check_latent(node: str, input_name: str, samples: torch.Tensor, model) -> None:
    """Raise unless ``samples`` is a non-empty ``[B, C, H, W]`` latent with the model's channels (a video VAE's
    ``[B, C, 1, H, W]`` where the model's latents have a time axis, as Qwen-Image's Wan 2.1 VAE gives them)."""
    frames = model.get_model_object("latent_format").latent_dimensions == 3
    if not (samples.ndim == 4 or (frames and samples.ndim == 5 and samples.shape[2] == 1)):
        raise NodeInputError(node, input_name, f"has shape {tuple(samples.shape)}, not [batch, channels, height, width]"
                             f"{' (or [batch, channels, 1, height, width])' if frames else ''}.",
                             "connect an image latent (VAE Encode or Empty Latent Image).")
    if samples.shape[0] == 0:
        raise NodeInputError(node, input_name, "holds an empty batch (0 latents).",
                             "connect a latent with at least one image (batch_size >= 1).")
    channels = model.get_model_object("latent_format").latent_channels
    if samples.shape[1] != channels:
        raise NodeInputError(node, input_name, f"has {samples.shape[1]} channels but the {base_model(model)} model "
                             f"takes {channels}.", "encode the image with this model's VAE.")
    if min(samples.shape[-2:]) < 1:
        raise NodeInputError(node, input_name, f"has no pixels (size {tuple(samples.shape[-2:])}).",
                             "use an image of at least 8x8 pixels.")


def check_same_size(node: str, name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise unless two latents have the same spatial size."""
    if a.shape[-2:] != b.shape[-2:]:
        ha, wa = (8 * s for s in a.shape[-2:])
        hb, wb = (8 * s for s in b.shape[-2:])
        raise NodeInputError(node, name_b, f"is {wb}x{hb} pixels but {name_a} is {wa}x{ha}.",
                             "resize both images to one size before VAE Encode (e.g. Upscale Image to 512x512).")


def schedule_text(trajectory) -> str:
    """A trajectory's schedule in the words of a message: the sampling steps it really has (ComfyUI's
    ddim_uniform can make more than asked: 7 for 6) and its top sigma (lower after denoise < 1)."""
    return (f"{len(trajectory) - 1} sampling steps of {trajectory.scheduler} ({trajectory.steps} asked) from sigma "
            f"{float(trajectory.sigmas[-1]):.4g}")


def check_mask(node: str, input_name: str, mask: torch.Tensor, batch: int) -> None:
    """Raise unless ``mask`` is a MASK of 1 or ``batch`` images with some foreground."""
    if mask.ndim != 3 or mask.shape[0] not in (1, batch):
        raise NodeInputError(node, input_name, f"has shape {tuple(mask.shape)}: {mask.shape[0] if mask.ndim == 3 else 1} "
                             f"masks for {batch} image(s).", f"give one mask, or one per image ({batch}).")
    if not bool((mask > 0).any()):
        raise NodeInputError(node, input_name, "is all zeros: the target would take the layout's attention "
                             "everywhere from mask_start on.", "check the mask (Adaptive Mask refuses an empty one), "
                             "or disconnect it for no blend.")


def inversion_schedule_inputs() -> list:
    """The scheduler and sampler inputs of an inversion node: the schedule and the sampler that
    will redraw from the inverted latent (DDIM Inversion, Null-Text Inversion)."""
    return [
        io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="ddim_uniform",
                       tooltip="Schedule; use the same as the sampler that starts from the inverted latent."),
        io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default="ddim",
                       tooltip="The sampler that will redraw from the inverted latent: ddim or euler, the "
                               "deterministic ones this inversion retraces."),
    ]
