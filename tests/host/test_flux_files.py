"""Flux through ComfyUI's stock loaders: a Flux.1-dev file at the real width (3072, 24 heads) with one double and
one single block through UNETLoader, and a Flux LoRA through LoraLoaderModelOnly as the personalized model."""

from __future__ import annotations

import pytest
import torch

STEPS = 3
SAMPLER, SCHEDULER, CFG = "euler", "simple", 1.0


@pytest.fixture(scope="module")
def loaded(comfy, tiny_flux_files):
    import comfy_host

    vanilla = comfy.UNETLoader().load_unet("tiny_flux_3072.safetensors", "default")[0]
    personalized = comfy.LoraLoaderModelOnly().load_lora_model_only(vanilla, "tiny_flux_lora.safetensors", 1.0)[0]
    encode = lambda text: comfy_host.TinyFlux.encode(text, tokens=8)  # noqa: E731  (8 T5 tokens: a short prompt's cost)
    return {"vanilla": vanilla, "personalized": personalized, "vp": encode("a red vase on a beach"),
            "pp": encode("a sks vase on a beach"), "yr": encode("a photo of sks vase"), "empty": encode("")}


def test_detected_as_flux_with_its_blocks_and_the_lora_as_patches(loaded):
    from comfyui_layout_retouch.attention.layers import attention_blocks, auto_layers
    from comfyui_layout_retouch.records import base_model

    vanilla, personalized = loaded["vanilla"], loaded["personalized"]
    assert base_model(vanilla) == base_model(personalized) == "Flux"
    assert vanilla.model.diffusion_model.hidden_size == 3072 and vanilla.model.diffusion_model.num_heads == 24
    assert attention_blocks(vanilla) == {("double", 0), ("single", 0)}
    assert auto_layers(vanilla).blocks == frozenset({("double", 0)})  # Stable Flow's vital layers it has
    assert not vanilla.patches and len(personalized.patches) == 5  # qkv and proj of both streams, linear1


def test_stage_1_with_a_flux_lora_is_the_stock_chain(comfy, loaded):
    lat = {"samples": torch.zeros(1, 16, 8, 8)}
    vp, pp = loaded["vp"], loaded["pp"]
    node = comfy.NODE_CLASS_MAPPINGS["LR_StepBlendedKSampler"]
    got = node.execute(vanilla_model=loaded["vanilla"], personalized_model=loaded["personalized"], vanilla_positive=vp,
                       vanilla_negative=vp, personalized_positive=pp, personalized_negative=pp, latent_image=lat,
                       seed=3, steps=STEPS, lambda1=1, cfg=CFG, sampler_name=SAMPLER, scheduler=SCHEDULER,
                       denoise=1.0).result[0]["samples"]
    adv = comfy.KSamplerAdvanced()
    first = adv.sample(loaded["vanilla"], "enable", 3, STEPS, CFG, SAMPLER, SCHEDULER, vp, vp, lat, 0, 1, "enable")[0]
    want = adv.sample(loaded["personalized"], "disable", 3, STEPS, CFG, SAMPLER, SCHEDULER, pp, pp, first, 1, 10000,
                      "disable")[0]["samples"]
    assert torch.isfinite(got).all() and torch.equal(got, want)
    vanilla_only = adv.sample(loaded["vanilla"], "disable", 3, STEPS, CFG, SAMPLER, SCHEDULER, pp, pp, first, 1, 10000,
                              "disable")[0]["samples"]
    assert not torch.equal(got, vanilla_only)  # the LoRA acts


def test_the_swap_on_the_lora_model(comfy, loaded):
    """Both stages' stage-2 nodes on the loaded LoRA model: inversions to sigma 1, the swap on the ``auto`` block,
    the retouch runs; the LoRA model the caller holds keeps its options."""
    model = loaded["personalized"]
    invert = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
    gen = torch.Generator().manual_seed(0)
    lay_inv, lay = invert.execute(model=model, positive=loaded["empty"], latent={"samples": torch.randn(1, 16, 8, 8,
                                  generator=gen)}, steps=STEPS, scheduler=SCHEDULER, sampler_name=SAMPLER, cfg=CFG).result
    _, ref = invert.execute(model=model, positive=loaded["empty"], latent={"samples": torch.randn(1, 16, 8, 8,
                            generator=gen)}, steps=STEPS, scheduler=SCHEDULER, sampler_name=SAMPLER, cfg=CFG).result
    options = repr(model.model_options)
    patched = comfy.NODE_CLASS_MAPPINGS["LR_MultiSourceAttentionSwap"].execute(
        model=model, reference_inversion=ref, layout_inversion=lay, reference_positive=loaded["yr"],
        reference_negative=loaded["yr"], layout_positive=loaded["pp"], layout_negative=loaded["pp"], lambda2=1,
        mask_start=2, layout_layers="auto", reference_layers="auto", source_paths="recorded", reference_cache="off",
        mask=torch.full((1, 64, 64), 0.5)).result[0]
    assert set(patched.model_options["transformer_options"]["patches_replace"]["dit"]) == {("double_block", 0)}
    out = comfy.KSamplerAdvanced().sample(patched, "disable", 0, STEPS, CFG, SAMPLER, SCHEDULER, loaded["yr"],
                                          loaded["yr"], lay_inv, 0, 10000, "disable")[0]["samples"]
    import comfy.sample
    import comfy.samplers

    # The same start without the swap: the inverted latent as a flow sampler's noise at sigma 1.
    plain = comfy.sample.sample_custom(model, lay.latents[-1], CFG, comfy.samplers.sampler_object(SAMPLER),
                                       lay.sigmas.flip(0), loaded["yr"], loaded["yr"], torch.zeros_like(lay.latents[0]),
                                       seed=0)
    assert torch.isfinite(out).all() and not torch.equal(out, plain)
    assert repr(model.model_options) == options
