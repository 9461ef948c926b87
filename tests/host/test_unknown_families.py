"""A DiT of a family the pack does not support yet (Chroma Radiance, Z-Image, ...) is refused in one line
that names its family and what the pack supports: at the node's input, never from inside a block.

The models are tiny ones of ComfyUI's own classes, built from the config its detection would make of a file
(``benchmark.random_models.dit_patcher``), where the host has the family: Chroma Radiance on both hosts. One shape
no host has stays a stand-in: a Flux.1 whose first double block is Chroma's
(modulations computed outside the blocks, with no Chroma around them)."""

from __future__ import annotations

import pytest
import torch

from comfyui_layout_retouch.attention import families, family
from comfyui_layout_retouch.benchmark import random_models

REFUSAL = (r"DDIM Inversion: input 'model': the model is a {} model, a family this pack does not support "
           r"yet \(it supports SD1.x, SD2.x, SDXL, Flux.1")  # the family's name, as ComfyUI's model config has it
# Chroma Radiance (Chroma's blocks in pixel space, patches of 16 pixels, NeRF blocks decoding them), 64 wide.
CHROMA_RADIANCE_TINY = dict(random_models.CHROMA_TINY, image_model="chroma_radiance", in_channels=3, out_channels=3,
                            patch_size=16, nerf_hidden_size=16, nerf_mlp_ratio=4, nerf_depth=2, nerf_max_freqs=8,
                            nerf_tile_size=0, nerf_final_head_type="linear", nerf_embedder_dtype=torch.float32)


def tiny(config: dict):
    return random_models.dit_patcher(config, random_models.dit_state_dict(config, 1))


def half_chroma():
    """The stand-in: a tiny Flux.1 whose first double block is a tiny Chroma's (of the same width), its model
    config's class named ``HalfChroma`` (as ComfyUI names a detected family)."""
    model = tiny(random_models.FLUX_TINY)
    config = model.model.model_config
    config.__class__ = type("HalfChroma", (type(config),), {})
    model.model.diffusion_model.double_blocks[0] = tiny(random_models.CHROMA_TINY).model.diffusion_model.double_blocks[0]
    return model


@pytest.mark.parametrize("name, make", [
    ("ChromaRadiance", lambda: tiny(CHROMA_RADIANCE_TINY)),
    ("HalfChroma", half_chroma)])
def test_the_family_is_named(comfy, tiny_flux, name, make):
    model = make()
    assert type(model.model.model_config).__name__ == name
    with pytest.raises(family.UnsupportedModel, match=f"the model is a {name} model, a family this pack does not"):
        families.family_of(model)
    assert families.family_of(tiny_flux.vanilla).name == "Flux"  # Flux.1 still is supported


@pytest.mark.parametrize("name, make, latent_shape", [
    ("ChromaRadiance", lambda: tiny(CHROMA_RADIANCE_TINY), (1, 3, 64, 64))])
def test_a_node_refuses_it_at_its_input(comfy, tiny_flux, name, make, latent_shape):
    """The DDIM Inversion recording for the swap: refused at 'model' before any step runs, in one line."""
    node = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
    latent = {"samples": torch.randn(*latent_shape, generator=torch.Generator().manual_seed(0))}
    with pytest.raises(ValueError, match=REFUSAL.format(name)) as refused:
        node.execute(model=make(), positive=tiny_flux.encode("a vase"), latent=latent, steps=2, scheduler="simple",
                     sampler_name="euler", cfg=1.0, record_attention=True)
    assert "\n" not in str(refused.value)  # one line
