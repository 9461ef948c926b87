"""Layout-and-Retouch on every DiT family, each test once per family, on tiny transformers built with ComfyUI's own
classes (``comfy_host.TinyDiT``) on the real host: the twins of the SD exactness tests."""

from __future__ import annotations

import comfy_host
import pytest
import torch

STEPS = 6
SEED = 77
SAMPLER, SCHEDULER = "euler", "simple"  # Flux.1-dev's, at cfg 1 with FluxGuidance
CFG = 1.0


FAMILIES = [pytest.param(name, marks=pytest.mark.host(comfy_host.TinyDiT.HOSTS[name])) if name in
            comfy_host.TinyDiT.HOSTS else name for name in comfy_host.TinyDiT.SPECS]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny_dit(request, comfy):
    return comfy_host.TinyFlux() if request.param == "flux" else comfy_host.TinyDiT(request.param)


def latent(tiny_dit, seed: int = 0, tokens: tuple[int, int] = (4, 4), zeros: bool = False) -> dict:
    """A latent of the family's channels giving ``tokens`` image tokens (rows, columns): 8x8 on Flux.1, 4x4 on
    Flux.2 (one token a latent pixel, 128 channels)."""
    shape = (1, tiny_dit.channels, tokens[0] * tiny_dit.patch, tokens[1] * tiny_dit.patch)
    return {"samples": torch.zeros(shape) if zeros else torch.randn(shape, generator=torch.Generator().manual_seed(seed))}


@pytest.fixture(scope="module")
def prompts(tiny_dit):
    return {"vanilla": tiny_dit.encode("a red vase on a beach"), "personalized": tiny_dit.encode("a sks vase on a beach"),
            "reference": tiny_dit.encode("a photo of sks vase"), "empty": tiny_dit.encode("")}


def blended(comfy, tiny_dit, prompts, lambda1: int, lat: dict):
    node = comfy.NODE_CLASS_MAPPINGS["LR_StepBlendedKSampler"]
    vp, pp = prompts["vanilla"], prompts["personalized"]
    return node.execute(vanilla_model=tiny_dit.vanilla, personalized_model=tiny_dit.personalized,
                        vanilla_positive=vp, vanilla_negative=vp, personalized_positive=pp, personalized_negative=pp,
                        latent_image=lat, seed=SEED, steps=STEPS, lambda1=lambda1, cfg=CFG, sampler_name=SAMPLER,
                        scheduler=SCHEDULER, denoise=1.0).result


def test_step_blend_is_the_stock_chain_bit_for_bit(comfy, tiny_dit, prompts):
    """Stage 1 on a flow model: lambda1 0 and steps are the one-model KSamplers, every inner lambda1 the
    KSamplerAdvanced chain, bit for bit."""
    lat = latent(tiny_dit, zeros=True)
    vp, pp = prompts["vanilla"], prompts["personalized"]
    adv = comfy.KSamplerAdvanced()
    for lambda1 in range(STEPS + 1):
        got = blended(comfy, tiny_dit, prompts, lambda1, lat)[0]["samples"]
        if lambda1 in (0, STEPS):
            model, conds = (tiny_dit.personalized, pp) if lambda1 == 0 else (tiny_dit.vanilla, vp)
            want = comfy.KSampler().sample(model, SEED, STEPS, CFG, SAMPLER, SCHEDULER, conds, conds, lat)[0]["samples"]
        else:
            first = adv.sample(tiny_dit.vanilla, "enable", SEED, STEPS, CFG, SAMPLER, SCHEDULER, vp, vp, lat, 0,
                               lambda1, "enable")[0]
            want = adv.sample(tiny_dit.personalized, "disable", SEED, STEPS, CFG, SAMPLER, SCHEDULER, pp, pp, first,
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


def test_inversion_reaches_sigma_1_and_reconstructs_at_first_order(comfy, tiny_dit, prompts, measured):
    """Inverse Euler in flow space up to Flux's top sigma 1.0: a finite inverted latent (ComfyUI's sampler would
    divide by 1 - sigma there), and the reconstruction error falls at first order with the steps."""
    lat = latent(tiny_dit, 3)
    model, cond = tiny_dit.personalized, prompts["empty"]
    errors = {}
    for steps in (8, 16, 32):
        inverted, traj = invert(comfy, model, cond, lat, steps)
        assert float(traj.sigmas[-1]) == 1.0 and torch.isfinite(inverted["samples"]).all()
        assert torch.equal(inverted["samples"], model.get_model_object("latent_format").process_out(traj.latents[-1]))
        out = reconstruct(comfy, model, cond, traj, steps)
        errors[steps] = float((out.reshape(lat["samples"].shape) - lat["samples"]).abs().max())  # Qwen-Image: 5-D
    ratios = errors[8] / errors[16], errors[16] / errors[32]
    measured(f"{tiny_dit.base_model} inversion round trip, max error at 8/16/32 steps: {errors[8]:.3g}/{errors[16]:.3g}/"
             f"{errors[32]:.3g} (ratios {ratios[0]:.2f}, {ratios[1]:.2f})")
    assert errors[32] < errors[16] < errors[8]
    assert all(1.6 < r < 2.6 for r in ratios), ratios  # first order: the error halves with the step


@pytest.fixture(scope="module")
def inversions(comfy, tiny_dit, prompts):
    model = tiny_dit.personalized
    return {name: invert(comfy, model, prompts["empty"], latent(tiny_dit, seed)) for name, seed in (("layout", 4), ("reference", 5))}


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
def fp8_dit(comfy, tiny_dit, prompts):
    """The personalized tiny model with its weights stored in fp8 e4m3fn and computed in float32 (ComfyUI's manual
    cast), as the most common Flux download runs, and its layout inversion."""
    from comfyui_layout_retouch.benchmark.random_models import dit_patcher, dit_state_dict

    model = dit_patcher(tiny_dit.config, dit_state_dict(tiny_dit.config, 2), dtype=torch.float8_e4m3fn,
                        compute=torch.float32)
    return model, invert(comfy, model, prompts["empty"], latent(tiny_dit, 4))


@pytest.mark.parametrize("weights, bound", [("float32", 1e-5), ("fp8 e4m3fn", 1e-3)])
def test_swap_identity_on_every_block(comfy, tiny_dit, prompts, inversions, measured, request, weights, bound):
    """Reference = layout = target (the sources re-denoised beside it, the paper's mode), every block, mask 0.5,
    keys at their own positions: the swap changes nothing but batch numerics; the run starts from the inverted
    latent as a flow sampler's noise. With fp8 weights too (what the swap reads of them is dequantized)."""
    if weights == "float32":
        model, (inverted, traj) = tiny_dit.personalized, inversions["layout"]
    else:
        model, (inverted, traj) = request.getfixturevalue("fp8_dit")
        assert any(p.dtype == torch.float8_e4m3fn for p in model.model.diffusion_model.parameters())
    patched = swap(comfy, model, traj, traj, prompts, mask=torch.full((1, 64, 64), 0.5), positions="shared",
                   reference_prompt="personalized", mode="re-denoised (paper)")
    got = retouch(comfy, patched, prompts["personalized"], inverted)
    want = reconstruct(comfy, model, prompts["personalized"], traj)
    measured(f"{tiny_dit.base_model} swap identity ({weights} weights, all blocks, mask 0.5): max relative difference "
             f"{rel(got, want):.2e}")
    assert rel(got, want) < bound
    from comfyui_layout_retouch.attention.families import family_of

    if weights != "float32" or family_of(model).rope(model.model.diffusion_model) is None:
        return  # keys without RoPE have no positions to shift
    shifted = retouch(comfy, swap(comfy, model, traj, traj, prompts, mask=torch.full((1, 64, 64), 0.5),
                                  reference_prompt="personalized", mode="re-denoised (paper)"), prompts["personalized"],
                      inverted)
    assert rel(shifted, want) > 1e-3  # keys moved off the target's positions attend differently


# The shape of the report that `shifted` reference positions did nothing on Flux.1 under ComfyUI 0.33.0 (issue 39):
# 2 double and 3 single blocks, 192 wide (3 heads of 64), a 6x4 token grid.
FLUX_192 = {"hidden_size": 192, "num_heads": 3, "depth": 2, "depth_single_blocks": 3, "axes_dim": [8, 28, 28]}
MODES = ("recorded", "recorded, attention from the inversions (fast)", "re-denoised (paper)")


def shifted_and_shared(comfy, model, prompts, mode: str, latent_of) -> tuple[torch.Tensor, torch.Tensor]:
    """The retouch of a latent of a 6x4 token grid (rows and columns apart; ``latent_of(seed)``) with the
    references' keys shifted and shared, every block swapped, in source mode ``mode``."""
    node = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
    (inverted, lay), (_, ref) = (
        node.execute(model=model, positive=prompts[prompt], latent=latent_of(seed), steps=STEPS, scheduler=SCHEDULER,
            sampler_name=SAMPLER, cfg=CFG, record_attention=True, attention_layers="all", record_for=path).result
        for prompt, seed, path in (("personalized", 4, "layout"), ("reference", 5, "reference")))
    return tuple(retouch(comfy, swap(comfy, model, ref, lay, prompts, positions=positions, mode=mode), prompts["reference"],
                         inverted) for positions in ("shifted", "shared"))


@pytest.mark.parametrize("mode", MODES)
def test_shifted_positions_move_the_references_keys(comfy, tiny_dit, prompts, mode, measured):
    """``reference_positions``: on a family whose keys carry RoPE, ``shifted`` puts the references' keys off the
    target's grid, so the image is not ``shared``'s, in every source mode; where keys carry no RoPE (SD3) there is
    nothing to shift and the two are the same image, bit for bit."""
    from comfyui_layout_retouch.attention.families import family_of

    model = tiny_dit.personalized
    shifted, shared = shifted_and_shared(comfy, model, prompts, mode, lambda seed: latent(tiny_dit, seed, (6, 4)))
    if family_of(model).rope(model.model.diffusion_model) is None:
        assert torch.equal(shifted, shared)
        return
    measured(f"{tiny_dit.base_model} shifted vs shared reference positions ({mode}, 6x4 tokens): max relative "
             f"difference {rel(shifted, shared):.2e}")
    assert rel(shifted, shared) > 1e-3


@pytest.mark.parametrize("mode", MODES)
def test_shifted_positions_move_the_references_keys_on_the_reported_flux(comfy, mode, measured):
    """The same on the Flux.1 of the report (:data:`FLUX_192`)."""
    from comfyui_layout_retouch.benchmark.random_models import FLUX_TINY, dit_patcher, dit_state_dict

    config = dict(FLUX_TINY, **FLUX_192)
    model = dit_patcher(config, dit_state_dict(config, 2))
    prompts = {name: comfy_host.TinyFlux.encode(text) for name, text in (("personalized", "a sks vase on a beach"),
                                                                         ("reference", "a photo of sks vase"))}
    shifted, shared = shifted_and_shared(comfy, model, prompts, mode, lambda seed: {"samples": torch.randn(
        1, 16, 12, 8, generator=torch.Generator().manual_seed(seed))})
    measured(f"Flux (192 wide, 2 double + 3 single blocks) shifted vs shared reference positions ({mode}, 6x4 tokens): "
             f"max relative difference {rel(shifted, shared):.2e}")
    assert rel(shifted, shared) > 1e-3


def test_a_shift_is_the_keys_at_the_shifted_positions(comfy, tiny_dit):
    """``shifted``'s exactness: keys as a block makes them (the model's own RoPE table, the host's ``apply_rope1``)
    rotated by ``c`` columns are the keys the block makes at every token's column plus ``c``, on every token (a
    one-offset table that a kernel did not broadcast would move the first token alone)."""
    from comfy.ldm.flux.math import apply_rope1

    from comfyui_layout_retouch import host_api
    from comfyui_layout_retouch.attention.families import family_of
    from comfyui_layout_retouch.attention.joint_attention import shift_rope

    dm = tiny_dit.personalized.model.diffusion_model
    rope = family_of(tiny_dit.personalized).rope(dm)
    if rope is None:  # SD3: keys carry no RoPE
        return
    theta, axes_dim = rope
    rows, columns, shift = 6, 4, 8
    ids = torch.zeros(1, rows, columns, len(axes_dim))  # Flux.2: a 4th axis, the text's
    ids[..., 1], ids[..., 2] = torch.arange(rows)[:, None], torch.arange(columns)[None, :]
    ids = ids.flatten(1, 2)
    keys = torch.randn(1, 2, rows * columns, sum(axes_dim), generator=torch.Generator().manual_seed(3))
    at = lambda ids: apply_rope1(keys, host_api.flux_rope_layout(dm.pe_embedder(ids)))  # noqa: E731
    moved = ids.clone()
    moved[..., 2] += shift
    got, want, before = shift_rope(at(ids), shift, theta, axes_dim), at(moved), at(ids)
    assert (got - want).abs().max() < 1e-5 * want.abs().max()
    assert ((got - before).abs().amax(dim=(0, 1, 3)) > 1e-3).all()  # every token moved


def test_stage_1_refuses_dits_of_two_text_widths(comfy):
    """Stage 1's family check reads the family's text width (a DiT's text input, not a UNet's context_dim, which a
    DiT's config lacks): a Flux.1 reading T5's 4096 and one reading 2048 are refused together, naming both."""
    from comfyui_layout_retouch.benchmark.random_models import FLUX_TINY, dit_patcher, dit_state_dict

    wide, narrow = (dit_patcher(c, dit_state_dict(c, 1)) for c in (FLUX_TINY, dict(FLUX_TINY, context_in_dim=2048)))
    cond = comfy_host.TinyFlux.encode("a vase")
    node = comfy.NODE_CLASS_MAPPINGS["LR_StepBlendedKSampler"]
    with pytest.raises(ValueError, match=r"input 'personalized_model': is a Flux model \(text width 2048\) but "
                                         r"vanilla_model is a Flux model \(text width 4096\)"):
        node.execute(vanilla_model=wide, personalized_model=narrow, vanilla_positive=cond, vanilla_negative=cond,
                     personalized_positive=cond, personalized_negative=cond,
                     latent_image={"samples": torch.zeros(1, 16, 8, 8)}, seed=SEED, steps=STEPS, lambda1=2, cfg=CFG,
                     sampler_name=SAMPLER, scheduler=SCHEDULER, denoise=1.0)


def test_patches_on_exactly_the_chosen_blocks_and_the_callers_model_untouched(comfy, tiny_dit, prompts, inversions):
    import comfy.model_management as mm

    from comfyui_layout_retouch.attention.session import RUN_KEY

    (inverted, lay), (_, ref) = inversions["layout"], inversions["reference"]
    model = tiny_dit.personalized
    options, before = repr(model.model_options), retouch(comfy, model, prompts["reference"], inverted)
    first, second = tiny_dit.two_blocks
    patched = swap(comfy, model, ref, lay, prompts, layers=first, reference_layers=second)
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert set(dit) == set(tiny_dit.dit_keys.values())
    auto = swap(comfy, model, ref, lay, prompts, layers="auto")
    # The family's auto blocks that the tiny model has (Flux: Stable Flow's vital double 0 and 1).
    assert set(auto.model_options["transformer_options"]["patches_replace"]["dit"]) == {
        (f"{name}_block", i) for name, i in tiny_dit.auto}
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


def test_patches_already_on_the_dit_keys_are_chained(comfy, tiny_dit, prompts, inversions):
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

    both = ", ".join(tiny_dit.two_blocks)
    with_pass = tiny_dit.personalized.clone()
    for key in tiny_dit.dit_keys.values():
        with_pass.set_model_patch_replace(passing, "dit", *key)
    swapped = swap(comfy, tiny_dit.personalized, ref, lay, prompts, layers=both)
    chained = swap(comfy, with_pass, ref, lay, prompts, layers=both)
    assert torch.equal(retouch(comfy, chained, y, inverted), retouch(comfy, swapped, y, inverted))
    assert len(calls) == 2 * STEPS  # both keys, every step
    with_skip = tiny_dit.personalized.clone()
    with_skip.set_model_patch_replace(skipping, "dit", "double_block", 0)
    skipped = swap(comfy, with_skip, ref, lay, prompts, layers="double 0", lambda2=0, mask_start=STEPS)
    want = reconstruct(comfy, with_skip, y, lay)
    assert rel(retouch(comfy, skipped, y, inverted), want) < 1e-5
    assert rel(retouch(comfy, swap(comfy, tiny_dit.personalized, ref, lay, prompts, layers="double 0", lambda2=0,
                                   mask_start=STEPS), y, inverted), want) > 1e-4


def test_swap_phases_read_the_sources(comfy, tiny_dit, prompts, inversions):
    """The layout phase and the reference phase each change the target; mask 1 everywhere is no blend and
    mask 0 from step 0 on is the layout's attention output in every swapped block."""
    (inverted, lay), (_, ref) = inversions["layout"], inversions["reference"]
    model, y = tiny_dit.personalized, prompts["reference"]
    plain = retouch(comfy, model, y, inverted)
    layout_only = retouch(comfy, swap(comfy, model, ref, lay, prompts, lambda2=STEPS, mask_start=STEPS), y, inverted)
    reference_only = retouch(comfy, swap(comfy, model, ref, lay, prompts, lambda2=0, mask_start=STEPS), y, inverted)
    assert rel(layout_only, plain) > 1e-4 and rel(reference_only, plain) > 1e-4 and rel(reference_only, layout_only) > 1e-4
    ones = retouch(comfy, swap(comfy, model, ref, lay, prompts, lambda2=0, mask_start=0, mask=torch.ones(1, 64, 64)), y,
                   inverted)
    assert rel(ones, reference_only) < 1e-5


def counting(model):
    """A clone of ``model`` that appends each diffusion-model call's row count to the returned list, as its first
    block sees them: a ``dit`` patch on ``("double_block", 0)``, which every DiT family has and the swap chains
    (SD3's MMDiT runs no DIFFUSION_MODEL wrappers)."""
    rows = []

    def count(args, extra):
        rows.append(args["img"].shape[0])
        return extra["original_block"](args)

    counted = model.clone()
    counted.set_model_patch_replace(count, "dit", "double_block", 0)
    return counted, rows


def test_reference_cache_hit_and_miss(comfy, tiny_dit, prompts, inversions):
    """The second run with the same reference and prompts runs no reference rows and gives the same image; other
    reference prompts miss the cache."""
    (inverted, lay), (_, ref) = inversions["layout"], inversions["reference"]
    model, y = tiny_dit.personalized, prompts["reference"]
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
    blocks = tiny_dit.blocks  # the swap's layers: "all"
    assert {key[3] for key in kept} == {SELF_IN} and len(kept) == blocks * (STEPS - 2)
    width = getattr(dm, "hidden_size", None) or dm.inner_dim  # Flux's, Chroma's, SD3's; Qwen-Image's
    assert all(t.shape == (1, 16, width) for t in kept.values())  # 4 x 4 image tokens
    rows.clear()
    retouch(comfy, swap(comfy, counted, ref, lay, prompts, lambda2=2, cache="offloaded to RAM",
                        reference_prompt="vanilla"), y, inverted)
    assert rows == first_rows


def test_fast_mode_is_the_recorded_mode(comfy, tiny_dit, prompts, measured):
    """Inversions that record (at the swap's prompts) stand in for the source rows: the same image as the recorded
    mode with the adaptive mask on, one row per call; the layout's record holds the blocks' attention input and
    output, the reference's the input alone (its keys and values projected when read)."""
    from comfyui_layout_retouch.records import SELF_IN, SELF_OUT

    model, both = tiny_dit.personalized, ", ".join(tiny_dit.two_blocks)
    node = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
    (inverted, lay), (_, ref) = (node.execute(model=model, positive=prompts[prompt], latent=latent(tiny_dit, seed), steps=STEPS,
                                              scheduler=SCHEDULER, sampler_name=SAMPLER, cfg=CFG, record_attention=True,
                                              attention_layers=both, record_for=path).result
                                 for prompt, seed, path in (("personalized", 4, "layout"), ("reference", 5, "reference")))
    assert {key[3] for key in lay.attention.tensors} == {SELF_IN, SELF_OUT}
    assert {key[3] for key in ref.attention.tensors} == {SELF_IN}
    assert {key[2] for key in ref.attention.tensors} == {(t.split()[0], int(t.split()[1]), 0) for t in tiny_dit.two_blocks}
    counted, rows = counting(model)
    mask = torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(2))
    y = prompts["reference"]
    recorded = retouch(comfy, swap(comfy, counted, ref, lay, prompts, layers=both, mask=mask), y, inverted)
    assert sum(rows) > STEPS
    rows.clear()
    fast = retouch(comfy, swap(comfy, counted, ref, lay, prompts, layers=both, mask=mask,
                               mode="recorded, attention from the inversions (fast)"), y, inverted)
    assert rows == [1] * STEPS
    measured(f"{tiny_dit.base_model} fast mode vs recorded mode (mask on, {both}): max relative difference "
             f"{rel(fast, recorded):.2e}")
    assert rel(fast, recorded) < 1e-5
    without = retouch(comfy, swap(comfy, model, ref, lay, prompts, layers=both), y, inverted)
    assert rel(fast, without) > 1e-3  # the mask's blend, read from the layout's record, acts


def test_fast_mode_projects_fp8_weights_by_value(comfy, tiny_dit, prompts, fp8_dit, measured):
    """The fast mode projects the reference's keys and values from its record with the block's own weights
    (host_api.dense_linear): on fp8 e4m3fn weights the image is the one of a float32 model holding the same
    values, up to float32 rounding."""
    from comfyui_layout_retouch.benchmark.random_models import dit_patcher

    fp8, _ = fp8_dit
    twin = dit_patcher(tiny_dit.config, {k: v.to(torch.float32) for k, v in fp8.model.diffusion_model.state_dict().items()})
    both = ", ".join(tiny_dit.two_blocks)
    node = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
    images = []
    for model in (fp8, twin):
        (inverted, lay), (_, ref) = (node.execute(model=model, positive=prompts[prompt], latent=latent(tiny_dit, seed),
                                                  steps=STEPS, scheduler=SCHEDULER, sampler_name=SAMPLER, cfg=CFG,
                                                  record_attention=True, attention_layers=both,
                                                  record_for=path).result
                                     for prompt, seed, path in (("personalized", 4, "layout"),
                                                                ("reference", 5, "reference")))
        images.append(retouch(comfy, swap(comfy, model, ref, lay, prompts, layers=both,
                                          mode="recorded, attention from the inversions (fast)"),
                              prompts["reference"], inverted))
    measured(f"{tiny_dit.base_model} fast mode, fp8 e4m3fn weights vs float32 ones of the same values: max relative difference "
             f"{rel(*images):.2e}")
    assert torch.isfinite(images[0]).all() and rel(*images) < 1e-5


def test_stage_1_records_the_layout_path(comfy, tiny_dit, prompts):
    """The Step-Blended KSampler with record_attention on a DiT: its trajectory's record serves the fast mode (the
    layout's attention input and output at the personalized model's steps) and its subject map."""
    from comfyui_layout_retouch.records import SELF_IN, SELF_OUT

    node = comfy.NODE_CLASS_MAPPINGS["LR_StepBlendedKSampler"]
    vp, pp = prompts["vanilla"], prompts["personalized"]
    out = node.execute(vanilla_model=tiny_dit.vanilla, personalized_model=tiny_dit.personalized,
                       vanilla_positive=vp, vanilla_negative=vp, personalized_positive=pp, personalized_negative=pp,
                       latent_image=latent(tiny_dit), seed=SEED, steps=STEPS, lambda1=2, cfg=CFG, sampler_name=SAMPLER,
                       scheduler=SCHEDULER, denoise=1.0, record_attention=True,
                       attention_layers=tiny_dit.two_blocks[0]).result
    traj = next(o for o in out if hasattr(o, "attention"))
    kept = traj.attention.tensors
    name, i = tiny_dit.two_blocks[0].split()
    assert {key[3] for key in kept} == {SELF_IN, SELF_OUT} and {key[2] for key in kept} == {(name, int(i), 0)}
    assert {key[0] for key in kept} == set(range(2, STEPS))
    assert traj.maps is not None and traj.maps.nbytes > 0


class TestBadInput:
    def test_an_sd_prompt(self, comfy, tiny_dit, tiny, prompts, inversions):
        (_, lay), (_, ref) = inversions["layout"], inversions["reference"]
        with pytest.raises(ValueError, match=r"Multi-Source Attention Swap: input 'reference_positive'.*text width 768"
                                             rf".*reads {tiny_dit.text_width}"):
            node = comfy.NODE_CLASS_MAPPINGS["LR_MultiSourceAttentionSwap"]
            sd = tiny.encode("a photo of sks vase")
            node.execute(model=tiny_dit.personalized, reference_inversion=ref, layout_inversion=lay,
                         reference_positive=sd, reference_negative=sd, layout_positive=prompts["personalized"],
                         layout_negative=prompts["personalized"], lambda2=2, mask_start=4, layout_layers="auto",
                         reference_layers="auto", source_paths="recorded", reference_cache="off")

    def test_sd_and_a_dit_mixed_in_stage_1(self, comfy, tiny_dit, tiny, prompts):
        node = comfy.NODE_CLASS_MAPPINGS["LR_StepBlendedKSampler"]
        sd = tiny.encode("a sks vase")
        with pytest.raises(ValueError, match=r"Step-Blended KSampler: input 'personalized_model'.*same base family"):
            node.execute(vanilla_model=tiny_dit.vanilla, personalized_model=tiny.personalized,
                         vanilla_positive=prompts["vanilla"], vanilla_negative=prompts["vanilla"],
                         personalized_positive=sd, personalized_negative=sd, latent_image=latent(tiny_dit, zeros=True),
                         seed=SEED, steps=STEPS, lambda1=2, cfg=CFG, sampler_name=SAMPLER, scheduler=SCHEDULER,
                         denoise=1.0)

    def test_sources_of_another_family(self, comfy, tiny_dit, tiny, prompts, inversions):
        (_, lay) = inversions["layout"]
        sd_lat = tiny.vae.encode(torch.rand(1, 64, 64, 3))
        _, sd_traj = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"].execute(
            model=tiny.personalized, positive=tiny.encode(""), latent={"samples": sd_lat}, steps=STEPS,
            scheduler="ddim_uniform", sampler_name="ddim", cfg=1.0).result
        with pytest.raises(ValueError, match=rf"input 'reference_inversion'.*made with a SD15 model, not this {tiny_dit.base_model}"):
            swap(comfy, tiny_dit.personalized, sd_traj, lay, prompts)

    def test_kontext_reference_latents(self, comfy, tiny_dit, prompts, inversions):
        """A model given reference latents (Flux Kontext's, Qwen-Image Edit's: its ``extra_conds`` passes them on)
        is refused them in the retouch; one whose ``extra_conds`` drops them samples as without them."""
        import inspect

        import node_helpers

        (inverted, lay), (_, ref) = inversions["layout"], inversions["reference"]
        patched = swap(comfy, tiny_dit.personalized, ref, lay, prompts)
        kontext = node_helpers.conditioning_set_values(prompts["reference"], {"reference_latents": [lay.latents[0]]},
                                                       append=True)
        model_base = type(tiny_dit.personalized.model)
        if any("ref_latents" in inspect.getsource(c.extra_conds) for c in model_base.__mro__ if "extra_conds" in vars(c)):
            with pytest.raises(ValueError, match=r"input 'model'.*reference latents.*remove the ReferenceLatent"):
                retouch(comfy, patched, kontext, inverted)
        else:
            assert torch.equal(retouch(comfy, patched, kontext, inverted),
                               retouch(comfy, patched, prompts["reference"], inverted))

    def test_pick_and_draw_is_refused(self, comfy, tiny_dit, prompts, inversions):
        """Pick-and-Draw's losses read a UNet's cross-attention: its nodes refuse a DiT at their model input."""
        _, ref = inversions["reference"]
        refusal = (r"input '{}': is a [\w.-]+ model, whose text and image tokens attend jointly.*Fix: use a model "
                   r"of SD1.x, SD2.x, SDXL with Pick-and-Draw")
        with pytest.raises(ValueError, match="Reference Palette: " + refusal.format("model")):
            comfy.NODE_CLASS_MAPPINGS["LR_ReferencePalette"].execute(
                model=tiny_dit.personalized, reference_inversion=ref, clip=None, prompt="a photo of sks vase",
                subject="vase", appearance_start=2, appearance_end=3, layers="auto", threshold=0.1)
        guider = comfy.NODE_CLASS_MAPPINGS["CFGGuider"]().get_guider(tiny_dit.personalized, prompts["vanilla"],
                                                                     prompts["vanilla"], CFG)[0]
        with pytest.raises(ValueError, match="Layout Template: " + refusal.format("guider")):
            comfy.NODE_CLASS_MAPPINGS["LR_LayoutTemplate"].execute(
                noise=None, guider=guider, sampler=None, sigmas=torch.ones(3), latent_image=latent(tiny_dit), clip=None,
                prompt="a vase", subject="vase", last_step=1)

    def test_a_schedule_the_inversion_cannot_retrace(self, comfy, tiny_dit, prompts):
        with pytest.raises(ValueError, match=r"DDIM Inversion: input 'sampler_name'.*cannot be inverted"):
            comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"].execute(
                model=tiny_dit.personalized, positive=prompts["empty"], latent=latent(tiny_dit), steps=STEPS,
                scheduler=SCHEDULER, sampler_name="dpmpp_2m", cfg=CFG)


def test_subject_map_reads_the_map_blocks_at_the_subject_tokens(comfy, tiny_dit, inversions):
    """The Cross-Attention Mask on a DiT: the subject's positions from ComfyUI's own tokenizer (T5's; Qwen2.5-VL's
    after its template), image-to-text joint attention of both double blocks (the singles untouched), equal to the
    probabilities computed by hand."""
    import comfy_host

    from comfyui_layout_retouch.attention.tokens import subject_positions

    clip = comfy_host.FluxTextStandIn(tiny_dit)
    prompt = "a sks dog on a beach"
    positions = subject_positions(clip, prompt, "dog")
    key, tokens = next((k, v) for k, v in clip.tokenize(prompt).items() if k in ("t5xxl", "qwen25_7b", "qwen3_4b"))
    sequence = [entry[0] for entry in tokens[0]]
    if key == "qwen25_7b":  # the conditioning starts after the template's "<|im_start|>user\n" (ComfyUI's encoder)
        sequence = sequence[[i for i, t in enumerate(sequence) if t == 151644][1] + 3:]
    words = getattr(clip.tokenizer, key).tokenizer
    # Flux.2 keeps the template, and the positions count from the end (negative): the template's head before them.
    assert words.decode([sequence[i] for i in positions]).strip() == "dog" and positions[0] != 0
    if key == "qwen3_4b":
        assert words.decode(sequence[:positions[0]]).startswith("<|im_start|>user\na sks")
    _, traj = inversions["layout"]
    node = comfy.NODE_CLASS_MAPPINGS["LR_CrossAttentionMask"]
    soft, binary = node.execute(model=tiny_dit.personalized, layout_inversion=traj, clip=clip, prompt=prompt,
                                subject="dog", resolution="1/2 of the latent (32x32 at 512 px)", steps_to_average=2,
                                threshold=0.1).result[:2]
    assert soft.shape == binary.shape == (1, 64, 64) and 0 < float(binary.mean()) < 1
    assert 0.0 <= float(soft.min()) < float(soft.max()) <= 1.0
    # By hand: the record's sums are the block's own probabilities (one step, both double blocks).
    from comfyui_layout_retouch.attention.capture import add_map_capture, record_on_trajectory
    from comfyui_layout_retouch.attention.layers import map_layers
    from comfyui_layout_retouch.records import SubjectMapRecord

    record = SubjectMapRecord(2)
    model = tiny_dit.personalized
    patched = add_map_capture(model, record, map_layers(model), None, 2, traj.sampling_sigmas)
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert set(dit) == {("double_block", 0), ("double_block", 1)}
    record_on_trajectory(patched, tiny_dit.encode(prompt), traj, [1])
    assert record.layers[1] == {("double", 0, 0), ("double", 1, 0)} and record.size == (4, 4)
    probs = record.sums[1]
    n_txt = 512 if tiny_dit.name == "flux2" else 256  # Flux.2: ComfyUI pads the text to 512 tokens
    assert probs.shape == (1, 16, n_txt)
    seen = []  # every attention call's q and k at the same latent and sigma, the model unpatched

    def keep(func, q, k, v, heads, *args, **kwargs):
        seen.append((q, k))
        return func(q, k, v, heads, *args, **kwargs)

    plain = model.clone()
    plain.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = keep
    record_on_trajectory(plain, tiny_dit.encode(prompt), traj, [1])
    dm = model.model.diffusion_model
    joint = [(q, k) for q, k in seen if q.shape[-2] == n_txt + 16]  # text and image tokens (SD3.5's attn2: image only)
    assert len(joint) == tiny_dit.blocks  # every block (Flux: two double blocks, then two single blocks)
    assert len(seen) == tiny_dit.blocks + len(getattr(dm, "x_block_self_attn_layers", None) or ())
    by_hand = 0
    heads = dm.transformer_blocks[0].attn.heads if tiny_dit.name == "qwen_image" else getattr(dm, "num_heads", None)
    for q, k in joint[:2]:
        if q.ndim == 3:  # flat [n, tokens, heads * d] (Qwen-Image's and SD3's call): as [n, heads, tokens, d]
            q, k = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k))
        attention = torch.softmax(q.float() @ k.float().transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        by_hand = by_hand + attention[:, :, n_txt:, :n_txt].mean(1)
    assert torch.allclose(probs, by_hand, rtol=1e-5, atol=1e-7)
