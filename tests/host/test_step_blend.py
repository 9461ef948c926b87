"""Step-blended KSampler against stock KSampler / KSamplerAdvanced chains, bit for bit on CPU."""

from __future__ import annotations

import pytest
import torch

STEPS = 6
SEED = 1234
CFG = 7.5
SAMPLER, SCHEDULER = "ddim", "ddim_uniform"


@pytest.fixture(scope="module")
def prompts(tiny):
    return {
        "vanilla": (tiny.encode("a red vase on a beach"), tiny.encode("blurry")),
        "personalized": (tiny.encode("a sks vase on a beach"), tiny.encode("blurry")),
        "embedding": (tiny.encode("a embedding:tiny_concept vase on a beach"), tiny.encode("blurry")),
    }


def latent(batch: int = 1, size: int = 8) -> dict:
    return {"samples": torch.zeros(batch, 4, size, size)}


def blended(comfy, vanilla, personalized, vconds, pconds, lat, lambda1, denoise=1.0, seed=SEED, steps=STEPS):
    node = comfy.NODE_CLASS_MAPPINGS["LR_StepBlendedKSampler"]
    out = node.execute(vanilla_model=vanilla, personalized_model=personalized, vanilla_positive=vconds[0],
                       vanilla_negative=vconds[1], personalized_positive=pconds[0], personalized_negative=pconds[1],
                       latent_image=lat, seed=seed, steps=steps, lambda1=lambda1, cfg=CFG, sampler_name=SAMPLER,
                       scheduler=SCHEDULER, denoise=denoise)
    return out.result[0]["samples"]


def stage1_inputs(tiny, vanilla_conds, personalized_conds, lambda1: int) -> dict:
    """The Step-Blended KSampler's inputs for the tiny models at SEED and STEPS."""
    return dict(vanilla_model=tiny.vanilla, personalized_model=tiny.personalized, vanilla_positive=vanilla_conds[0],
                vanilla_negative=vanilla_conds[1], personalized_positive=personalized_conds[0],
                personalized_negative=personalized_conds[1], latent_image=latent(), seed=SEED, steps=STEPS,
                lambda1=lambda1, cfg=CFG, sampler_name=SAMPLER, scheduler=SCHEDULER, denoise=1.0)


def ksampler(comfy, model, conds, lat, denoise=1.0):
    return comfy.KSampler().sample(model, SEED, STEPS, CFG, SAMPLER, SCHEDULER, conds[0], conds[1], lat,
                                   denoise=denoise)[0]["samples"]


def chain(comfy, vanilla, personalized, vconds, pconds, lat, lambda1, denoise=1.0):
    adv = comfy.KSamplerAdvanced()
    first = adv.sample(vanilla, "enable", SEED, STEPS, CFG, SAMPLER, SCHEDULER, vconds[0], vconds[1], lat,
                       0, lambda1, "enable", denoise=denoise)[0]
    return adv.sample(personalized, "disable", SEED, STEPS, CFG, SAMPLER, SCHEDULER, pconds[0], pconds[1], first,
                      lambda1, 10000, "disable", denoise=denoise)[0]["samples"]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("denoise", [1.0, 0.6])
def test_lambda1_zero_is_personalized_ksampler(comfy, tiny, prompts, denoise):
    lat = latent() if denoise == 1.0 else {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    got = blended(comfy, tiny.vanilla, tiny.personalized, prompts["vanilla"], prompts["personalized"], lat, 0, denoise)
    want = ksampler(comfy, tiny.personalized, prompts["personalized"], lat, denoise)
    assert max_diff(got, want) == 0.0
    assert not torch.isnan(got).any()


@pytest.mark.parametrize("denoise", [1.0, 0.6])
def test_lambda1_steps_is_vanilla_ksampler(comfy, tiny, prompts, denoise):
    lat = latent() if denoise == 1.0 else {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    got = blended(comfy, tiny.vanilla, tiny.personalized, prompts["vanilla"], prompts["personalized"], lat, STEPS,
                  denoise)
    want = ksampler(comfy, tiny.vanilla, prompts["vanilla"], lat, denoise)
    assert max_diff(got, want) == 0.0


@pytest.mark.parametrize("denoise,splits", [(1.0, range(1, STEPS)), (0.6, (1, STEPS // 2, STEPS - 1))])
def test_every_inner_lambda1_is_the_advanced_chain(comfy, tiny, prompts, denoise, splits):
    """Every inner lambda1 on one latent; three of them on a batch of two, part-denoised."""
    lat = latent() if denoise == 1.0 else {"samples": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    results = {}
    for lambda1 in splits:
        got = blended(comfy, tiny.vanilla, tiny.personalized, prompts["vanilla"], prompts["personalized"], lat,
                      lambda1, denoise)
        want = chain(comfy, tiny.vanilla, tiny.personalized, prompts["vanilla"], prompts["personalized"], lat,
                     lambda1, denoise)
        assert max_diff(got, want) == 0.0, f"lambda1={lambda1}"
        results[lambda1] = got
    # The split matters: different lambda1 give different images, and both ends differ from the middle.
    ends = [ksampler(comfy, tiny.personalized, prompts["personalized"], lat, denoise),
            ksampler(comfy, tiny.vanilla, prompts["vanilla"], lat, denoise)]
    for other in [*list(results.values())[1:], *ends]:
        assert max_diff(results[splits[0]], other) > 1e-3


def test_textual_inversion_on_one_checkpoint(comfy, tiny, prompts):
    """Same checkpoint for both, the embedding only in the personalized prompt."""
    lat = latent()
    got = blended(comfy, tiny.vanilla, tiny.vanilla, prompts["vanilla"], prompts["embedding"], lat, 2)
    want = chain(comfy, tiny.vanilla, tiny.vanilla, prompts["vanilla"], prompts["embedding"], lat, 2)
    assert max_diff(got, want) == 0.0
    plain = ksampler(comfy, tiny.vanilla, prompts["vanilla"], lat)  # (stage 1 refuses one model with one prompt)
    assert max_diff(got, plain) > 1e-3, "the embedding had no effect"


def test_lora_over_vanilla(comfy, tiny, prompts):
    lora_model = comfy.LoraLoaderModelOnly().load_lora_model_only(tiny.vanilla, "tiny_lora.safetensors", 1.0)[0]
    lat = latent()
    got = blended(comfy, tiny.vanilla, lora_model, prompts["vanilla"], prompts["personalized"], lat, 3)
    want = chain(comfy, tiny.vanilla, lora_model, prompts["vanilla"], prompts["personalized"], lat, 3)
    assert max_diff(got, want) == 0.0
    without = blended(comfy, tiny.vanilla, tiny.vanilla, prompts["vanilla"], prompts["personalized"], lat, 3)
    assert max_diff(got, without) > 1e-3, "the LoRA had no effect"


def test_callers_models_unchanged(comfy, tiny, prompts):
    lat = latent()
    before = [ksampler(comfy, m, prompts["personalized"], lat) for m in (tiny.vanilla, tiny.personalized)]
    options = [repr(m.model_options) for m in (tiny.vanilla, tiny.personalized)]
    blended(comfy, tiny.vanilla, tiny.personalized, prompts["vanilla"], prompts["personalized"], lat, 3)
    after = [ksampler(comfy, m, prompts["personalized"], lat) for m in (tiny.vanilla, tiny.personalized)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert options == [repr(m.model_options) for m in (tiny.vanilla, tiny.personalized)]


class TestBadInput:
    def test_lambda1_above_steps(self, comfy, tiny, prompts):
        with pytest.raises(ValueError, match=r"Step-Blended KSampler: input 'lambda1': is 12, larger than steps = 10"):
            blended(comfy, tiny.vanilla, tiny.personalized, prompts["vanilla"], prompts["personalized"], latent(),
                    12, steps=10)

    def test_mismatched_families(self, comfy, tiny, tiny_files, prompts):
        sdxl = comfy.UNETLoader().load_unet("tiny_sdxl_vega.safetensors", "default")[0]
        with pytest.raises(ValueError, match=r"input 'personalized_model'.*Segmind_Vega.*SD15.*same base family"):
            blended(comfy, tiny.vanilla, sdxl, prompts["vanilla"], prompts["personalized"], latent(), 3)

    def test_empty_batch(self, comfy, tiny, prompts):
        with pytest.raises(ValueError, match=r"input 'latent_image'.*empty batch"):
            blended(comfy, tiny.vanilla, tiny.personalized, prompts["vanilla"], prompts["personalized"],
                    {"samples": torch.zeros(0, 4, 8, 8)}, 3)

    def test_wrong_channels(self, comfy, tiny, prompts):
        with pytest.raises(ValueError, match=r"input 'latent_image': has 16 channels but the SD15 model takes 4"):
            blended(comfy, tiny.vanilla, tiny.personalized, prompts["vanilla"], prompts["personalized"],
                    {"samples": torch.ones(1, 16, 8, 8)}, 3)


def test_interruption_is_honoured(comfy, tiny, prompts):
    import comfy.model_management as mm

    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            blended(comfy, tiny.vanilla, tiny.personalized, prompts["vanilla"], prompts["personalized"], latent(), 3)
    finally:
        mm.interrupt_current_processing(False)


def test_trajectory_is_stage1s_own_path(comfy, tiny, prompts):
    from comfy import samplers

    node = comfy.NODE_CLASS_MAPPINGS["LR_StepBlendedKSampler"]
    lambda1 = 2
    out, traj, start = node.execute(**stage1_inputs(tiny, prompts["vanilla"], prompts["personalized"], lambda1)).result
    fmt = tiny.personalized.get_model_object("latent_format")
    sigmas = samplers.calculate_sigmas(tiny.personalized.get_model_object("model_sampling"), SCHEDULER, STEPS)
    assert torch.equal(traj.sampling_sigmas, sigmas.float()) and len(traj) == len(sigmas)
    assert torch.equal(traj.latents[0], fmt.process_in(out["samples"]))  # it ends exactly at the layout latent
    assert torch.equal(start["samples"], fmt.process_out(traj.latents[-1]))
    adv = comfy.KSamplerAdvanced()
    for k in (1, lambda1, lambda1 + 2):
        first = adv.sample(tiny.vanilla, "enable", SEED, STEPS, CFG, SAMPLER, SCHEDULER, *prompts["vanilla"], latent(),
                           0, min(k, lambda1), "enable")[0]
        if k > lambda1:
            first = adv.sample(tiny.personalized, "disable", SEED, STEPS, CFG, SAMPLER, SCHEDULER,
                               *prompts["personalized"], first, lambda1, k, "enable")[0]
        want = fmt.process_in(first["samples"])
        got = traj.latent_at(sigmas[k])
        assert float((got - want).abs().max() / want.abs().max()) < 1e-5, k


def test_retouch_along_stage1_trajectory_reproduces_the_layout(comfy, tiny, prompts, measured):
    """lambda1 = 0, every layer copied from the layout for every step: the retouch retraces stage 1."""
    node = comfy.NODE_CLASS_MAPPINGS["LR_StepBlendedKSampler"]
    pos, neg = prompts["personalized"]
    out, traj, start = node.execute(**stage1_inputs(tiny, prompts["vanilla"], (pos, neg), 0)).result
    swap = comfy.NODE_CLASS_MAPPINGS["LR_MultiSourceAttentionSwap"]
    patched = swap.execute(model=tiny.personalized, reference_inversion=traj, layout_inversion=traj,
                           reference_positive=prompts["vanilla"][0], reference_negative=neg, layout_positive=pos,
                           layout_negative=neg, lambda2=len(traj) - 1, mask_start=len(traj) - 1, layout_layers="all",
                           reference_layers="all", source_paths="recorded", reference_cache="off").result[0]
    got = comfy.KSamplerAdvanced().sample(patched, "disable", 0, STEPS, CFG, SAMPLER, SCHEDULER, prompts["vanilla"][0],
                                          neg, start, 0, 10000, "disable")[0]["samples"]
    error = float((got - out["samples"]).abs().max() / out["samples"].abs().max())
    measured(f"retouch along stage 1's trajectory (lambda1 0, all layers, all steps) vs the layout: max relative "
             f"difference {error:.2e}")
    assert error < 1e-4


def test_batch_seeds_give_each_latent_its_single_runs_noise(comfy, tiny, prompts, measured):
    """``batch_seeds`` (the runner's --batch): latent k of a batch equals the single run with seed k."""
    from comfyui_layout_retouch.sampling.step_blend import SamplerSettings, initial_noise

    lat = latent(2)["samples"]
    settings = SamplerSettings(SEED, STEPS, CFG, SAMPLER, SCHEDULER, batch_seeds=(7, 9))
    singles = [initial_noise(latent()["samples"], SamplerSettings(s, STEPS, CFG, SAMPLER, SCHEDULER), None)
               for s in (7, 9)]
    assert torch.equal(initial_noise(lat, settings, None), torch.cat(singles))  # the noise: bit for bit
    node = comfy.NODE_CLASS_MAPPINGS["LR_StepBlendedKSampler"]
    inputs = stage1_inputs(tiny, prompts["vanilla"], prompts["personalized"], 2)
    batched = node.execute(**{**inputs, "latent_image": latent(2), "batch_seeds": "7, 9"}).result[0]["samples"]
    for k, seed in enumerate((7, 9)):
        single = node.execute(**{**inputs, "seed": seed}).result[0]["samples"]
        measured(f"Step-Blended KSampler, batch_seeds: |batched[{k}] - single(seed {seed})| = "
                 f"{max_diff(batched[k:k + 1], single):.1e}")
        assert torch.allclose(batched[k:k + 1], single, atol=1e-4)
    for bad, said in (("7", "holds 1 seeds for a batch of 2"), ("7,x", "not a list of whole numbers")):
        with pytest.raises(ValueError, match=f"Step-Blended KSampler: input 'batch_seeds': .*{said}"):
            node.execute(**{**inputs, "latent_image": latent(2), "batch_seeds": bad})
