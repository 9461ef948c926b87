"""Which source rows the swap runs: only where read, none from the reference cache or the fast mode."""

from __future__ import annotations

import pytest
import torch

from comfyui_layout_retouch.nodes import labels

STEPS = 6  # ddim_uniform gives 8 sigmas, so 7 denoising steps
CFG = 7.5
CACHE = labels.CACHE_RAM
FAST = "recorded, attention from the inversions (fast)"


def invert(comfy, tiny, latent, record=False, layers="output 6-11", prompt=None, negative=None):
    node = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
    return node.execute(model=tiny.personalized, positive=prompt or tiny.encode(""), latent={"samples": latent},
                        steps=STEPS, scheduler="ddim_uniform", sampler_name="ddim", cfg=1.0, negative=negative,
                        record_attention=record, attention_layers=layers).result


@pytest.fixture(scope="module")
def images(comfy, tiny):
    gen = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        latents = tiny.vae.encode(torch.rand(3, 64, 64, 3, generator=gen))
    return {"layout": latents[:1], "reference": latents[1:2], "other_layout": latents[2:],
            "y_r": tiny.encode("a photo of sks vase"), "y_p": tiny.encode("a sks vase on a beach"),
            "neg": tiny.encode("blurry")}


def swap(comfy, model, ref, lay, im, mode="recorded", cache="off", mask=None, y_r=None, layers="output 6-11"):
    node = comfy.NODE_CLASS_MAPPINGS["LR_MultiSourceAttentionSwap"]
    return node.execute(model=model, reference_inversion=ref, layout_inversion=lay,
                        reference_positive=y_r or im["y_r"], reference_negative=im["neg"], layout_positive=im["y_p"],
                        layout_negative=im["neg"], lambda2=2, mask_start=4, layout_layers=layers,
                        reference_layers=layers, source_paths=mode, reference_cache=cache, mask=mask).result[0]


def sample(comfy, model, im, latent, cfg=CFG):
    return comfy.KSamplerAdvanced().sample(model, "disable", 0, STEPS, cfg, "ddim", "ddim_uniform", im["y_r"],
                                           im["neg"], latent, 0, 10000, "disable")[0]["samples"]


def rows_per_step(comfy, model, im, latent, cfg=CFG):
    """Sample a probed clone; return the output and, per step, the (layout, reference) rows per half of its calls."""
    from comfyui_layout_retouch.attention.attend import ROWS_KEY

    seen = {}
    probe = model.clone()
    replaces = probe.model_options["transformer_options"]["patches_replace"]["attn1"]
    for key, patch in list(replaces.items()):
        def probed(q, k, v, extra, patch=patch):
            rows = extra[ROWS_KEY]
            seen.setdefault(rows.step, set()).add((rows.n_layout, rows.n_reference))
            return patch(q, k, v, extra)
        replaces[key] = probed
    return sample(comfy, probe, im, latent, cfg), seen


def subject_mask() -> torch.Tensor:
    """A mask as the adaptive mask gives one: the subject (a centre square) kept, the rest from the layout."""
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1
    return mask


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_rows_run_only_where_the_target_reads_them(comfy, tiny, images):
    lay_inv, lay = invert(comfy, tiny, images["layout"])
    _, ref = invert(comfy, tiny, images["reference"])
    _, seen = rows_per_step(comfy, swap(comfy, tiny.personalized, ref, lay, images), images, lay_inv)
    # lambda2 = 2: layout rows in steps 0-1 only (no mask); reference rows from step 2 on
    assert seen == {s: {(1, 0)} if s < 2 else {(0, 1)} for s in range(7)}
    masked = swap(comfy, tiny.personalized, ref, lay, images, mask=subject_mask())
    _, seen = rows_per_step(comfy, masked, images, lay_inv)
    # mask_start = 4: the blend reads the layout's self-attention again from step 4 on
    assert seen == {s: {(1, 0)} if s < 2 else {(0, 1)} if s < 4 else {(1, 1)} for s in range(7)}


def test_reference_cache_skips_reference_rows_in_later_runs(comfy, tiny, images, measured):
    lay_inv, lay = invert(comfy, tiny, images["layout"])
    _, ref = invert(comfy, tiny, images["reference"])
    model = tiny.personalized
    want = sample(comfy, swap(comfy, model, ref, lay, images), images, lay_inv)
    assert ref.cache.record is None  # the cache off leaves nothing behind

    cached = swap(comfy, model, ref, lay, images, cache=CACHE)
    first, seen = rows_per_step(comfy, cached, images, lay_inv)
    assert torch.equal(first, want)  # filling the cache runs the very same rows
    assert all(n_ref == 1 for s in range(2, 7) for _, n_ref in seen[s])
    record = ref.cache.record
    assert record.nbytes > 0 and all(t.device.type == "cpu" for t in record.tensors.values())

    second, seen = rows_per_step(comfy, cached, images, lay_inv)
    assert all(n_ref == 0 for calls in seen.values() for _, n_ref in calls)
    measured(f"reference cache: second run (no reference rows) vs cache off: max relative difference "
             f"{rel(second, want):.2e}; cache holds {record.nbytes / 2**20:.2f} MiB")
    assert rel(second, want) < 1e-5

    # A new layout with the same reference, model and prompts: a new swap node run reuses the cache.
    other_inv, other = invert(comfy, tiny, images["other_layout"])
    want_other = sample(comfy, swap(comfy, model, ref, other, images), images, other_inv)
    got_other, seen = rows_per_step(comfy, swap(comfy, model.clone(), ref, other, images, cache=CACHE), images,
                                    other_inv)
    assert all(n_ref == 0 for calls in seen.values() for _, n_ref in calls)
    assert rel(got_other, want_other) < 1e-5


@pytest.mark.parametrize("change", ["prompt", "model", "patch"])
def test_reference_cache_is_keyed(comfy, tiny, images, change):
    lay_inv, lay = invert(comfy, tiny, images["layout"])
    _, ref = invert(comfy, tiny, images["reference"])
    rows_per_step(comfy, swap(comfy, tiny.personalized, ref, lay, images, cache=CACHE), images, lay_inv)
    model, y_r = tiny.personalized, None
    if change == "prompt":
        y_r = tiny.encode("a photo of sks cat")
    elif change == "model":
        model = tiny.vanilla
    else:
        model = tiny.personalized.clone()
        model.set_model_attn2_output_patch(lambda out, extra: out * 1.01)
    _, seen = rows_per_step(comfy, swap(comfy, model, ref, lay, images, cache=CACHE, y_r=y_r), images, lay_inv)
    assert all(n_ref == 1 for s in range(2, 7) for _, n_ref in seen[s]), change


class Scale:
    """An attn2 output patch object (copied by ComfyUI 0.3.64's ``clone()``, shared by 0.33.0's, unlike a function,
    which both share)."""

    def __init__(self, factor):
        self.factor = factor

    def __call__(self, out, extra):
        return out * self.factor


@pytest.mark.parametrize("rule", [pytest.param("deep copy", marks=pytest.mark.host("0.3.64")),
                                  pytest.param("dicts and lists copied", marks=pytest.mark.host("0.33.0"))])
def test_reference_cache_survives_clones_of_a_patched_model(comfy, tiny, images, rule):
    """Clones of a swapped model hit the cache; a clone of the model under the swap is the same model to the cache
    where the host's ``clone()`` shares its patch objects (0.33.0: the same computation, a hit) and another where it
    copies them (0.3.64: a miss); a new patch object is another model on every host (a miss)."""
    lay_inv, lay = invert(comfy, tiny, images["layout"])
    _, ref = invert(comfy, tiny, images["reference"])
    model = tiny.personalized.clone()
    model.set_model_attn2_output_patch(Scale(1.01))
    patched = swap(comfy, model, ref, lay, images, cache=CACHE)
    _, first = rows_per_step(comfy, patched.clone(), images, lay_inv)  # rows_per_step clones once more
    _, second = rows_per_step(comfy, patched.clone(), images, lay_inv)
    assert all(n_ref == 1 for s in range(2, 7) for _, n_ref in first[s])
    assert all(n_ref == 0 for calls in second.values() for _, n_ref in calls)
    other = model.clone()
    patch = model.model_options["transformer_options"]["patches"]["attn2_output_patch"][0]
    shares = other.model_options["transformer_options"]["patches"]["attn2_output_patch"][0] is patch
    assert shares == (rule == "dicts and lists copied")
    _, third = rows_per_step(comfy, swap(comfy, other, ref, lay, images, cache=CACHE), images, lay_inv)
    assert all(n_ref == (0 if shares else 1) for s in range(2, 7) for _, n_ref in third[s])
    renewed = tiny.personalized.clone()
    renewed.set_model_attn2_output_patch(Scale(1.01))
    _, fourth = rows_per_step(comfy, swap(comfy, renewed, ref, lay, images, cache=CACHE), images, lay_inv)
    assert all(n_ref == 1 for s in range(2, 7) for _, n_ref in fourth[s])


def test_fast_mode_runs_no_source_rows(comfy, tiny, images, measured):
    """Inverted with the sources' own prompts, the record is what the source rows would compute."""
    y_p, y_r, neg = images["y_p"], images["y_r"], images["neg"]
    lay_inv, lay = invert(comfy, tiny, images["layout"], prompt=y_p)
    _, ref = invert(comfy, tiny, images["reference"], prompt=y_r)
    fast_lay_inv, fast_lay = invert(comfy, tiny, images["layout"], record=True, prompt=y_p, negative=neg)
    _, fast_ref = invert(comfy, tiny, images["reference"], record=True, prompt=y_r, negative=neg)
    # recording both halves batches the negative beside the positive: the path moves by batch numerics only
    assert rel(fast_lay.latents, lay.latents) < 1e-5 and rel(fast_lay_inv["samples"], lay_inv["samples"]) < 1e-5
    assert {key[1] for key in fast_ref.attention.tensors} == {0, 1}

    mask = subject_mask()
    patched = swap(comfy, tiny.personalized, fast_ref, fast_lay, images, mode=FAST, mask=mask)
    recorded = swap(comfy, tiny.personalized, ref, lay, images, mask=mask)
    for cfg in (1.0, CFG):
        got, seen = rows_per_step(comfy, patched, images, lay_inv, cfg)
        assert seen.keys() == set(range(7)) and all(calls == {(0, 0)} for calls in seen.values())
        want = sample(comfy, recorded, images, lay_inv, cfg)
        plain = sample(comfy, tiny.personalized, images, lay_inv, cfg)
        diff = (got - want).abs()
        measured(f"fast mode vs recorded (inverted with the source prompts), cfg {cfg}: max abs difference "
                 f"{float(diff.max()):.2e}, mean {float(diff.mean()):.2e} (relative {rel(got, want):.2e}; unswapped "
                 f"vs recorded: {rel(plain, want):.2e})")
        assert not torch.isnan(got).any()
        assert rel(got, want) < 1e-5  # both halves were recorded: only batch numerics differ


@pytest.mark.parametrize("inversion", ["empty prompt, positive half only", "source prompts, positive half only"])
def test_fast_mode_approximations(comfy, tiny, images, measured, inversion):
    """Cheaper records (the paper's empty-prompt inversion; no negative half): their fidelity, measured."""
    prompts = {"layout": None, "reference": None} if inversion.startswith("empty") else \
        {"layout": images["y_p"], "reference": images["y_r"]}
    lay_inv, lay = invert(comfy, tiny, images["layout"], record=True, prompt=prompts["layout"])
    _, ref = invert(comfy, tiny, images["reference"], record=True, prompt=prompts["reference"])
    assert {key[1] for key in ref.attention.tensors} == {0}
    _, unrecorded = invert(comfy, tiny, images["layout"], prompt=prompts["layout"])
    assert torch.equal(lay.latents, unrecorded.latents)  # recording the positive half changes nothing
    got = sample(comfy, swap(comfy, tiny.personalized, ref, lay, images, mode=FAST), images, lay_inv)
    want = sample(comfy, swap(comfy, tiny.personalized, ref, lay, images), images, lay_inv)
    diff = (got - want).abs()
    measured(f"fast mode vs recorded ({inversion}), cfg {CFG}: max abs difference {float(diff.max()):.2e}, mean "
             f"{float(diff.mean()):.2e}, relative {rel(got, want):.2e} (random weights)")
    assert not torch.isnan(got).any() and got.shape == want.shape


def test_fast_mode_errors(comfy, tiny, images):
    _, lay = invert(comfy, tiny, images["layout"])
    _, ref = invert(comfy, tiny, images["reference"])
    with pytest.raises(ValueError, match=r"input 'source_paths': is the fast mode but neither inversion recorded "
                                         r"attention.*record_attention"):
        swap(comfy, tiny.personalized, ref, lay, images, mode=FAST)
    _, partial = invert(comfy, tiny, images["reference"], record=True, layers="output 9-11")
    with pytest.raises(ValueError, match=r"input 'reference_inversion': recorded no attention at output 6, output 7, "
                                         r"output 8.*attention_layers"):
        swap(comfy, tiny.personalized, partial, lay, images, mode=FAST)
    with pytest.raises(ValueError, match=r"DDIM Inversion: input 'attention_layers': 'middle' cannot be read"):
        invert(comfy, tiny, images["reference"], record=True, layers="middle")


def test_a_reference_records_only_the_self_attention_input(comfy, tiny, images, measured):
    """record_for 'reference': a third of both's record, and the same retouch as the recorded mode."""
    y_p, y_r, neg = images["y_p"], images["y_r"], images["neg"]
    node = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]

    def recording(record_for, latent, prompt):
        return node.execute(model=tiny.personalized, positive=prompt, latent={"samples": latent}, steps=STEPS,
                            scheduler="ddim_uniform", sampler_name="ddim", cfg=1.0, negative=neg,
                            record_attention=True, attention_layers="auto", record_for=record_for).result

    _, both = recording("layout and reference", images["reference"], y_r)
    _, ref = recording("reference", images["reference"], y_r)
    lay_inv, lay = recording("layout", images["layout"], y_p)
    assert {key[3] for key in ref.attention.tensors} == {"self_in"}
    assert {key[3] for key in lay.attention.tensors} == {"self_out", "cross_out"}
    assert 3 * ref.attention.nbytes == both.attention.nbytes
    # The README's record sizes come from this formula on the real shapes; here it meets a real record.
    from comfyui_layout_retouch.attention.layers import auto_layers, layer_keys
    from comfyui_layout_retouch.benchmark.record_sizes import record_bytes

    keys = layer_keys(tiny.personalized, auto_layers(tiny.personalized))
    unet = tiny.personalized.model.diffusion_model
    for record, kinds in ((ref, ("self_in",)), (lay, ("self_out", "cross_out"))):
        assert record.attention.nbytes == record_bytes(unet, keys, 8, len(record) - 1, 2, kinds, element_size=4)
    _, want_ref = invert(comfy, tiny, images["reference"], prompt=y_r)
    _, want_lay = invert(comfy, tiny, images["layout"], prompt=y_p)
    mask = subject_mask()
    got, seen = rows_per_step(comfy, swap(comfy, tiny.personalized, ref, lay, images, FAST, mask=mask, layers="auto"),
                              images, lay_inv)
    assert all(calls == {(0, 0)} for calls in seen.values())
    want = sample(comfy, swap(comfy, tiny.personalized, want_ref, want_lay, images, mask=mask, layers="auto"), images,
                  lay_inv)
    measured(f"fast mode, reference recorded as the self-attention input ({ref.attention.nbytes / 2**20:.1f} MiB vs "
             f"{both.attention.nbytes / 2**20:.1f} MiB for both roles): max relative difference {rel(got, want):.2e}")
    assert rel(got, want) < 1e-5
    with pytest.raises(ValueError, match=r"input 'reference_inversion': recorded no self-attention keys or "
                                         r"self-attention values, which the swap reads from its reference.*Fix: set "
                                         r"record_for of its DDIM Inversion to 'reference'"):
        swap(comfy, tiny.personalized, lay, lay, images, FAST, mask=mask)


def test_fast_mode_from_stage_1(comfy, tiny, images, measured):
    """Stage 1 records its personalized steps; the swap reads them and runs layout rows only before lambda1."""
    node = comfy.NODE_CLASS_MAPPINGS["LR_StepBlendedKSampler"]
    empty = {"samples": torch.zeros(1, 4, 8, 8)}
    args = dict(vanilla_model=tiny.vanilla, personalized_model=tiny.personalized, vanilla_positive=images["y_p"],
                vanilla_negative=images["neg"], personalized_positive=images["y_p"], personalized_negative=images["neg"],
                latent_image=empty, seed=7, steps=STEPS, lambda1=2, cfg=CFG, sampler_name="ddim",
                scheduler="ddim_uniform", denoise=1.0)
    layout, traj, start = node.execute(**args).result
    rec_layout, rec_traj, _ = node.execute(**args, record_attention=True, attention_layers="output 6-11").result
    assert torch.equal(rec_layout["samples"], layout["samples"])  # recording changes nothing
    assert {key[0] for key in rec_traj.attention.tensors} == set(range(2, 7))  # the personalized steps
    assert {key[3] for key in rec_traj.attention.tensors} == {"self_out", "cross_out"}  # what a layout gives
    _, ref = invert(comfy, tiny, images["reference"])
    mask = subject_mask()
    want = sample(comfy, swap(comfy, tiny.personalized, ref, traj, images, mask=mask), images, start)
    got, seen = rows_per_step(comfy, swap(comfy, tiny.personalized, ref, rec_traj, images, FAST, CACHE, mask), images,
                              start)
    # layout rows only at the vanilla steps 0-1; reference rows until the cache is filled, in this first run
    assert all(n_lay == (1 if s < 2 else 0) for s, calls in seen.items() for n_lay, _ in calls)
    measured(f"fast mode from stage 1's record vs recorded mode: max relative difference {rel(got, want):.2e}")
    assert rel(got, want) < 1e-5


def test_inversion_and_recording_build_no_autograd_graph(comfy, tiny, images):
    """Outside ComfyUI's inference mode (another pack calling the node), no graph is kept across steps."""
    with torch.inference_mode(False), torch.enable_grad():
        latent = images["layout"].clone()
        inverted, traj = invert(comfy, tiny, latent, record=True, negative=images["neg"])
    assert traj.latents.grad_fn is None and inverted["samples"].grad_fn is None
    assert all(t.grad_fn is None for t in traj.attention.tensors.values())
