"""A DiT of a family the pack does not support yet (Flux.2, Chroma Radiance, Z-Image, ...) is refused in one line
that names its family and what the pack supports: at the node's input, never from inside a block.

The stand-ins are tiny models of supported families (ComfyUI's own classes) changed the way those families differ:
Flux.2 (ComfyUI 0.3.72's ``comfy/ldm/flux/model.py``: ``global_modulation``, the blocks' own modulation None),
a Flux.1 whose first double block is Chroma's (modulations computed outside the blocks, with no Chroma around
them), Chroma Radiance (Chroma's blocks in pixel space: ``nerf_blocks``)."""

from __future__ import annotations

import copy

import pytest
import torch

from comfyui_layout_retouch.attention import families, family

FLUX2_REFUSAL = (r"DDIM Inversion: input 'model': the model is a Flux2 model, a family this pack does not support "
                 r"yet \(it supports SD1.x, SD2.x, SDXL, Flux.1")


def stand_in(patcher, config_name: str, change) -> object:
    """A ModelPatcher over a deep copy of ``patcher``'s model (the tiny Flux: a few MB), its model config's class
    named ``config_name`` (as ComfyUI names the detected family) and ``change(diffusion_model)`` applied."""
    import comfy.model_patcher

    model = copy.deepcopy(patcher.model)
    config = model.model_config
    config.__class__ = type(config_name, (type(config),), {})
    change(model.diffusion_model)
    return comfy.model_patcher.ModelPatcher(model, patcher.load_device, patcher.offload_device)


def as_flux2(diffusion_model) -> None:
    diffusion_model.global_modulation = True
    for block in diffusion_model.double_blocks:
        block.img_mod = block.txt_mod = None
    for block in diffusion_model.single_blocks:
        block.modulation = None


def as_chroma_blocks(diffusion_model) -> None:
    import comfy.ops
    from comfy.ldm.chroma.layers import DoubleStreamBlock

    first = diffusion_model.double_blocks[0]
    diffusion_model.double_blocks[0] = DoubleStreamBlock(first.hidden_size, first.num_heads, 4.0, qkv_bias=True,
                                                         operations=comfy.ops.disable_weight_init)


def as_radiance(diffusion_model) -> None:
    diffusion_model.nerf_blocks = torch.nn.ModuleList()


@pytest.mark.parametrize("name, made_from, change", [("Flux2", "flux", as_flux2), ("HalfChroma", "flux", as_chroma_blocks),
                                                     ("ChromaRadiance", "chroma", as_radiance)])
def test_the_family_is_named(comfy, tiny_flux, name, made_from, change):
    import comfy_host

    tiny = tiny_flux if made_from == "flux" else comfy_host.TinyDiT(made_from)
    model = stand_in(tiny.vanilla, name, change)
    with pytest.raises(family.UnsupportedModel, match=f"the model is a {name} model, a family this pack does not"):
        families.family_of(model)
    assert families.family_of(tiny.vanilla).name == tiny.base_model  # the model it was made from still is supported


def test_a_node_refuses_it_at_its_input(comfy, tiny_flux):
    """The DDIM Inversion recording for the swap: refused at 'model' before any step runs."""
    model = stand_in(tiny_flux.vanilla, "Flux2", as_flux2)
    node = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
    latent = {"samples": torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))}
    with pytest.raises(ValueError, match=FLUX2_REFUSAL) as refused:
        node.execute(model=model, positive=tiny_flux.encode("a vase"), latent=latent, steps=2, scheduler="simple",
                     sampler_name="euler", cfg=1.0, record_attention=True)
    assert "\n" not in str(refused.value)  # one line
