"""Cross-Attention Mask, Attention Capture and Attention Map to Mask on the real host."""

from __future__ import annotations

import pytest
import torch

from comfyui_layout_retouch.attention.tokens import subject_positions, subject_problem

STEPS = 6


@pytest.fixture(scope="module")
def layout(comfy, tiny):
    with torch.inference_mode():
        lat = tiny.vae.encode(torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3)))
    invert = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
    return invert.execute(model=tiny.personalized, positive=tiny.encode(""), latent={"samples": lat}, steps=STEPS,
                          scheduler="ddim_uniform", sampler_name="ddim", cfg=1.0).result


def test_subject_positions(tiny):
    assert subject_positions(tiny.clip, "a photo of sks dog", "dog") == [5]
    assert subject_positions(tiny.clip, "a red dog and a dog", "dog") == [3, 6]
    assert subject_positions(tiny.clip, "a photo of sks dog", "sks dog") == [4, 5]
    # A Textual Inversion embedding of two vectors takes two token positions.
    assert subject_positions(tiny.clip, "a embedding:tiny_concept vase", "embedding:tiny_concept") == [2, 3]
    problem, fix = subject_problem(tiny.clip, "a photo of sks dog", "cat")
    assert "'cat' is not in the prompt" in problem and "class noun" in fix
    assert subject_problem(tiny.clip, "a photo of sks dog", "dog") is None


def mask_node(comfy, tiny, traj, prompt="a photo of sks vase on a beach", subject="vase", resolution=None,
              steps=4, threshold=0.1, model=None):
    node = comfy.NODE_CLASS_MAPPINGS["LR_CrossAttentionMask"]
    resolution = resolution or "1/2 of the latent (32x32 at 512 px)"
    return node.execute(model=model or tiny.personalized, layout_inversion=traj, clip=tiny.clip, prompt=prompt,
                        subject=subject, resolution=resolution, steps_to_average=steps, threshold=threshold).result


def test_cross_attention_mask(comfy, tiny, layout):
    _, traj = layout
    soft, mask = mask_node(comfy, tiny, traj)
    assert soft.shape == mask.shape == (1, 64, 64) and soft.dtype == torch.float32
    assert not torch.isnan(soft).any() and float(soft.min()) >= 0 and float(soft.max()) <= 1
    assert float(soft.max()) > 0.9  # normalised: the peak is (close to, after resizing) 1
    assert torch.equal(mask, (soft > 0.1).float())
    assert 0 < float(mask.mean()) < 1
    other, _ = mask_node(comfy, tiny, traj, subject="beach")
    assert float((other - soft).abs().max()) > 1e-3  # another token, another map


def counting(model):
    """A clone that counts its UNet passes (one entry per call, the rows it ran)."""
    calls = []
    counted = model.clone()

    def wrapper(apply_model, args):
        calls.append(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"])

    counted.set_model_unet_function_wrapper(wrapper)
    return counted, calls


def test_mask_reads_stage_1s_record(comfy, tiny):
    """On stage 1's trajectory (record_attention on), the mask reads the personalized model's steps
    from stage 1's record and runs the model only at the vanilla steps; the mask is the one the
    full model passes give, up to float rounding (stage 1 ran both CFG halves in one batch)."""
    import dataclasses

    prompt = "a photo of sks vase on a beach"
    counted, calls = counting(tiny.personalized)
    stage1 = comfy.NODE_CLASS_MAPPINGS["LR_StepBlendedKSampler"]
    _, traj, _ = stage1.execute(
        vanilla_model=tiny.vanilla, personalized_model=counted, vanilla_positive=tiny.encode("a red vase on a beach"),
        vanilla_negative=tiny.encode(""), personalized_positive=tiny.encode(prompt),
        personalized_negative=tiny.encode(""), latent_image={"samples": torch.zeros(2, 4, 8, 8)}, seed=4,
        steps=STEPS, lambda1=2, cfg=7.5, sampler_name="ddim", scheduler="ddim_uniform", denoise=1.0,
        record_attention=True, attention_layers="output 6-11").result
    n_steps = len(traj) - 1
    assert set(traj.maps.sums) == set(range(2, n_steps))  # the personalized model's steps
    assert all(t.shape == (2, 4 * 4, 77) for t in traj.maps.sums.values())  # 1/2 of the 8x8 latent
    without = dataclasses.replace(traj, maps=None)
    for steps in (n_steps, 4):
        calls.clear()
        soft, mask = mask_node(comfy, tiny, traj, prompt=prompt, steps=steps, model=counted)
        read_passes = len(calls)
        calls.clear()
        full_soft, full_mask = mask_node(comfy, tiny, without, prompt=prompt, steps=steps, model=counted)
        chosen = (list(range(n_steps)) if steps >= n_steps else
                  sorted({round(i * (n_steps - 1) / (steps - 1)) for i in range(steps)}))
        assert len(calls) == len(chosen) and read_passes == sum(s < 2 for s in chosen)
        torch.testing.assert_close(soft, full_soft, rtol=0, atol=1e-5)
        sure = (full_soft - 0.1).abs() > 1e-4
        assert torch.equal(mask[sure], full_mask[sure]) and 0 < float(mask.mean()) < 1
    # Another prompt, resolution or model: the record does not apply, every step runs.
    for kwargs in ({"prompt": "a photo of sks vase in a forest"}, {"resolution": "1/4 of the latent (16x16 at 512 px)"},
                   {"model": tiny.personalized.clone()}):
        probe, probe_calls = counting(kwargs.pop("model", counted))
        kwargs.setdefault("prompt", prompt)
        mask_node(comfy, tiny, traj, steps=n_steps, model=probe, **kwargs)
        assert len(probe_calls) == n_steps, kwargs


def test_cross_attention_mask_bad_subject(comfy, tiny, layout):
    _, traj = layout
    with pytest.raises(ValueError, match=r"Cross-Attention Mask: input 'subject': 'dog' is not in the prompt"):
        mask_node(comfy, tiny, traj, subject="dog")


def test_capture_records_without_changing_the_result(comfy, tiny):
    lat = {"samples": torch.zeros(1, 4, 8, 8)}
    pos, neg = tiny.encode("a photo of sks vase"), tiny.encode("")
    capture = comfy.NODE_CLASS_MAPPINGS["LR_AttentionCapture"]
    patched, store = capture.execute(model=tiny.personalized, layers="output 3-11", start_step=1, end_step=3,
                                     record_self_kv=True).result
    run = lambda m: comfy.KSampler().sample(m, 5, STEPS, 7.5, "ddim", "ddim_uniform", pos, neg, lat)[0]  # noqa: E731
    plain, captured = run(tiny.personalized), run(patched)
    assert torch.equal(plain["samples"], captured["samples"])
    assert set(store.maps) == {("output", i, 0) for i in range(3, 12)}
    for layer, maps in store.maps.items():
        assert store.counts[layer] == 3  # steps 1, 2, 3
        h, w = store.sizes[layer]
        assert maps.shape == (1, h * w, 77)
        torch.testing.assert_close(maps.sum(-1), torch.full((1, h * w), 3.0))  # probabilities, summed over steps
    assert {step for _, step in store.kv} == {1, 2, 3}
    to_mask = comfy.NODE_CLASS_MAPPINGS["LR_AttentionMapToMask"]
    soft, mask = to_mask.execute(store=store, after=captured, clip=tiny.clip, prompt="a photo of sks vase",
                                 subject="vase", threshold=0.1).result
    assert soft.shape == (1, 64, 64) and torch.equal(mask, (soft > 0.1).float())
    run(patched)  # a second run starts a fresh record
    assert all(c == 3 for c in store.counts.values())


def test_map_to_mask_before_any_run(comfy, tiny):
    from comfyui_layout_retouch.attention.maps import AttentionStore

    to_mask = comfy.NODE_CLASS_MAPPINGS["LR_AttentionMapToMask"]
    with pytest.raises(ValueError, match=r"input 'store': holds no cross-attention"):
        to_mask.execute(store=AttentionStore(), after={"samples": torch.zeros(1, 4, 8, 8)}, clip=tiny.clip,
                        prompt="a vase", subject="vase", threshold=0.1)
