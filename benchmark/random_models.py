"""Randomly initialised SD1.x models in the real checkpoint layout, built with ComfyUI's own classes.

Speed does not depend on the weights, so the benchmark times a random full-size SD1.5 on a GPU
and a tiny SD1.x (every level 320 channels wide, SD1.5's block layout) on the CPU; the tests use
the tiny one. ComfyUI's layers skip weight initialisation, so every tensor gets a seeded value.
ComfyUI detects SD1.x by ``model_channels = 320`` and ``context_dim = 768``; note that
``transformer_depth_output`` lists the output blocks from the last to the first.
"""

from __future__ import annotations

import math

import torch

_SD1_COMMON = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
                   transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                   transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1,
                   context_dim=768, num_heads=8, num_head_channels=-1, use_spatial_transformer=True,
                   use_linear_in_transformer=False, legacy=False)
SD1_TINY_UNET = dict(_SD1_COMMON, channel_mult=(1, 1, 1, 1))
SD15_UNET = dict(_SD1_COMMON, channel_mult=(1, 2, 4, 4))
SD_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
          "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def fill(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A seeded value for every parameter and buffer (norms 1, biases 0, weights ~ 1/sqrt(fan_in))."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in module.state_dict().items():
        if name.endswith("position_ids"):
            out[name] = torch.arange(t.shape[-1]).expand(t.shape).clone()
            continue
        leaf = name.rsplit(".", 1)[-1]
        if t.ndim <= 1:
            is_norm_weight = leaf == "weight" and ("norm" in name or "ln" in name)
            if is_norm_weight:
                out[name] = torch.ones(t.shape)
            elif leaf == "bias":
                out[name] = torch.zeros(t.shape)
            else:
                out[name] = torch.randn(t.shape, generator=gen) * 0.02
        else:
            out[name] = torch.randn(t.shape, generator=gen) / math.sqrt(math.prod(t.shape[1:]))
    return out


def unet_state_dict(config: dict, seed: int) -> dict[str, torch.Tensor]:
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        unet = UNetModel(**config, device="meta")
    return fill(unet, seed)


def clip_l_state_dict(seed: int) -> dict[str, torch.Tensor]:
    import comfy.sd1_clip

    with torch.device("meta"):
        clip = comfy.sd1_clip.SDClipModel(device="meta")
    return {k: v for k, v in fill(clip, seed).items() if k.startswith("transformer.")}


def vae_state_dict(seed: int) -> dict[str, torch.Tensor]:
    from comfy.ldm.models.autoencoder import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(ddconfig=SD_VAE, embed_dim=4)
    return fill(vae, seed)


def sd1_checkpoint(unet: dict, unet_seed: int, shared_seed: int = 0, dtype: torch.dtype = torch.float16,
                   with_text_and_vae: bool = True) -> dict[str, torch.Tensor]:
    """An SD1.x checkpoint state dict: the given UNet, and (unless told not to) the CLIP-L text
    encoder and the SD VAE."""
    sd = {}
    if with_text_and_vae:
        sd.update({"cond_stage_model." + k: v for k, v in clip_l_state_dict(shared_seed).items()})
        sd.update({"first_stage_model." + k: v for k, v in vae_state_dict(shared_seed + 1).items()})
    sd.update({"model.diffusion_model." + k: v for k, v in unet_state_dict(unet, unet_seed).items()})
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
