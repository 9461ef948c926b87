"""Randomly initialised SD1.x and SDXL models in the real checkpoint layout, built with ComfyUI's own classes.

Speed does not depend on the weights, so the benchmark times a random full-size SD1.5 (or SDXL) on
a GPU and a tiny one on the CPU; the tests use the tiny ones. ComfyUI's layers skip weight
initialisation, so every tensor gets a seeded value.

- SD1.x: ComfyUI detects it by ``model_channels = 320`` and ``context_dim = 768``. The tiny one
  keeps SD1.5's block layout with every level 320 channels wide.
- SDXL: detected by ``model_channels = 320``, linear transformer projections, the encoder's
  transformer depths ``[0, 0, 2, 2, 10, 10]``, ``context_dim = 2048`` and the ADM input of 2816.
  The tiny one keeps SDXL's block layout and every depth (70 transformer blocks: the same patch
  keys as SDXL) with every level 320 channels wide; its text encoders are SDXL's CLIP-L and
  CLIP-G at their fixed sizes (ComfyUI builds them from its own configs), so prompts go through
  ComfyUI's SDXL CLIP path.

Note that ``transformer_depth_output`` lists the output blocks from the last to the first.
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
_SDXL_COMMON = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2],
                    transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                    transformer_depth_middle=10, context_dim=2048, adm_in_channels=2816, num_classes="sequential",
                    num_head_channels=64, use_spatial_transformer=True, use_linear_in_transformer=True, legacy=False)
SDXL_TINY_UNET = dict(_SDXL_COMMON, channel_mult=(1, 1, 1))
SDXL_UNET = dict(_SDXL_COMMON, channel_mult=(1, 2, 4))
SD_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
          "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def fill(module: torch.nn.Module, seed: int, device: torch.device | str = "cpu",
         dtype: torch.dtype = torch.float32, store: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A seeded value for every parameter and buffer (norms 1, biases 0, weights ~ 1/sqrt(fan_in)), made on
    ``device`` in ``dtype`` (a GPU makes a full-size Flux's 12 billion in seconds), and cast to ``store`` one
    tensor at a time where given (the same values as casting the whole dict afterwards, without holding the
    ``dtype`` copy: SDXL's text encoders are 3.3 GB in float32)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    new = {"device": device, "dtype": dtype}
    out = {}
    for name, t in module.state_dict().items():
        if name.endswith("position_ids"):
            out[name] = torch.arange(t.shape[-1]).expand(t.shape).clone()
            continue
        leaf = name.rsplit(".", 1)[-1]
        if t.ndim <= 1:
            is_norm_weight = leaf in ("weight", "scale") and ("norm" in name or "ln" in name)  # Flux's RMSNorm: scale
            if is_norm_weight:
                out[name] = torch.ones(t.shape, **new)
            elif leaf == "bias":
                out[name] = torch.zeros(t.shape, **new)
            else:
                out[name] = torch.randn(t.shape, generator=gen, **new) * 0.02
        else:
            out[name] = torch.randn(t.shape, generator=gen, **new) / math.sqrt(math.prod(t.shape[1:]))
        if store is not None and out[name].is_floating_point():
            out[name] = out[name].to(store)
    return out


def unet_state_dict(config: dict, seed: int, store: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        unet = UNetModel(**config, device="meta")
    return fill(unet, seed, store=store)


def clip_l_state_dict(seed: int, store: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    import comfy.sd1_clip

    with torch.device("meta"):
        clip = comfy.sd1_clip.SDClipModel(device="meta")
    return {k: v for k, v in fill(clip, seed, store=store).items() if k.startswith("transformer.")}


def vae_state_dict(seed: int, store: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    from comfy.ldm.models.autoencoder import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(ddconfig=SD_VAE, embed_dim=4)
    return fill(vae, seed, store=store)


def sd1_checkpoint(unet: dict, unet_seed: int, shared_seed: int = 0, dtype: torch.dtype = torch.float16,
                   with_text_and_vae: bool = True) -> dict[str, torch.Tensor]:
    """An SD1.x checkpoint state dict: the given UNet, and (unless told not to) the CLIP-L text
    encoder and the SD VAE."""
    sd = {}
    if with_text_and_vae:
        sd.update({"cond_stage_model." + k: v for k, v in clip_l_state_dict(shared_seed, dtype).items()})
        sd.update({"first_stage_model." + k: v for k, v in vae_state_dict(shared_seed + 1, dtype).items()})
    sd.update({"model.diffusion_model." + k: v for k, v in unet_state_dict(unet, unet_seed, dtype).items()})
    return {k: v.contiguous() for k, v in sd.items()}


def sdxl_clip_state_dict(seed: int, store: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """SDXL's two text encoders (CLIP-L and CLIP-G at their real sizes) in the checkpoint's layout,
    converted by ComfyUI's own SDXL saving code."""
    import comfy.sdxl_clip
    import comfy.supported_models

    with torch.device("meta"):
        clip = comfy.sdxl_clip.SDXLClipModel(device="meta")
    sd = {k: v for k, v in fill(clip, seed, store=store).items() if ".transformer." in k}
    return comfy.supported_models.SDXL(_SDXL_COMMON).process_clip_state_dict_for_saving(sd)


def sdxl_checkpoint(unet: dict, unet_seed: int, shared_seed: int = 0, dtype: torch.dtype = torch.float16,
                    with_text_and_vae: bool = True, v_prediction: bool = False,
                    text_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """An SDXL checkpoint state dict: the given UNet and (unless told not to) both text encoders and
    the VAE; ``v_prediction`` adds the ``v_pred`` key by which ComfyUI loads v-prediction finetunes.
    ``text_dtype`` stores the text encoders in another dtype than ``dtype`` (the tests' tiny SDXL: fp8, as
    fp8 checkpoints are saved, so that loading one holds 0.8 GB of them, not 1.6)."""
    sd = {}
    if with_text_and_vae:
        sd.update(sdxl_clip_state_dict(shared_seed, text_dtype or dtype))
        sd.update({"first_stage_model." + k: v for k, v in vae_state_dict(shared_seed + 1, dtype).items()})
    sd.update({"model.diffusion_model." + k: v for k, v in unet_state_dict(unet, unet_seed, dtype).items()})
    if v_prediction:
        sd["v_pred"] = torch.tensor([])
    return {k: v.contiguous() for k, v in sd.items()}


# Flux.1 (dev: guidance embedded). ComfyUI's detection fixes the width at 3072 and 24 heads and reads the block
# counts from the keys (comfy/model_detection.py), so a file of 3072-wide blocks loads through UNETLoader; a
# narrower one is built from this config with ComfyUI's own classes (:func:`flux_patcher`). Rope axes sum to the
# head width, as Flux.1's (16, 56, 56) do for 128.
FLUX_DEV = dict(image_model="flux", in_channels=16, out_channels=16, patch_size=2, vec_in_dim=768,
                context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38,
                axes_dim=[16, 56, 56], theta=10000, qkv_bias=True, guidance_embed=True)
FLUX_TINY = dict(FLUX_DEV, hidden_size=64, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[4, 14, 14])


CHROMA_TINY = dict(image_model="chroma", in_channels=64, out_channels=64, patch_size=2, context_in_dim=4096,
                   hidden_size=64, mlp_ratio=4.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[4, 14, 14],
                   theta=10000, qkv_bias=True, in_dim=64, out_dim=64, hidden_dim=128, n_layers=2)
CHROMA_FULL = dict(CHROMA_TINY, hidden_size=3072, num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56],
                   out_dim=3072, hidden_dim=5120, n_layers=5)

QWEN_IMAGE_FULL = dict(image_model="qwen_image", in_channels=64, out_channels=16, num_layers=60)  # 24 heads of 128
QWEN_IMAGE_TINY = dict(image_model="qwen_image", in_channels=64, out_channels=16, num_layers=2, attention_head_dim=32,
                       num_attention_heads=2, axes_dims_rope=[8, 12, 12])

# SD3/SD3.5 (MMDiT), as ComfyUI's detection reads a file: the width is 64 * depth with heads of 64, so 2 blocks are
# 128 wide with 2 heads; the last block's text stream ends before its MLP. RMS-normed q and k (SD3.5's ln_k), and
# block 0 with SD3.5 Medium's second, image-only attention (x_block.attn2).
SD3_TINY = dict(in_channels=16, out_channels=16, patch_size=2, depth=2, input_size=None, adm_in_channels=2048,
                context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 128}},
                num_patches=64, pos_embed_max_size=8, qk_norm="rms", pos_embed_scaling_factor=None,
                x_block_self_attn_layers=[0])
SD35_LARGE = dict(SD3_TINY, depth=38, context_embedder_config={"target": "torch.nn.Linear",
                                                               "params": {"in_features": 4096, "out_features": 2432}},
                  num_patches=36864, pos_embed_max_size=192, x_block_self_attn_layers=[])  # 2432 wide, 38 heads

# Flux.2 (global modulation; latents packed to 128 channels, one token a latent pixel), as ComfyUI 0.33's detection
# reads a file: heads of 128 (RoPE axes 32 x 4, theta 2000), the width and text width from the keys. Klein 4B: 3072
# wide, 5 double and 20 single blocks, Qwen3-4B's text (3 layers of 2560; InvokeAI's Klein presets).
FLUX2_KLEIN_4B = dict(image_model="flux2", in_channels=128, out_channels=128, patch_size=1, vec_in_dim=None,
                      context_in_dim=7680, hidden_size=3072, mlp_ratio=3.0, num_heads=24, depth=5,
                      depth_single_blocks=20, axes_dim=[32, 32, 32, 32], theta=2000, qkv_bias=False,
                      guidance_embed=False, global_modulation=True, mlp_silu_act=True, ops_bias=False,
                      default_ref_method="index", ref_index_scale=10.0, txt_ids_dims=[3])
FLUX2_TINY = dict(FLUX2_KLEIN_4B, hidden_size=256, num_heads=2, depth=2, depth_single_blocks=2)


def model_config(config: dict):
    """ComfyUI's model config for a diffusion model's config (``image_model`` and sizes, as its detection makes
    one from a state dict), chosen by ComfyUI's own matching."""
    import comfy.model_detection

    from .. import host_api

    found = comfy.model_detection.model_config_from_unet_config(host_api.dit_config(config))
    if found is None:
        raise ValueError(f"ComfyUI matches no model config to {config}")
    return found


# The families whose files are in Black Forest Labs' layout: their RMSNorms' weights are named ``scale``.
BFL_LAYOUT = ("flux", "flux2", "chroma", "chroma_radiance")


def dit_state_dict(config: dict, seed: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                   as_file: bool = False) -> dict[str, torch.Tensor]:
    """A DiT's state dict for ``config`` (any width), seeded, made on ``device``: the running host's module names
    (what a model built in memory loads), or with ``as_file`` the names the family's files have (what a loader
    reads)."""
    with torch.device("meta"):
        model = model_config(config).get_model({}, "", device="meta")
    sd = fill(model.diffusion_model, seed, device, dtype)
    return file_layout(model.diffusion_model, sd) if as_file and config.get("image_model") in BFL_LAYOUT else sd


def file_layout(diffusion_model, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sd`` with its RMSNorms' weights named ``scale``, as Flux and Chroma files have them (and ComfyUI 0.3.64's
    modules; 0.33.0's name them ``weight`` and rename a file's ``scale`` when they load it)."""
    norms = {f"{name}.weight" for name, module in diffusion_model.named_modules()
             if "RMSNorm" in type(module).__name__ and isinstance(getattr(module, "weight", None), torch.Tensor)}
    return {key.removesuffix(".weight") + ".scale" if key in norms else key: value for key, value in sd.items()}


def flux_state_dict(config: dict, seed: int, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32, as_file: bool = False) -> dict[str, torch.Tensor]:
    """A Flux transformer's state dict, seeded, made on ``device`` (:func:`dit_state_dict`)."""
    return dit_state_dict(config, seed, device, dtype, as_file)


def dit_patcher(config: dict, state_dict: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                compute: torch.dtype | None = None):
    """A ComfyUI ModelPatcher of a DiT built from ``config`` (any width), as
    ``comfy.sd.load_diffusion_model_state_dict`` builds a detected one: weights stored in ``dtype``, computed in
    ``compute`` where given (ComfyUI's manual cast, as for fp8 e4m3fn weights, the most common Flux download)."""
    import comfy.model_management
    import comfy.model_patcher

    found = model_config(config)
    found.set_inference_dtype(dtype, compute)
    device = next(iter(state_dict.values())).device  # built where its weights are (a full-size one: the GPU)
    model = found.get_model(state_dict, "", device=device)
    model.load_model_weights(state_dict, "")
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


flux_patcher = dit_patcher
