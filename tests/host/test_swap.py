"""Multi-Source Attention Swap on the real host with the tiny SD1.x models."""

from __future__ import annotations

import pytest
import torch

STEPS = 6  # ddim_uniform gives 8 sigmas, so 7 denoising steps
CFG = 7.5


@pytest.fixture(scope="module")
def setup(comfy, tiny):
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        images = torch.rand(2, 64, 64, 3, generator=gen)
        latents = tiny.vae.encode(images)
    invert = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
    empty = tiny.encode("")
    out = {}
    for name, lat in (("layout", latents[:1]), ("reference", latents[1:])):
        inverted, traj = invert.execute(model=tiny.personalized, positive=empty, latent={"samples": lat}, steps=STEPS,
                                        scheduler="ddim_uniform", sampler_name="ddim", cfg=1.0).result
        out[name] = (inverted, traj)
    return {"inv": out, "y_r": tiny.encode("a photo of sks vase"), "y_p": tiny.encode("a sks vase on a beach"),
            "neg": tiny.encode("blurry")}


def swap(comfy, model, ref, lay, y_r, y_p, neg, lambda2=2, mask_start=4, layout_layers="output 6-11",
         reference_layers="output 6-11", mode="recorded", mask=None, cache="off"):
    node = comfy.NODE_CLASS_MAPPINGS["LR_MultiSourceAttentionSwap"]
    return node.execute(model=model, reference_inversion=ref, layout_inversion=lay, reference_positive=y_r,
                        reference_negative=neg, layout_positive=y_p, layout_negative=neg, lambda2=lambda2,
                        mask_start=mask_start, layout_layers=layout_layers, reference_layers=reference_layers,
                        source_paths=mode, reference_cache=cache, mask=mask).result[0]


def swap_unchecked(model, ref, lay, y_r, y_p, neg, mask, mask_start=4, lambda2=2):
    """The swap's patch made by its algorithm entry point, without the node's input checks."""
    from comfyui_layout_retouch.attention.layers import parse_layers
    from comfyui_layout_retouch.attention.patching import swap_model
    from comfyui_layout_retouch.attention.session import CacheMode, SourceMode
    from comfyui_layout_retouch.attention.swap import SwapSpec

    layers = parse_layers("output 6-11")
    from comfyui_layout_retouch.attention.prompts import PathPrompts

    first = lambda conditioning: conditioning[0][0][:1]  # noqa: E731
    return swap_model(model, lay, ref, PathPrompts((first(y_p), first(neg))), PathPrompts((first(y_r), first(neg))),
                      SwapSpec(lambda2, mask_start, layers, layers), SourceMode.RECORDED, CacheMode.OFF, mask,
                      lambda name, problem: ValueError(f"{name}: {problem}"))


def sample(comfy, model, cond, neg, latent, cfg=CFG, start=0, end=10000):
    return comfy.KSamplerAdvanced().sample(model, "disable", 0, STEPS, cfg, "ddim", "ddim_uniform", cond, neg, latent,
                                           start, end, "disable" if end == 10000 else "enable")[0]["samples"]


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_identity_in_paper_mode(comfy, tiny, setup, measured):
    """Reference = layout = target: the swap changes nothing but batch numerics."""
    lay_inv, lay_traj = setup["inv"]["layout"]
    y = setup["y_p"]
    patched = swap(comfy, tiny.personalized, lay_traj, lay_traj, y, y, setup["neg"], mode="re-denoised (paper)",
                   mask=torch.full((1, 64, 64), 0.5), layout_layers="all", reference_layers="all")
    got = sample(comfy, patched, y, setup["neg"], lay_inv)
    want = sample(comfy, tiny.personalized, y, setup["neg"], lay_inv)
    measured(f"swap identity (paper mode, all layers, mask 0.5): max relative difference {rel(got, want):.2e}")
    assert rel(got, want) < 1e-4


class Recorder:
    """Wraps a registered replace patch; records each call's step, key and target/layout outputs."""

    def __init__(self, inner, kind, log):
        self.inner, self.kind, self.log = inner, kind, log

    def __call__(self, q, k, v, extra):
        from comfyui_layout_retouch.attention.attend import ROWS_KEY

        out = self.inner(q, k, v, extra)
        rows = extra.get(ROWS_KEY)
        self.log.append({"kind": self.kind, "key": (*extra["block"], extra["block_index"]), "step": rows.step,
                         "halves": rows.halves, "target": out[rows.target_index()].clone(), "rows": rows,
                         "layout": out[rows.layout_for_targets()].clone() if rows.n_layout else None})
        return out


def probed(model):
    """A clone of a patched model whose swap patches record their calls."""
    log = []
    probe = model.clone()
    replaces = probe.model_options["transformer_options"]["patches_replace"]
    for kind in ("attn1", "attn2"):
        for key, patch in list(replaces.get(kind, {}).items()):
            replaces[kind][key] = Recorder(patch, kind, log)
    return probe, log


def test_phase1_all_layers_follows_layout_in_paper_mode(comfy, tiny, setup, measured):
    lay_inv, lay_traj = setup["inv"]["layout"]
    _, ref_traj = setup["inv"]["reference"]
    lambda2 = 3
    patched = swap(comfy, tiny.personalized, ref_traj, lay_traj, setup["y_r"], setup["y_p"], setup["neg"],
                   lambda2=lambda2, layout_layers="all", reference_layers="all", mode="re-denoised (paper)")
    got = sample(comfy, patched, setup["y_r"], setup["neg"], lay_inv, end=lambda2)
    layout_path = sample(comfy, tiny.personalized, setup["y_p"], setup["neg"], lay_inv, end=lambda2)
    own = sample(comfy, tiny.personalized, setup["y_r"], setup["neg"], lay_inv, end=lambda2)
    measured(f"swap phase 1, all layers, paper mode: target vs layout path at step {lambda2}: max relative "
             f"difference {rel(got, layout_path):.2e} (unswapped target vs layout: {rel(own, layout_path):.2e})")
    assert rel(got, layout_path) < 1e-4
    assert rel(own, layout_path) > 1e-3  # the prompts differ, so without the swap the paths differ


def test_sd1_auto_layers_are_masactrls_decoder(comfy, tiny):
    """SD1.x's ``auto``: the decoder at 1/1 and 1/2 of the latent, MasaCtrl's ``output 6-11`` (SDXL's: test_sdxl)."""
    from comfyui_layout_retouch.attention.layers import auto_layers, parse_layers

    assert auto_layers(tiny.personalized) == parse_layers("output 6-11")


def test_patches_fire_on_intended_keys_and_steps(comfy, tiny, setup):
    lay_inv, lay_traj = setup["inv"]["layout"]
    _, ref_traj = setup["inv"]["reference"]
    patched = swap(comfy, tiny.personalized, ref_traj, lay_traj, setup["y_r"], setup["y_p"], setup["neg"],
                   layout_layers="output 9-11", reference_layers="output 6-8")
    replaces = patched.model_options["transformer_options"]["patches_replace"]
    assert set(replaces["attn1"]) == {("output", i, 0) for i in range(6, 12)}
    assert set(replaces["attn2"]) == {("output", i, 0) for i in range(9, 12)}
    probe, log = probed(patched)
    sample(comfy, probe, setup["y_r"], setup["neg"], lay_inv)
    n_steps = len(lay_traj) - 1
    for kind, blocks in (("attn1", range(6, 12)), ("attn2", range(9, 12))):
        for i in blocks:
            calls = [c for c in log if c["kind"] == kind and c["key"] == ("output", i, 0)]
            assert sorted(c["step"] for c in calls) == list(range(n_steps)), (kind, i)
    assert {c["key"] for c in log} == {("output", i, 0) for i in range(6, 12)}


def phase_checks(log, lambda2):
    for c in log:
        in_layout_set = c["key"][1] >= 9
        if c["step"] < lambda2 and in_layout_set:
            assert torch.equal(c["target"], c["layout"]), c["key"]
        elif c["kind"] == "attn1" and c["step"] >= lambda2 and c["key"][1] <= 8:
            assert not torch.equal(c["target"], c["layout"]), c["key"]


@pytest.mark.parametrize("cfg", [CFG, 1.0])
def test_default_mode_phase1_copies_layout_attention(comfy, tiny, setup, cfg):
    lay_inv, lay_traj = setup["inv"]["layout"]
    _, ref_traj = setup["inv"]["reference"]
    # A mask of ones from lambda2 on changes nothing (test below) but keeps the layout rows in every step.
    patched = swap(comfy, tiny.personalized, ref_traj, lay_traj, setup["y_r"], setup["y_p"], setup["neg"],
                   lambda2=3, mask_start=3, layout_layers="output 9-11", reference_layers="output 6-8",
                   mask=torch.ones(1, 64, 64))
    probe, log = probed(patched)
    out = sample(comfy, probe, setup["y_r"], setup["neg"], lay_inv, cfg=cfg)
    assert not torch.isnan(out).any()
    assert {h for c in log for h in c["halves"]} == ({0, 1} if cfg != 1.0 else {0})
    phase_checks(log, 3)


def test_mask_of_ones_and_zeros(comfy, tiny, setup, measured):
    lay_inv, lay_traj = setup["inv"]["layout"]
    _, ref_traj = setup["inv"]["reference"]
    args = (comfy, tiny.personalized, ref_traj, lay_traj, setup["y_r"], setup["y_p"], setup["neg"])
    plain = sample(comfy, swap(*args), setup["y_r"], setup["neg"], lay_inv)
    ones = sample(comfy, swap(*args, mask=torch.ones(1, 64, 64)), setup["y_r"], setup["neg"], lay_inv)
    # The mask brings the layout rows back into steps >= mask_start, so only batch numerics differ.
    measured(f"swap, mask of ones vs no mask: max relative difference {rel(ones, plain):.2e}")
    assert rel(ones, plain) < 1e-5
    # The node refuses an all-zero mask (a user's mistake); the math for M = 0 is checked on the patch itself.
    probe, log = probed(swap_unchecked(*args[1:], mask_start=4, mask=torch.zeros(1, 64, 64)))
    zeros = sample(comfy, probe, setup["y_r"], setup["neg"], lay_inv)
    blended = [c for c in log if c["kind"] == "attn1" and c["step"] >= 4]
    assert blended and all(torch.equal(c["target"], c["layout"]) for c in blended)
    unblended = [c for c in log if c["kind"] == "attn1" and 2 <= c["step"] < 4]
    assert unblended and all(c["rows"].n_layout == 0 for c in unblended)  # nothing of the layout is read there
    assert not torch.equal(zeros, plain)


def test_joint_and_split_cfg_calls_agree(comfy, tiny, setup, monkeypatch, measured):
    lay_inv, lay_traj = setup["inv"]["layout"]
    _, ref_traj = setup["inv"]["reference"]
    patched = swap(comfy, tiny.personalized, ref_traj, lay_traj, setup["y_r"], setup["y_p"], setup["neg"],
                   mask=torch.ones(1, 64, 64) * 0.7)
    probe, log = probed(patched)
    joint = sample(comfy, probe, setup["y_r"], setup["neg"], lay_inv)
    assert all(len(c["halves"]) == 2 for c in log)
    base = tiny.personalized.model
    original = base.memory_required
    monkeypatch.setattr(base, "memory_required",
                        lambda shape, **kw: float("inf") if shape[0] > 1 else original(shape, **kw))
    log.clear()
    split = sample(comfy, probe, setup["y_r"], setup["neg"], lay_inv)
    assert log and all(len(c["halves"]) == 1 for c in log)
    measured(f"swap, CFG halves in one call vs two: max relative difference {rel(split, joint):.2e}")
    assert rel(split, joint) < 1e-4


def test_step_comes_from_sigma(comfy, tiny, setup):
    lay_inv, lay_traj = setup["inv"]["layout"]
    _, ref_traj = setup["inv"]["reference"]
    probe, log = probed(swap(comfy, tiny.personalized, ref_traj, lay_traj, setup["y_r"], setup["y_p"], setup["neg"]))
    at_step_3 = {"samples": lay_traj.latent_at(lay_traj.sampling_sigmas[3]) / 0.18215}  # the path's latent there
    sample(comfy, probe, setup["y_r"], setup["neg"], at_step_3, start=3)
    assert sorted({c["step"] for c in log}) == list(range(3, len(lay_traj) - 1))
    log.clear()
    sample(comfy, probe, setup["y_r"], setup["neg"], lay_inv)  # a second run on the same patched model
    assert sorted({c["step"] for c in log}) == list(range(len(lay_traj) - 1))


def test_callers_model_unchanged_after_runs_and_failures(comfy, tiny, setup):
    import comfy.model_management as mm

    from comfyui_layout_retouch.attention.session import RUN_KEY

    lay_inv, lay_traj = setup["inv"]["layout"]
    _, ref_traj = setup["inv"]["reference"]
    model = tiny.personalized
    before, options = sample(comfy, model, setup["y_r"], setup["neg"], lay_inv), repr(model.model_options)
    patched = swap(comfy, model, ref_traj, lay_traj, setup["y_r"], setup["y_p"], setup["neg"])
    sample(comfy, patched, setup["y_r"], setup["neg"], lay_inv)
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            sample(comfy, patched, setup["y_r"], setup["neg"], lay_inv)
    finally:
        mm.interrupt_current_processing(False)
    with pytest.raises(ValueError, match=r"Multi-Source Attention Swap: input 'model'.*schedule.*set the sampler's "
                                         r"steps to 6 and scheduler to ddim_uniform"):
        comfy.KSampler().sample(patched, 0, STEPS + 3, CFG, "ddim", "ddim_uniform", setup["y_r"], setup["neg"],
                                lay_inv)
    assert RUN_KEY not in patched.model_options.get("transformer_options", {})
    assert repr(model.model_options) == options
    assert torch.equal(before, sample(comfy, model, setup["y_r"], setup["neg"], lay_inv))


class TestBadInput:
    def test_inversions_on_different_schedules(self, comfy, tiny, setup):
        invert = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
        lay_inv, lay_traj = setup["inv"]["layout"]
        _, other = invert.execute(model=tiny.personalized, positive=setup["neg"], latent=lay_inv, steps=STEPS + 2,
                                  scheduler="ddim_uniform", sampler_name="ddim", cfg=1.0).result
        with pytest.raises(ValueError, match=r"input 'reference_inversion': walks 8 sampling steps of ddim_uniform "
                                             r"\(8 asked\) from sigma .* but layout_inversion walks 7 sampling steps "
                                             r"of ddim_uniform \(6 asked\).*same steps and scheduler"):
            swap(comfy, tiny.personalized, other, lay_traj, setup["y_r"], setup["y_p"], setup["neg"])

    def test_sizes_differ(self, comfy, tiny, setup):
        invert = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
        _, lay_traj = setup["inv"]["layout"]
        _, small = invert.execute(model=tiny.personalized, positive=setup["neg"],
                                  latent={"samples": torch.zeros(1, 4, 8, 6)}, steps=STEPS, scheduler="ddim_uniform",
                                  sampler_name="ddim", cfg=1.0).result
        with pytest.raises(ValueError, match=r"input 'reference_inversion': is 48x64 pixels but layout_inversion is "
                                             r"64x64"):
            swap(comfy, tiny.personalized, small, lay_traj, setup["y_r"], setup["y_p"], setup["neg"])

    def test_bad_layer_text(self, comfy, tiny, setup):
        _, lay_traj = setup["inv"]["layout"]
        with pytest.raises(ValueError, match=r"input 'layout_layers': 'decoder' cannot be read"):
            swap(comfy, tiny.personalized, lay_traj, lay_traj, setup["y_r"], setup["y_p"], setup["neg"],
                 layout_layers="decoder")
        with pytest.raises(ValueError, match=r"input 'reference_layers': selects no attention block.*output 3"):
            swap(comfy, tiny.personalized, lay_traj, lay_traj, setup["y_r"], setup["y_p"], setup["neg"],
                 reference_layers="output 0-2")

    def test_a_second_swap_is_refused(self, comfy, tiny, setup):
        """Patches of other nodes are chained (test_chaining.py); a swap on a swapped model cannot be."""
        _, lay_traj = setup["inv"]["layout"]
        once = swap(comfy, tiny.personalized, lay_traj, lay_traj, setup["y_r"], setup["y_p"], setup["neg"])
        with pytest.raises(ValueError, match=r"input 'model': already carries a Multi-Source Attention Swap.*Fix: "
                                             r"connect the swap to the model before the first swap"):
            swap(comfy, once, lay_traj, lay_traj, setup["y_r"], setup["y_p"], setup["neg"],
                 layout_layers="input 1-2", reference_layers="input 1-2")

    def test_errors_while_sampling_name_the_node_and_input(self, comfy, tiny, setup):
        """Found only when a stock sampler runs the patched model: still node, input and fix, and nothing left on it."""
        from comfyui_layout_retouch.attention.session import RUN_KEY

        lay_inv, lay_traj = setup["inv"]["layout"]
        patched = swap(comfy, tiny.personalized, lay_traj, lay_traj, setup["y_r"], setup["y_p"], setup["neg"])
        with pytest.raises(ValueError, match=r"Multi-Source Attention Swap: input 'model': starts at step 0 of 7 from a "
                                             r"latent that is not the layout path's.*Fix: connect the layout's"):
            sample(comfy, patched, setup["y_r"], setup["neg"], {"samples": torch.zeros(1, 4, 6, 6)})
        paper = swap(comfy, tiny.personalized, lay_traj, lay_traj, setup["y_r"], setup["y_p"], setup["neg"],
                     mode="re-denoised (paper)")
        with pytest.raises(ValueError, match=r"Multi-Source Attention Swap: input 'model': is sampled with heun, which "
                                             r"does not retrace a DDIM inversion.*Fix: set the KSampler's sampler_name "
                                             r"to ddim or euler"):
            comfy.KSamplerAdvanced().sample(paper, "disable", 0, STEPS, CFG, "heun", "ddim_uniform", setup["y_r"],
                                            setup["neg"], lay_inv, 0, 10000, "disable")
        for model in (patched, paper):
            assert RUN_KEY not in model.model_options.get("transformer_options", {})


CFGS = {"a": CFG, "b": 4.0}


@pytest.fixture(scope="module")
def alone(comfy, tiny, setup):
    """The swapped model's image at each of :data:`CFGS`, each run on a swap of its own."""
    lay_inv, lay = setup["inv"]["layout"]
    args = (setup["inv"]["reference"][1], lay, setup["y_r"], setup["y_p"], setup["neg"])
    return {k: sample(comfy, swap(comfy, tiny.personalized, *args), setup["y_p"], setup["neg"], lay_inv, cfg)
            for k, cfg in CFGS.items()}


@pytest.mark.parametrize("rule", [pytest.param("deep copy", marks=pytest.mark.host("0.3.64")),
                                  pytest.param("dicts and lists copied", marks=pytest.mark.host("0.33.0"))])
def test_clones_of_a_swapped_model_run_alone_under_the_hosts_copy_rule(comfy, tiny, setup, alone, rule):
    """A swapped model and its clone (another node's, e.g. a LoRA after the swap), run in turns at other cfg,
    each give the image a lone run gives: whether the host's ``clone()`` shares the swap's patch objects (0.33.0:
    ``model_options`` copied by ``comfy.utils.deepcopy_list_dict``, dicts and lists only) or copies them (0.3.64:
    a deep copy), no run's state reaches another (a step is read from the call's sigma, never counted)."""
    lay_inv, lay = setup["inv"]["layout"]
    _, ref = setup["inv"]["reference"]
    args = (ref, lay, setup["y_r"], setup["y_p"], setup["neg"])
    patched = swap(comfy, tiny.personalized, *args)
    clone = patched.clone()
    patches, cloned = (m.model_options["transformer_options"]["patches_replace"]["attn1"] for m in (patched, clone))
    shared = [cloned[key] is patch for key, patch in patches.items()]
    assert shared and all(shared) == rule.startswith("dicts") and any(shared) == rule.startswith("dicts")
    for model, key in ((clone, "b"), (patched, "a"), (clone, "a"), (patched, "b")):
        got = sample(comfy, model, setup["y_p"], setup["neg"], lay_inv, CFGS[key])
        assert torch.equal(got, alone[key]), (rule, key)
