"""Checks that models and latents fit together, with errors an artist can act on."""

from __future__ import annotations

import torch

from ..errors import NodeInputError


def model_family(model) -> str:
    """ComfyUI's name for the model's architecture, e.g. ``SD15``, ``SDXL``, ``Segmind_Vega``."""
    return type(model.model.model_config).__name__


def check_same_family(node: str, name_a: str, model_a, name_b: str, model_b) -> None:
    """Raise unless both models share latent space, conditioning width and noise schedule.

    A DreamBooth checkpoint, a LoRA or a Textual Inversion on the same base pass; SD1.x with
    SDXL or SD2.x does not, since one noise and one latent cannot serve both.
    """
    fam_a, fam_b = model_family(model_a), model_family(model_b)
    ctx_a = model_a.model.model_config.unet_config.get("context_dim")
    ctx_b = model_b.model.model_config.unet_config.get("context_dim")
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


def check_latent(node: str, input_name: str, samples: torch.Tensor, model) -> None:
    """Raise unless ``samples`` is a non-empty ``[B, C, H, W]`` latent with the model's channels."""
    if samples.ndim != 4:
        raise NodeInputError(node, input_name, f"has shape {tuple(samples.shape)}, not [batch, channels, height, width].",
                             "connect an image latent (VAE Encode or Empty Latent Image).")
    if samples.shape[0] == 0:
        raise NodeInputError(node, input_name, "holds an empty batch (0 latents).",
                             "connect a latent with at least one image (batch_size >= 1).")
    channels = model.get_model_object("latent_format").latent_channels
    if samples.shape[1] != channels:
        raise NodeInputError(node, input_name, f"has {samples.shape[1]} channels but the {model_family(model)} model "
                             f"takes {channels}.", "encode the image with this model's VAE.")
    if min(samples.shape[2:]) < 1:
        raise NodeInputError(node, input_name, f"has no pixels (size {tuple(samples.shape[2:])}).",
                             "use an image of at least 8x8 pixels.")


def check_same_size(node: str, name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise unless two latents have the same spatial size."""
    if a.shape[-2:] != b.shape[-2:]:
        ha, wa = (8 * s for s in a.shape[-2:])
        hb, wb = (8 * s for s in b.shape[-2:])
        raise NodeInputError(node, name_b, f"is {wb}x{hb} pixels but {name_a} is {wa}x{ha}.",
                             "resize both images to one size before VAE Encode (e.g. Upscale Image to 512x512).")
