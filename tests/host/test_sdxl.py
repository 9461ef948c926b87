"""SDXL twins of the SD1.x exactness tests, and v-prediction models, on the real host.

The tiny SDXL checkpoint keeps SDXL's block layout and transformer depths (the same patch keys)
and runs its prompts through ComfyUI's SDXL CLIP path (CLIP-L and CLIP-G at their real sizes),
so the swap's source rows get SDXL's ADM input (pooled text and size embedding) as the targets do.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_attention_masks import counting, mask_node
from test_inversion import relative_error, smooth_model
from test_source_records import rows_per_step, subject_mask
from test_source_records import swap as records_swap
from test_step_blend import STEPS, blended, chain, ksampler, latent, max_diff
from test_swap import probed, rel
from test_swap import sample as swap_sample
from test_swap import swap as swap_node

from comfyui_layout_retouch.nodes import labels

# The tiny SDXL (2.3 GB, loaded for this module) is not held beside the session's SD1.x models, which load again
# when one of the tests here asks for them.
pytestmark = pytest.mark.usefixtures("session_models_released")

FAST = "recorded, attention from the inversions (fast)"
PAPER = labels.REDENOISED
CFG = 7.5


@pytest.fixture(scope="module")
def prompts(tiny_xl):
    return {
        "vanilla": (tiny_xl.encode("a red vase on a beach"), tiny_xl.encode("blurry")),
        "personalized": (tiny_xl.encode("a sks vase on a beach"), tiny_xl.encode("blurry")),
        "embedding": (tiny_xl.encode("a embedding:tiny_sdxl_concept vase on a beach"), tiny_xl.encode("blurry")),
        "reference": tiny_xl.encode("a photo of sks vase"),
        "empty": tiny_xl.encode(""),
    }


@pytest.fixture(scope="module")
def images(tiny_xl):
    gen = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        latents = tiny_xl.vae.encode(torch.rand(2, 64, 64, 3, generator=gen))
    return {"layout": {"samples": latents[:1]}, "reference": {"samples": latents[1:]}}


def invert(comfy, model, positive, lat, steps=STEPS, record=False, negative=None, sampler="ddim"):
    node = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
    return node.execute(model=model, positive=positive, latent=lat, steps=steps, scheduler="ddim_uniform",
                        sampler_name=sampler, cfg=1.0, negative=negative, record_attention=record,
                        attention_layers="auto").result


def test_detected_as_sdxl_with_the_familys_layers(comfy, tiny_xl, prompts):
    import comfy.model_base

    from comfyui_layout_retouch.attention.families import family_of
    from comfyui_layout_retouch.attention.layers import (
        attention_blocks,
        auto_layers,
        layer_keys,
        layers_at,
        parse_layers,
    )
    from comfyui_layout_retouch.records import base_model

    assert base_model(tiny_xl.vanilla) == base_model(tiny_xl.personalized) == "SDXL"
    assert tiny_xl.personalized.model.model_type == comfy.model_base.ModelType.EPS
    assert tiny_xl.load_v_prediction().model.model_type == comfy.model_base.ModelType.V_PREDICTION
    entry = prompts["reference"][0]
    assert entry[0].shape[-1] == 2048 and entry[1]["pooled_output"].shape[-1] == 1280  # CLIP-L + CLIP-G
    depths = family_of(tiny_xl.personalized).depths(tiny_xl.personalized)
    assert attention_blocks(tiny_xl.personalized) == set(depths)
    assert sum(depths.values()) == 70 and depths[("middle", 0)] == 10  # SDXL's 70 transformer blocks
    assert {b: d for b, d in depths.items() if b[0] == "output"} == {
        **{("output", i): 10 for i in range(3)}, **{("output", i): 2 for i in range(3, 6)}}
    assert auto_layers(tiny_xl.personalized) == parse_layers("output 3-5")
    assert layer_keys(tiny_xl.personalized, auto_layers(tiny_xl.personalized)) == layers_at(tiny_xl.personalized, 2)
    assert len(layers_at(tiny_xl.personalized, 2)) == 6 and len(layers_at(tiny_xl.personalized, 4)) == 30


# ----- Stage 1 -----------------------------------------------------------------------------------

def test_step_blend_is_the_stock_chain_bit_for_bit(comfy, tiny_xl, prompts):
    """Both ends and one inner lambda1 on SDXL's UNet and conditioning (the pooled text, the size embedding);
    every inner lambda1 and a batch are test_step_blend's, on SD1.x: the chain is the same code on every UNet."""
    lat = latent()
    v, p = tiny_xl.vanilla, tiny_xl.personalized
    for lambda1 in (0, 2, STEPS):
        got = blended(comfy, v, p, prompts["vanilla"], prompts["personalized"], lat, lambda1)
        if lambda1 == 0:
            want = ksampler(comfy, p, prompts["personalized"], lat)
        elif lambda1 == STEPS:
            want = ksampler(comfy, v, prompts["vanilla"], lat)
        else:
            want = chain(comfy, v, p, prompts["vanilla"], prompts["personalized"], lat, lambda1)
        assert max_diff(got, want) == 0.0, f"lambda1={lambda1}"
        assert torch.isfinite(got).all()


def test_step_blend_with_an_sdxl_lora_and_embedding(comfy, tiny_xl, prompts):
    from comfyui_layout_retouch.attention.tokens import subject_positions

    lora = comfy.LoraLoaderModelOnly().load_lora_model_only(tiny_xl.vanilla, "tiny_xl_lora.safetensors", 1.0)[0]
    got = blended(comfy, tiny_xl.vanilla, lora, prompts["vanilla"], prompts["embedding"], latent(), 2)
    want = chain(comfy, tiny_xl.vanilla, lora, prompts["vanilla"], prompts["embedding"], latent(), 2)
    assert max_diff(got, want) == 0.0
    without = blended(comfy, tiny_xl.vanilla, tiny_xl.vanilla, prompts["vanilla"], prompts["embedding"], latent(), 2)
    assert max_diff(got, without) > 1e-4  # the LoRA acts
    # The embedding was loaded into both encoders (clip_l, clip_g) and is found as the subject.
    tokens = tiny_xl.clip.tokenize("embedding:tiny_sdxl_concept")
    vectors = {name: [t[0].shape[-1] for chunk in chunks for t in chunk if torch.is_tensor(t[0])]
               for name, chunks in tokens.items()}
    assert vectors == {"l": [768, 768], "g": [1280, 1280]}
    concept = "embedding:tiny_sdxl_concept"
    assert len(subject_positions(tiny_xl.clip, f"a {concept} vase", concept)) == 2


def test_mixed_families_stay_an_error(comfy, tiny_xl, prompts):
    """An SD1.x vanilla model beside the SDXL personalized one: refused. The SD1.x model is a bare tiny SD1.x UNet
    through ComfyUI's loader and its prompt a tensor of CLIP-L's shape (the session's SD1.x set, with its text
    encoder and VAE, is not loaded beside the tiny SDXL: tests/memory_budget.py)."""
    from comfy.sd import load_diffusion_model_state_dict  # (not "import comfy.sd": comfy is the fixture here)

    from comfyui_layout_retouch.benchmark.random_models import SD1_TINY_UNET, unet_state_dict

    sd1 = load_diffusion_model_state_dict(unet_state_dict(SD1_TINY_UNET, 1))
    sd1_prompt = [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(0)), {}]]
    node = comfy.NODE_CLASS_MAPPINGS["LR_StepBlendedKSampler"]
    with pytest.raises(ValueError, match=r"Step-Blended KSampler.*personalized_model.*SDXL model.*same base family"):
        node.execute(vanilla_model=sd1, personalized_model=tiny_xl.personalized,
                     vanilla_positive=sd1_prompt, vanilla_negative=sd1_prompt,
                     personalized_positive=prompts["personalized"][0], personalized_negative=prompts["empty"],
                     latent_image=latent(), seed=0, steps=STEPS, lambda1=2, cfg=CFG, sampler_name="ddim",
                     scheduler="ddim_uniform", denoise=1.0)


def test_mask_reads_stage_1s_record(comfy, tiny_xl, prompts):
    """SDXL twin: the mask from stage 1's record (decoder at 1/2: output 3-5) equals the full passes'."""
    import dataclasses

    prompt = "a sks vase on a beach"
    counted, calls = counting(tiny_xl.personalized)
    _, traj, _ = comfy.NODE_CLASS_MAPPINGS["LR_StepBlendedKSampler"].execute(
        vanilla_model=tiny_xl.vanilla, personalized_model=counted, vanilla_positive=prompts["vanilla"][0],
        vanilla_negative=prompts["empty"], personalized_positive=prompts["personalized"][0],
        personalized_negative=prompts["empty"], latent_image=latent(), seed=4, steps=STEPS, lambda1=2, cfg=CFG,
        sampler_name="ddim", scheduler="ddim_uniform", denoise=1.0, record_attention=True,
        attention_layers="auto").result
    n_steps = len(traj) - 1
    assert set(traj.maps.sums) == set(range(2, n_steps)) and traj.maps.sums[2].shape == (1, 4 * 4, 77)
    calls.clear()
    soft, mask = mask_node(comfy, tiny_xl, traj, prompt=prompt, steps=n_steps, model=counted)
    assert len(calls) == 2  # the vanilla steps 0 and 1 only
    calls.clear()
    full_soft, full_mask = mask_node(comfy, tiny_xl, dataclasses.replace(traj, maps=None), prompt=prompt,
                                     steps=n_steps, model=counted)
    assert len(calls) == n_steps
    torch.testing.assert_close(soft, full_soft, rtol=0, atol=1e-5)
    sure = (full_soft - 0.1).abs() > 1e-4
    assert torch.equal(mask[sure], full_mask[sure])


# ----- Inversion ---------------------------------------------------------------------------------

def test_inversion_falls_at_first_order(comfy, tiny_xl, prompts, measured):
    lat = {"samples": tiny_xl.vae.encode(torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0)))}
    model = smooth_model(tiny_xl.personalized)
    errors = {}
    for steps in (6, 24, 96):
        inverted, _ = invert(comfy, model, prompts["empty"], lat, steps)
        redrawn = comfy.KSamplerAdvanced().sample(model, "disable", 0, steps, 1.0, "ddim", "ddim_uniform",
                                                  prompts["empty"], prompts["empty"], inverted, 0, 10000,
                                                  "disable")[0]["samples"]
        errors[steps] = relative_error(redrawn, lat["samples"])
    orders = [math.log(errors[a] / errors[b]) / math.log(4) for a, b in ((6, 24), (24, 96))]
    measured(f"SDXL inversion, smooth prediction: relative reconstruction error by steps {errors}, orders {orders}")
    assert errors[6] > errors[24] > errors[96] and errors[96] < 0.1
    assert all(0.8 < p < 1.3 for p in orders), (errors, orders)


# ----- Stage 2 -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inverted(comfy, tiny_xl, prompts, images):
    """Both sources inverted at the empty prompt (paper), and recording at their own prompts (fast mode)."""
    neg, model = prompts["vanilla"][1], tiny_xl.personalized
    return {
        "layout": invert(comfy, tiny_xl.personalized, prompts["empty"], images["layout"]),
        "reference": invert(comfy, tiny_xl.personalized, prompts["empty"], images["reference"]),
        "layout_rec": invert(comfy, model, prompts["personalized"][0], images["layout"], record=True, negative=neg),
        "reference_rec": invert(comfy, model, prompts["reference"], images["reference"], record=True, negative=neg),
        "layout_at_prompt": invert(comfy, tiny_xl.personalized, prompts["personalized"][0], images["layout"]),
        "reference_at_prompt": invert(comfy, tiny_xl.personalized, prompts["reference"], images["reference"]),
    }


def test_swap_identity_in_paper_mode(comfy, tiny_xl, prompts, inverted, measured):
    """Reference = layout = target: the swap changes nothing but batch numerics."""
    lay_inv, lay = inverted["layout"]
    y, neg = prompts["personalized"][0], prompts["vanilla"][1]
    patched = swap_node(comfy, tiny_xl.personalized, lay, lay, y, y, neg, mode=PAPER, mask=torch.full((1, 64, 64), 0.5),
                        layout_layers="all", reference_layers="all")
    got = swap_sample(comfy, patched, y, neg, lay_inv)
    want = swap_sample(comfy, tiny_xl.personalized, y, neg, lay_inv)
    measured(f"SDXL swap identity (paper mode, all 70 layers, mask 0.5): max relative difference {rel(got, want):.2e}")
    assert rel(got, want) < 1e-4


def test_patches_fire_on_exactly_the_chosen_keys(comfy, tiny_xl, prompts, inverted):
    lay_inv, lay = inverted["layout"]
    _, ref = inverted["reference"]
    y_p, y_r, neg = prompts["personalized"][0], prompts["reference"], prompts["vanilla"][1]
    patched = swap_node(comfy, tiny_xl.personalized, ref, lay, y_r, y_p, neg, layout_layers="output 5",
                        reference_layers="auto")
    replaces = patched.model_options["transformer_options"]["patches_replace"]
    assert set(replaces["attn1"]) == {("output", i, j) for i in (3, 4, 5) for j in (0, 1)}
    assert set(replaces["attn2"]) == {("output", 5, j) for j in (0, 1)}
    probe, log = probed(patched)
    swap_sample(comfy, probe, y_r, neg, lay_inv)
    n_steps = len(lay) - 1
    for kind, key in [("attn1", (5, 1)), ("attn1", (3, 0)), ("attn2", (5, 0))]:
        calls = [c for c in log if c["kind"] == kind and c["key"] == ("output", *key)]
        assert sorted(c["step"] for c in calls) == list(range(n_steps)), (kind, key)
    assert {c["key"] for c in log} == {("output", i, j) for i in (3, 4, 5) for j in (0, 1)}


def test_fast_mode_equals_the_recorded_mode(comfy, tiny_xl, prompts, inverted, measured):
    lay_inv, lay = inverted["layout_at_prompt"]
    _, ref = inverted["reference_at_prompt"]
    _, fast_lay = inverted["layout_rec"]
    _, fast_ref = inverted["reference_rec"]
    im = {"y_r": prompts["reference"], "y_p": prompts["personalized"][0], "neg": prompts["vanilla"][1]}
    mask = subject_mask()
    node = comfy.NODE_CLASS_MAPPINGS["LR_MultiSourceAttentionSwap"]

    def swap(r, la, mode):
        return node.execute(model=tiny_xl.personalized, reference_inversion=r, layout_inversion=la,
                            reference_positive=im["y_r"], reference_negative=im["neg"], layout_positive=im["y_p"],
                            layout_negative=im["neg"], lambda2=2, mask_start=4, layout_layers="auto",
                            reference_layers="auto", source_paths=mode, reference_cache="off", mask=mask).result[0]

    from comfyui_layout_retouch.attention.layers import layers_at
    from comfyui_layout_retouch.benchmark.record_sizes import record_bytes

    unet = tiny_xl.personalized.model.diffusion_model
    assert fast_ref.attention.nbytes == record_bytes(unet, layers_at(tiny_xl.personalized, 2), 8, len(fast_ref) - 1, 2,
                                                     ("self_out", "cross_out", "self_in"), element_size=4)
    got, seen = rows_per_step(comfy, swap(fast_ref, fast_lay, FAST), im, lay_inv, CFG)
    assert seen.keys() == set(range(len(lay) - 1)) and all(calls == {(0, 0)} for calls in seen.values())
    want = swap_sample(comfy, swap(ref, lay, "recorded"), im["y_r"], im["neg"], lay_inv)
    plain = swap_sample(comfy, tiny_xl.personalized, im["y_r"], im["neg"], lay_inv)
    measured(f"SDXL fast mode vs recorded (cfg {CFG}): max relative difference {rel(got, want):.2e} "
             f"(unswapped vs recorded {rel(plain, want):.2e})")
    assert rel(got, want) < 1e-5 and rel(plain, want) > 1e-3


def test_reference_cache_skips_the_reference_rows(comfy, tiny_xl, prompts, images, inverted, measured):
    """The cache's key holds the reference's ADM input too; the second run runs no reference rows."""
    lay_inv, lay = inverted["layout"]
    _, ref = invert(comfy, tiny_xl.personalized, prompts["empty"], images["reference"])  # its own cache
    im = {"y_r": prompts["reference"], "y_p": prompts["personalized"][0], "neg": prompts["vanilla"][1]}
    model = tiny_xl.personalized
    want = swap_sample(comfy, records_swap(comfy, model, ref, lay, im, layers="auto"), im["y_r"], im["neg"], lay_inv)
    cached = records_swap(comfy, model, ref, lay, im, cache="offloaded to RAM", layers="auto")
    first, seen = rows_per_step(comfy, cached, im, lay_inv)
    assert torch.equal(first, want) and any(n_ref == 1 for calls in seen.values() for _, n_ref in calls)
    second, seen = rows_per_step(comfy, cached, im, lay_inv)
    assert all(n_ref == 0 for calls in seen.values() for _, n_ref in calls)
    measured(f"SDXL reference cache: second run vs cache off: max relative difference {rel(second, want):.2e}")
    assert rel(second, want) < 1e-5
    # The same text with another size conditioning (as CLIPTextEncodeSDXL sets it): another ADM input, a miss.
    resized = [[im["y_r"][0][0], {**im["y_r"][0][1], "width": 2048, "height": 2048}]]
    _, seen = rows_per_step(comfy, records_swap(comfy, model, ref, lay, im, cache="offloaded to RAM", y_r=resized,
                                                layers="auto"), {**im, "y_r": resized}, lay_inv)
    assert any(n_ref == 1 for calls in seen.values() for _, n_ref in calls)


def test_shipped_default_on_sdxl_and_the_callers_model_untouched(comfy, tiny_xl, prompts, inverted):
    """Stage 1 records; the mask reads its record; the swap runs in the fast mode on stage 1's path."""
    import copy

    before = copy.deepcopy(tiny_xl.personalized.model_options), dict(tiny_xl.personalized.patches)
    stage1 = comfy.NODE_CLASS_MAPPINGS["LR_StepBlendedKSampler"].execute(
        vanilla_model=tiny_xl.vanilla, personalized_model=tiny_xl.personalized,
        vanilla_positive=prompts["vanilla"][0], vanilla_negative=prompts["vanilla"][1],
        personalized_positive=prompts["personalized"][0], personalized_negative=prompts["personalized"][1],
        latent_image=latent(), seed=3, steps=STEPS, lambda1=2, cfg=CFG, sampler_name="ddim",
        scheduler="ddim_uniform", denoise=1.0, record_attention=True, attention_layers="auto").result
    _, trajectory, start = stage1
    mask = comfy.NODE_CLASS_MAPPINGS["LR_CrossAttentionMask"].execute(
        model=tiny_xl.personalized, layout_inversion=trajectory, clip=tiny_xl.clip, prompt="a sks vase on a beach",
        subject="vase", resolution="1/2 of the latent (32x32 at 512 px)", steps_to_average=3, threshold=0.1).result[1]
    assert mask.shape == (1, 64, 64) and torch.isfinite(mask).all()
    _, ref = inverted["reference_rec"]
    patched = comfy.NODE_CLASS_MAPPINGS["LR_MultiSourceAttentionSwap"].execute(
        model=tiny_xl.personalized, reference_inversion=ref, layout_inversion=trajectory,
        reference_positive=prompts["reference"], reference_negative=prompts["vanilla"][1],
        layout_positive=prompts["personalized"][0], layout_negative=prompts["personalized"][1], lambda2=2,
        mask_start=4, layout_layers="auto", reference_layers="auto", source_paths=FAST,
        reference_cache="offloaded to RAM", mask=mask).result[0]
    _, seen = rows_per_step(comfy, patched, {"y_r": prompts["reference"], "neg": prompts["vanilla"][1]}, start, CFG)
    out = swap_sample(comfy, patched, prompts["reference"], prompts["vanilla"][1], start)
    assert torch.isfinite(out).all()
    # The personalized steps read stage 1's record; only vanilla steps (0, 1) may run layout rows.
    assert all(calls == {(0, 0)} for step, calls in seen.items() if step >= 2), seen
    after = tiny_xl.personalized.model_options, tiny_xl.personalized.patches
    assert after[0] == before[0] and after[1] == before[1]


def test_pick_and_draw_layout_guidance_at_its_minimum(comfy, tiny_xl, measured):
    """SDXL twin: the template from the generation's own guider, noise, sampler, sigmas and latent leaves layout
    guidance (the paper's eta and beta) without effect; a nudged template moves the result continuously."""
    from test_pick_and_draw import nudged, relative

    m = comfy.NODE_CLASS_MAPPINGS
    prompt = "a photo of sks vase in the snow"
    guider = m["CFGGuider"]().get_guider(tiny_xl.personalized, tiny_xl.encode(prompt), tiny_xl.encode(""), CFG)[0]
    noise, ddim = m["RandomNoise"]().get_noise(5)[0], m["KSamplerSelect"]().get_sampler("ddim")[0]
    sigmas = m["BasicScheduler"]().get_sigmas(tiny_xl.personalized, "ddim_uniform", 4, 1.0)[0]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}

    def sample(sampler):
        with torch.inference_mode():
            return m["SamplerCustomAdvanced"]().sample(noise, guider, sampler, sigmas, latent)[0]["samples"]

    def guided(template):
        return sample(m["LR_PickAndDrawSampler"].execute(
            sampler=ddim, clip=tiny_xl.clip, prompt=prompt, subject="vase", eta=10.0, alpha=10.0, beta=100.0,
            layout_start=0, layout_end=0, appearance_start=2, appearance_end=3, iterations=2, threshold=0.1,
            template=template).result[0])

    with torch.inference_mode():
        own = m["LR_LayoutTemplate"].execute(noise=noise, guider=guider, sampler=ddim, sigmas=sigmas,
                                             latent_image=latent, clip=tiny_xl.clip, prompt=prompt, subject="vase",
                                             last_step=0).result[0]
    stock = sample(ddim)
    at_minimum = relative(guided(own), stock)
    moved = {eps: relative(guided(nudged(own, eps)), stock) for eps in (1e-3, 1e-4)}
    measured(f"P&D layout guidance at its minimum (tiny SDXL, 4 steps, layout step 0, 2 iterations, eta 10, beta 100): final latent "
             f"moved by {at_minimum:.2e} (relative); template nudged by 1e-3 / 1e-4: {moved[1e-3]:.2e} / "
             f"{moved[1e-4]:.2e}")
    assert at_minimum <= 1e-6
    assert 0 < moved[1e-4] < moved[1e-3] / 3
