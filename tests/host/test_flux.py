"""Layout-and-Retouch on Flux with the tiny Flux transformers (ComfyUI's own Flux classes) on the real host:
the twins of the SD exactness tests."""

from __future__ import annotations

import pytest
import torch

STEPS = 6
SEED = 77
SAMPLER, SCHEDULER = "euler", "simple"  # Flux.1-dev's, at cfg 1 with FluxGuidance
CFG = 1.0


def latent(seed: int = 0, size: int = 8) -> dict:
    return {"samples": torch.randn(1, 16, size, size, generator=torch.Generator().manual_seed(seed))}


@pytest.fixture(scope="module")
def prompts(tiny_flux):
    return {"vanilla": tiny_flux.encode("a red vase on a beach"), "personalized": tiny_flux.encode("a sks vase on a beach"),
            "reference": tiny_flux.encode("a photo of sks vase"), "empty": tiny_flux.encode("")}


def blended(comfy, tiny_flux, prompts, lambda1: int, lat: dict):
    node = comfy.NODE_CLASS_MAPPINGS["LR_StepBlendedKSampler"]
    vp, pp = prompts["vanilla"], prompts["personalized"]
    return node.execute(vanilla_model=tiny_flux.vanilla, personalized_model=tiny_flux.personalized,
                        vanilla_positive=vp, vanilla_negative=vp, personalized_positive=pp, personalized_negative=pp,
                        latent_image=lat, seed=SEED, steps=STEPS, lambda1=lambda1, cfg=CFG, sampler_name=SAMPLER,
                        scheduler=SCHEDULER, denoise=1.0).result


def test_step_blend_is_the_stock_chain_bit_for_bit(comfy, tiny_flux, prompts):
    """Stage 1 on a flow model: lambda1 0 and steps are the one-model KSamplers, every inner lambda1 the
    KSamplerAdvanced chain, bit for bit."""
    lat = {"samples": torch.zeros(1, 16, 8, 8)}
    vp, pp = prompts["vanilla"], prompts["personalized"]
    adv = comfy.KSamplerAdvanced()
    for lambda1 in range(STEPS + 1):
        got = blended(comfy, tiny_flux, prompts, lambda1, lat)[0]["samples"]
        if lambda1 in (0, STEPS):
            model, conds = (tiny_flux.personalized, pp) if lambda1 == 0 else (tiny_flux.vanilla, vp)
            want = comfy.KSampler().sample(model, SEED, STEPS, CFG, SAMPLER, SCHEDULER, conds, conds, lat)[0]["samples"]
        else:
            first = adv.sample(tiny_flux.vanilla, "enable", SEED, STEPS, CFG, SAMPLER, SCHEDULER, vp, vp, lat, 0,
                               lambda1, "enable")[0]
            want = adv.sample(tiny_flux.personalized, "disable", SEED, STEPS, CFG, SAMPLER, SCHEDULER, pp, pp, first,
                              lambda1, 10000, "disable")[0]["samples"]
        assert torch.isfinite(got).all() and torch.equal(got, want), lambda1


def invert(comfy, model, cond, lat: dict, steps: int = STEPS):
    node = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
    return node.execute(model=model, positive=cond, latent=lat, steps=steps, scheduler=SCHEDULER, sampler_name=SAMPLER,
                        cfg=CFG).result


def reconstruct(comfy, model, cond, traj, steps: int = STEPS) -> torch.Tensor:
    """Sample from the inversion's end as a flow sampler starts: the inverted latent is the noise at sigma 1."""
    import comfy.sample
    import comfy.samplers

    sigmas = traj.sigmas.flip(0)
    sampler = comfy.samplers.sampler_object(SAMPLER)
    out = comfy.sample.sample_custom(model, traj.latents[-1], CFG, sampler, sigmas, cond, cond,
                                     torch.zeros_like(traj.latents[0]), seed=0)
    return out


def test_inversion_reaches_sigma_1_and_reconstructs_at_first_order(comfy, tiny_flux, prompts, measured):
    """Inverse Euler in flow space up to Flux's top sigma 1.0: a finite inverted latent (ComfyUI's sampler would
    divide by 1 - sigma there), and the reconstruction error falls at first order with the steps."""
    lat = latent(3)
    model, cond = tiny_flux.personalized, prompts["empty"]
    errors = {}
    for steps in (8, 16, 32):
        inverted, traj = invert(comfy, model, cond, lat, steps)
        assert float(traj.sigmas[-1]) == 1.0 and torch.isfinite(inverted["samples"]).all()
        assert torch.equal(inverted["samples"], model.get_model_object("latent_format").process_out(traj.latents[-1]))
        errors[steps] = float((reconstruct(comfy, model, cond, traj, steps) - lat["samples"]).abs().max())
    ratios = errors[8] / errors[16], errors[16] / errors[32]
    measured(f"Flux inversion round trip, max error at 8/16/32 steps: {errors[8]:.3g}/{errors[16]:.3g}/"
             f"{errors[32]:.3g} (ratios {ratios[0]:.2f}, {ratios[1]:.2f})")
    assert errors[32] < errors[16] < errors[8]
    assert all(1.6 < r < 2.6 for r in ratios), ratios  # first order: the error halves with the step


@pytest.fixture(scope="module")
def inversions(comfy, tiny_flux, prompts):
    model = tiny_flux.personalized
    return {name: invert(comfy, model, prompts["empty"], latent(seed)) for name, seed in (("layout", 4), ("reference", 5))}


def swap(comfy, model, ref, lay, prompts, lambda2=2, mask_start=4, layers="all", reference_layers=None, mask=None,
         cache="off", positions="shifted", mode="recorded", reference_prompt="reference", layout_prompt="personalized"):
    node = comfy.NODE_CLASS_MAPPINGS["LR_MultiSourceAttentionSwap"]
    y_r, y_p = prompts[reference_prompt], prompts[layout_prompt]
    return node.execute(model=model, reference_inversion=ref, layout_inversion=lay, reference_positive=y_r,
                        reference_negative=y_r, layout_positive=y_p, layout_negative=y_p, lambda2=lambda2,
                        mask_start=mask_start, layout_layers=layers, reference_layers=reference_layers or layers,
                        source_paths=mode, reference_cache=cache, mask=mask, reference_positions=positions).result[0]


def retouch(comfy, model, cond, inverted) -> torch.Tensor:
    """The retouch sampler as the workflows run it: KSampler (Advanced), add_noise disabled, from the inverted latent."""
    return comfy.KSamplerAdvanced().sample(model, "disable", 0, STEPS, CFG, SAMPLER, SCHEDULER, cond, cond, inverted, 0,
                                           10000, "disable")[0]["samples"]


def rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def fp8_flux(comfy, tiny_flux, prompts):
    """The personalized tiny Flux with its weights stored in fp8 e4m3fn and computed in float32 (ComfyUI's manual
    cast), as the most common Flux download runs, and its layout inversion."""
    from comfyui_layout_retouch.benchmark.random_models import FLUX_TINY, flux_patcher, flux_state_dict

    model = flux_patcher(FLUX_TINY, flux_state_dict(FLUX_TINY, 2), dtype=torch.float8_e4m3fn, compute=torch.float32)
    return model, invert(comfy, model, prompts["empty"], latent(4))


@pytest.mark.parametrize("weights, bound", [("float32", 1e-5), ("fp8 e4m3fn", 1e-3)])
def test_swap_identity_on_every_block(comfy, tiny_flux, prompts, inversions, measured, request, weights, bound):
    """Reference = layout = target (the sources re-denoised beside it, the paper's mode), every block, mask 0.5,
    keys at their own positions: the swap changes nothing but batch numerics; the run starts from the inverted
    latent as a flow sampler's noise. With fp8 weights too (what the swap reads of them is dequantized)."""
    if weights == "float32":
        model, (inverted, traj) = tiny_flux.personalized, inversions["layout"]
    else:
        model, (inverted, traj) = request.getfixturevalue("fp8_flux")
        assert next(model.model.diffusion_model.double_blocks[0].img_attn.qkv.parameters()).dtype == torch.float8_e4m3fn
    patched = swap(comfy, model, traj, traj, prompts, mask=torch.full((1, 64, 64), 0.5), positions="shared",
                   reference_prompt="personalized", mode="re-denoised (paper)")
    got = retouch(comfy, patched, prompts["personalized"], inverted)
    want = reconstruct(comfy, model, prompts["personalized"], traj)
    measured(f"Flux swap identity ({weights} weights, all blocks, mask 0.5): max relative difference "
             f"{rel(got, want):.2e}")
    assert rel(got, want) < bound
    if weights != "float32":
        return
    shifted = retouch(comfy, swap(comfy, model, traj, traj, prompts, mask=torch.full((1, 64, 64), 0.5),
                                  reference_prompt="personalized", mode="re-denoised (paper)"), prompts["personalized"],
                      inverted)
    assert rel(shifted, want) > 1e-3  # keys moved off the target's positions attend differently


def test_patches_on_exactly_the_chosen_blocks_and_the_callers_model_untouched(comfy, tiny_flux, prompts, inversions):
    import comfy.model_management as mm

    from comfyui_layout_retouch.attention.session import RUN_KEY

    (inverted, lay), (_, ref) = inversions["layout"], inversions["reference"]
    model = tiny_flux.personalized
    options, before = repr(model.model_options), retouch(comfy, model, prompts["reference"], inverted)
    patched = swap(comfy, model, ref, lay, prompts, layers="double 1", reference_layers="single 0")
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert set(dit) == {("double_block", 1), ("single_block", 0)}
    auto = swap(comfy, model, ref, lay, prompts, layers="auto")
    # Stable Flow's vital layers that the tiny model has: double 0 and 1 (its singles are 0 and 1).
    assert set(auto.model_options["transformer_options"]["patches_replace"]["dit"]) == {("double_block", 0),
                                                                                          ("double_block", 1)}
    out = retouch(comfy, patched, prompts["reference"], inverted)
    assert torch.isfinite(out).all() and rel(out, before) > 1e-4
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            retouch(comfy, patched, prompts["reference"], inverted)
    finally:
        mm.interrupt_current_processing(False)
    with pytest.raises(ValueError, match=r"Multi-Source Attention Swap: input 'model'.*schedule"):
        comfy.KSamplerAdvanced().sample(patched, "disable", 0, STEPS + 2, CFG, SAMPLER, SCHEDULER, prompts["reference"],
                                        prompts["reference"], inverted, 0, 10000, "disable")
    assert RUN_KEY not in patched.model_options.get("transformer_options", {})
    assert repr(model.model_options) == options and "patches_replace" not in model.model_options.get(
        "transformer_options", {})
    assert torch.equal(before, retouch(comfy, model, prompts["reference"], inverted))


def test_patches_already_on_the_dit_keys_are_chained(comfy, tiny_flux, prompts, inversions):
    """Another node's block patches stay in force: one that passes through runs inside the swap (same image as
    without it), and one that skips its block (as Skip Layer Guidance does) skips it with the swap on it too (no
    swap acts there: the image is the unswapped model's with that patch)."""
    (inverted, lay), (_, ref) = inversions["layout"], inversions["reference"]
    y = prompts["reference"]
    calls = []

    def passing(args, extra):
        calls.append(1)
        return extra["original_block"](args)

    def skipping(args, extra):
        return {"img": args["img"], "txt": args["txt"]}

    with_pass = tiny_flux.personalized.clone()
    with_pass.set_model_patch_replace(passing, "dit", "double_block", 0)
    with_pass.set_model_patch_replace(passing, "dit", "single_block", 1)
    swapped = swap(comfy, tiny_flux.personalized, ref, lay, prompts, layers="double 0, single 1")
    chained = swap(comfy, with_pass, ref, lay, prompts, layers="double 0, single 1")
    assert torch.equal(retouch(comfy, chained, y, inverted), retouch(comfy, swapped, y, inverted))
    assert len(calls) == 2 * STEPS  # both keys, every step
    with_skip = tiny_flux.personalized.clone()
    with_skip.set_model_patch_replace(skipping, "dit", "double_block", 0)
    skipped = swap(comfy, with_skip, ref, lay, prompts, layers="double 0", lambda2=0, mask_start=STEPS)
    want = reconstruct(comfy, with_skip, y, lay)
    assert rel(retouch(comfy, skipped, y, inverted), want) < 1e-5
    assert rel(retouch(comfy, swap(comfy, tiny_flux.personalized, ref, lay, prompts, layers="double 0", lambda2=0,
                                   mask_start=STEPS), y, inverted), want) > 1e-4


def test_swap_phases_read_the_sources(comfy, tiny_flux, prompts, inversions):
    """The layout phase and the reference phase each change the target; mask 1 everywhere is no blend and
    mask 0 from step 0 on is the layout's attention output in every swapped block."""
    (inverted, lay), (_, ref) = inversions["layout"], inversions["reference"]
    model, y = tiny_flux.personalized, prompts["reference"]
    plain = retouch(comfy, model, y, inverted)
    layout_only = retouch(comfy, swap(comfy, model, ref, lay, prompts, lambda2=STEPS, mask_start=STEPS), y, inverted)
    reference_only = retouch(comfy, swap(comfy, model, ref, lay, prompts, lambda2=0, mask_start=STEPS), y, inverted)
    assert rel(layout_only, plain) > 1e-4 and rel(reference_only, plain) > 1e-4 and rel(reference_only, layout_only) > 1e-4
    ones = retouch(comfy, swap(comfy, model, ref, lay, prompts, lambda2=0, mask_start=0, mask=torch.ones(1, 64, 64)), y,
                   inverted)
    assert rel(ones, reference_only) < 1e-5


def counting(model):
    """A clone of ``model`` that appends each diffusion-model call's row count to the returned list."""
    import comfy.patcher_extension as ext

    rows = []

    def count(executor, x, *args, **kwargs):
        rows.append(x.shape[0])
        return executor(x, *args, **kwargs)

    counted = model.clone()
    ext.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "test_rows", count, counted.model_options,
                             is_model_options=True)
    return counted, rows


def test_reference_cache_hit_and_miss(comfy, tiny_flux, prompts, inversions):
    """The second run with the same reference and prompts runs no reference rows and gives the same image; other
    reference prompts miss the cache."""
    (inverted, lay), (_, ref) = inversions["layout"], inversions["reference"]
    model, y = tiny_flux.personalized, prompts["reference"]
    counted, rows = counting(model)
    uncached = retouch(comfy, swap(comfy, counted, ref, lay, prompts, lambda2=2), y, inverted)
    first_rows, rows[:] = list(rows), []
    patched = swap(comfy, counted, ref, lay, prompts, lambda2=2, cache="offloaded to RAM")
    first = retouch(comfy, patched, y, inverted)
    assert rows == first_rows
    rows.clear()
    second = retouch(comfy, patched, y, inverted)
    assert sum(rows) == sum(first_rows) - (STEPS - 2)  # one reference row less at each reference-phase step
    assert rel(second, first) < 1e-5 and rel(first, uncached) < 1e-5
    # One tensor per block, step and row: the reference rows' attention input (keys and values projected on read).
    from comfyui_layout_retouch.records import SELF_IN

    kept = ref.cache.record.tensors
    dm = model.model.diffusion_model
    blocks = len(dm.double_blocks) + len(dm.single_blocks)  # "auto": every block of a model without vital ones
    assert {key[3] for key in kept} == {SELF_IN} and len(kept) == blocks * (STEPS - 2)
    assert all(t.shape == (1, 16, dm.hidden_size) for t in kept.values())  # 4 x 4 image tokens
    rows.clear()
    retouch(comfy, swap(comfy, counted, ref, lay, prompts, lambda2=2, cache="offloaded to RAM",
                        reference_prompt="vanilla"), y, inverted)
    assert rows == first_rows


def test_fast_mode_is_the_recorded_mode(comfy, tiny_flux, prompts, measured):
    """Inversions that record (at the swap's prompts) stand in for the source rows: the same image as the recorded
    mode with the adaptive mask on, one row per call; the layout's record holds the blocks' attention input and
    output, the reference's the input alone (its keys and values projected when read)."""
    from comfyui_layout_retouch.records import SELF_IN, SELF_OUT

    model = tiny_flux.personalized
    node = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
    (inverted, lay), (_, ref) = (node.execute(model=model, positive=prompts[prompt], latent=latent(seed), steps=STEPS,
                                              scheduler=SCHEDULER, sampler_name=SAMPLER, cfg=CFG, record_attention=True,
                                              attention_layers="double 0, single 1", record_for=path).result
                                 for prompt, seed, path in (("personalized", 4, "layout"), ("reference", 5, "reference")))
    assert {key[3] for key in lay.attention.tensors} == {SELF_IN, SELF_OUT}
    assert {key[3] for key in ref.attention.tensors} == {SELF_IN}
    assert {key[2] for key in ref.attention.tensors} == {("double", 0, 0), ("single", 1, 0)}
    counted, rows = counting(model)
    mask = torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(2))
    y = prompts["reference"]
    recorded = retouch(comfy, swap(comfy, counted, ref, lay, prompts, layers="double 0, single 1", mask=mask), y,
                       inverted)
    assert sum(rows) > STEPS
    rows.clear()
    fast = retouch(comfy, swap(comfy, counted, ref, lay, prompts, layers="double 0, single 1", mask=mask,
                               mode="recorded, attention from the inversions (fast)"), y, inverted)
    assert rows == [1] * STEPS
    measured(f"Flux fast mode vs recorded mode (mask on, double 0 + single 1): max relative difference "
             f"{rel(fast, recorded):.2e}")
    assert rel(fast, recorded) < 1e-5
    without = retouch(comfy, swap(comfy, model, ref, lay, prompts, layers="double 0, single 1"), y, inverted)
    assert rel(fast, without) > 1e-3  # the mask's blend, read from the layout's record, acts


def test_fast_mode_projects_fp8_weights_by_value(comfy, prompts, fp8_flux, measured):
    """The fast mode projects the reference's keys and values from its record with the block's own weights
    (host_api.dense_linear): on fp8 e4m3fn weights the image is the one of a float32 model holding the same
    values, up to float32 rounding."""
    from comfyui_layout_retouch.benchmark.random_models import FLUX_TINY, flux_patcher

    fp8, _ = fp8_flux
    twin = flux_patcher(FLUX_TINY, {k: v.to(torch.float32) for k, v in fp8.model.diffusion_model.state_dict().items()})
    node = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
    images = []
    for model in (fp8, twin):
        (inverted, lay), (_, ref) = (node.execute(model=model, positive=prompts[prompt], latent=latent(seed),
                                                  steps=STEPS, scheduler=SCHEDULER, sampler_name=SAMPLER, cfg=CFG,
                                                  record_attention=True, attention_layers="double 0, single 1",
                                                  record_for=path).result
                                     for prompt, seed, path in (("personalized", 4, "layout"),
                                                                ("reference", 5, "reference")))
        images.append(retouch(comfy, swap(comfy, model, ref, lay, prompts, layers="double 0, single 1",
                                          mode="recorded, attention from the inversions (fast)"),
                              prompts["reference"], inverted))
    measured(f"Flux fast mode, fp8 e4m3fn weights vs float32 ones of the same values: max relative difference "
             f"{rel(*images):.2e}")
    assert torch.isfinite(images[0]).all() and rel(*images) < 1e-5


def test_stage_1_records_the_layout_path(comfy, tiny_flux, prompts):
    """The Step-Blended KSampler with record_attention on Flux: its trajectory's record serves the fast mode (the
    layout's attention input and output at the personalized model's steps) and its subject map."""
    from comfyui_layout_retouch.records import SELF_IN, SELF_OUT

    node = comfy.NODE_CLASS_MAPPINGS["LR_StepBlendedKSampler"]
    vp, pp = prompts["vanilla"], prompts["personalized"]
    out = node.execute(vanilla_model=tiny_flux.vanilla, personalized_model=tiny_flux.personalized,
                       vanilla_positive=vp, vanilla_negative=vp, personalized_positive=pp, personalized_negative=pp,
                       latent_image=latent(), seed=SEED, steps=STEPS, lambda1=2, cfg=CFG, sampler_name=SAMPLER,
                       scheduler=SCHEDULER, denoise=1.0, record_attention=True, attention_layers="double 1").result
    traj = next(o for o in out if hasattr(o, "attention"))
    kept = traj.attention.tensors
    assert {key[3] for key in kept} == {SELF_IN, SELF_OUT} and {key[2] for key in kept} == {("double", 1, 0)}
    assert {key[0] for key in kept} == set(range(2, STEPS))
    assert traj.maps is not None and traj.maps.nbytes > 0


class TestBadInput:
    def test_an_sd_prompt_on_flux(self, comfy, tiny_flux, tiny, prompts, inversions):
        (_, lay), (_, ref) = inversions["layout"], inversions["reference"]
        with pytest.raises(ValueError, match=r"Multi-Source Attention Swap: input 'reference_positive'.*text width 768"
                                             r".*reads 4096"):
            node = comfy.NODE_CLASS_MAPPINGS["LR_MultiSourceAttentionSwap"]
            sd = tiny.encode("a photo of sks vase")
            node.execute(model=tiny_flux.personalized, reference_inversion=ref, layout_inversion=lay,
                         reference_positive=sd, reference_negative=sd, layout_positive=prompts["personalized"],
                         layout_negative=prompts["personalized"], lambda2=2, mask_start=4, layout_layers="auto",
                         reference_layers="auto", source_paths="recorded", reference_cache="off")

    def test_sd_and_flux_mixed_in_stage_1(self, comfy, tiny_flux, tiny, prompts):
        node = comfy.NODE_CLASS_MAPPINGS["LR_StepBlendedKSampler"]
        sd = tiny.encode("a sks vase")
        with pytest.raises(ValueError, match=r"Step-Blended KSampler: input 'personalized_model'.*same base family"):
            node.execute(vanilla_model=tiny_flux.vanilla, personalized_model=tiny.personalized,
                         vanilla_positive=prompts["vanilla"], vanilla_negative=prompts["vanilla"],
                         personalized_positive=sd, personalized_negative=sd, latent_image={"samples": torch.zeros(1, 16, 8, 8)},
                         seed=SEED, steps=STEPS, lambda1=2, cfg=CFG, sampler_name=SAMPLER, scheduler=SCHEDULER,
                         denoise=1.0)

    def test_sources_of_another_family(self, comfy, tiny_flux, tiny, prompts, inversions):
        (_, lay) = inversions["layout"]
        sd_lat = tiny.vae.encode(torch.rand(1, 64, 64, 3))
        _, sd_traj = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"].execute(
            model=tiny.personalized, positive=tiny.encode(""), latent={"samples": sd_lat}, steps=STEPS,
            scheduler="ddim_uniform", sampler_name="ddim", cfg=1.0).result
        with pytest.raises(ValueError, match=r"input 'reference_inversion'.*made with a SD15 model, not this Flux"):
            swap(comfy, tiny_flux.personalized, sd_traj, lay, prompts)

    def test_kontext_reference_latents(self, comfy, tiny_flux, prompts, inversions):
        import node_helpers

        (inverted, lay), (_, ref) = inversions["layout"], inversions["reference"]
        patched = swap(comfy, tiny_flux.personalized, ref, lay, prompts)
        kontext = node_helpers.conditioning_set_values(prompts["reference"], {"reference_latents": [lay.latents[0]]},
                                                       append=True)
        with pytest.raises(ValueError, match=r"input 'model'.*reference latents.*remove the ReferenceLatent"):
            retouch(comfy, patched, kontext, inverted)

    def test_a_schedule_the_inversion_cannot_retrace(self, comfy, tiny_flux, prompts):
        with pytest.raises(ValueError, match=r"DDIM Inversion: input 'sampler_name'.*cannot be inverted"):
            comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"].execute(
                model=tiny_flux.personalized, positive=prompts["empty"], latent=latent(), steps=STEPS,
                scheduler=SCHEDULER, sampler_name="dpmpp_2m", cfg=CFG)


def test_subject_map_reads_the_double_blocks_at_the_t5_tokens(comfy, tiny_flux, inversions):
    """The Cross-Attention Mask on Flux: the subject's T5 positions from ComfyUI's tokenizer, image-to-text joint
    attention of both double blocks (the singles untouched), equal to the probabilities computed by hand."""
    import comfy_host

    from comfyui_layout_retouch.attention.tokens import subject_positions

    clip = comfy_host.FluxTextStandIn(tiny_flux)
    prompt = "a sks dog on a beach"
    positions = subject_positions(clip, prompt, "dog")
    t5 = [entry[0] for entry in clip.tokenize(prompt)["t5xxl"][0]]
    dog = [entry[0] for entry in clip.tokenize("dog")["t5xxl"][0]]
    dog = dog[:dog.index(1)]  # up to T5's end token (then padding)
    assert [t5[i] for i in positions] == dog and positions[0] == t5.index(dog[0]) > 0  # T5's own positions
    _, traj = inversions["layout"]
    node = comfy.NODE_CLASS_MAPPINGS["LR_CrossAttentionMask"]
    soft, binary = node.execute(model=tiny_flux.personalized, layout_inversion=traj, clip=clip, prompt=prompt,
                                subject="dog", resolution="1/2 of the latent (32x32 at 512 px)", steps_to_average=2,
                                threshold=0.1).result[:2]
    assert soft.shape == binary.shape == (1, 64, 64) and 0 < float(binary.mean()) < 1
    assert 0.0 <= float(soft.min()) < float(soft.max()) <= 1.0
    # By hand: the record's sums are the block's own probabilities (one step, both double blocks).
    from comfyui_layout_retouch.attention.capture import add_map_capture, record_on_trajectory
    from comfyui_layout_retouch.attention.layers import map_layers
    from comfyui_layout_retouch.records import SubjectMapRecord

    record = SubjectMapRecord(2)
    model = tiny_flux.personalized
    patched = add_map_capture(model, record, map_layers(model), None, 2, traj.sampling_sigmas)
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert set(dit) == {("double_block", 0), ("double_block", 1)}
    record_on_trajectory(patched, clip.tiny_flux.encode(prompt), traj, [1])
    assert record.layers[1] == {("double", 0, 0), ("double", 1, 0)} and record.size == (4, 4)
    probs = record.sums[1]
    assert probs.shape == (1, 16, 256)
    seen = []  # every attention call's q and k at the same latent and sigma, the model unpatched

    def keep(func, q, k, v, heads, *args, **kwargs):
        seen.append((q, k))
        return func(q, k, v, heads, *args, **kwargs)

    plain = model.clone()
    plain.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = keep
    record_on_trajectory(plain, clip.tiny_flux.encode(prompt), traj, [1])
    assert len(seen) == 4  # two double blocks, then two single blocks
    by_hand = 0
    for q, k in seen[:2]:
        attention = torch.softmax(q.float() @ k.float().transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        by_hand = by_hand + attention[:, :, 256:, :256].mean(1)
    assert torch.allclose(probs, by_hand, rtol=1e-5, atol=1e-7)
