"""A DiT of a family the pack does not support yet (Flux.2, Chroma, Z-Image, ...) is refused in one line that names
its family and what the pack supports: at the node's input, never from inside a block.

The stand-ins are the tiny Flux (ComfyUI's own Flux classes) changed the way those families differ from Flux.1:
Flux.2 (ComfyUI 0.3.72's ``comfy/ldm/flux/model.py``: ``global_modulation``, the blocks' own modulation None),
Chroma (its blocks from ComfyUI's ``comfy/ldm/chroma/layers.py``: modulations computed outside the blocks)."""

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


def as_chroma(diffusion_model) -> None:
    import comfy.ops
    from comfy.ldm.chroma.layers import DoubleStreamBlock

    first = diffusion_model.double_blocks[0]
    diffusion_model.double_blocks[0] = DoubleStreamBlock(first.hidden_size, first.num_heads, 4.0, qkv_bias=True,
                                                         operations=comfy.ops.disable_weight_init)


@pytest.mark.parametrize("name, change", [("Flux2", as_flux2), ("Chroma", as_chroma)])
def test_the_family_is_named(comfy, tiny_flux, name, change):
    model = stand_in(tiny_flux.vanilla, name, change)
    with pytest.raises(family.UnsupportedModel, match=f"the model is a {name} model, a family this pack does not"):
        families.family_of(model)
    assert families.family_of(tiny_flux.vanilla).name == "Flux"  # the Flux.1 it was made from still is Flux


def test_a_node_refuses_it_at_its_input(comfy, tiny_flux):
    """The DDIM Inversion recording for the swap: refused at 'model' before any step runs."""
    model = stand_in(tiny_flux.vanilla, "Flux2", as_flux2)
    node = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
    latent = {"samples": torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))}
    with pytest.raises(ValueError, match=FLUX2_REFUSAL) as refused:
        node.execute(model=model, positive=tiny_flux.encode("a vase"), latent=latent, steps=2, scheduler="simple",
                     sampler_name="euler", cfg=1.0, record_attention=True)
    assert "\n" not in str(refused.value)  # one line
