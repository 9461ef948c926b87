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
              steps=4, threshold=0.1):
    node = comfy.NODE_CLASS_MAPPINGS["LR_CrossAttentionMask"]
    resolution = resolution or "1/2 of the latent (32x32 at 512 px)"
    return node.execute(model=tiny.personalized, layout_inversion=traj, clip=tiny.clip, prompt=prompt, subject=subject,
                        resolution=resolution, steps_to_average=steps, threshold=threshold).result


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
    from comfyui_layout_retouch.attention.capture import AttentionStore

    to_mask = comfy.NODE_CLASS_MAPPINGS["LR_AttentionMapToMask"]
    with pytest.raises(ValueError, match=r"input 'store': holds no cross-attention"):
        to_mask.execute(store=AttentionStore(), after={"samples": torch.zeros(1, 4, 8, 8)}, clip=tiny.clip,
                        prompt="a vase", subject="vase", threshold=0.1)
