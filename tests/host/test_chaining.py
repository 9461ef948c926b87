"""The swap chains the patches other nodes put on its keys instead of refusing them.

A stand-in shaped like IPAdapter+'s ``attn2`` replace patch adds an image-prompt term whose image
tokens it picks per CFG half from ``cond_or_uncond``, splitting the call into one block per half
as ComfyUI lays calls out. Our own Attention Capture before the swap is the second case.
"""

from __future__ import annotations

import pytest
import torch
from test_swap import STEPS, rel, sample, swap


class ImagePrompt:
    """``attention(q, k, v) + scale * attention(q, K_img, V_img)``, the image tokens of each row's half."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.tokens: dict[int, torch.Tensor] = {}  # per width: [2 halves, 4 tokens, inner]

    def __call__(self, q, k, v, extra_options):
        import comfy.ldm.modules.attention as host

        heads, halves = extra_options["n_heads"], extra_options["cond_or_uncond"]
        out = host.optimized_attention(q, k, v, heads)
        width = q.shape[-1]
        if width not in self.tokens:
            self.tokens[width] = torch.randn(2, 4, width, generator=torch.Generator().manual_seed(width))
        per_half = q.shape[0] // len(halves)  # IPAdapter+'s "batch_prompt"
        image = torch.cat([self.tokens[width][half][None].expand(per_half, -1, -1) for half in halves]).to(q)
        return out + self.scale * host.optimized_attention(q, image, image, heads)


def with_image_prompt(model, scale: float, kinds=("attn2",)):
    """A clone with the stand-in on every attention layer (the swap's and the others)."""
    from comfyui_layout_retouch.attention.layers import LayerSet, layer_keys

    patched = model.clone()
    patch = ImagePrompt(scale)
    for key in layer_keys(model, LayerSet(None)):
        for kind in kinds:
            patched.set_model_patch_replace(patch, kind, *key)
    return patched


@pytest.fixture(scope="module")
def paths(comfy, tiny):
    gen = torch.Generator().manual_seed(11)
    with torch.inference_mode():
        lat = tiny.vae.encode(torch.rand(2, 64, 64, 3, generator=gen))
    invert = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
    empty = tiny.encode("")
    out = {name: invert.execute(model=tiny.personalized, positive=empty, latent={"samples": lat[i:i + 1]},
                                steps=STEPS, scheduler="ddim_uniform", sampler_name="ddim", cfg=1.0).result
           for i, name in enumerate(("layout", "reference"))}
    return {**out, "y": tiny.encode("a photo of sks vase"), "neg": tiny.encode("blurry")}


def test_identity_through_an_image_prompt_patch(comfy, tiny, paths, measured):
    """Reference = layout = target in the paper's mode, on a model with the stand-in on every layer: the
    swap's result is the patched model's plain result, so every row got its own half's image tokens
    (on the swapped layers through the chain, on the others through ComfyUI's row layout)."""
    lay_inv, lay_traj = paths["layout"]
    y, neg = paths["y"], paths["neg"]
    other = with_image_prompt(tiny.personalized, 1.0)
    patched = swap(comfy, other, lay_traj, lay_traj, y, y, neg, mode="re-denoised (paper)",
                   mask=torch.full((1, 64, 64), 0.5))
    got = sample(comfy, patched, y, neg, lay_inv)
    want = sample(comfy, other, y, neg, lay_inv)
    without = sample(comfy, tiny.personalized, y, neg, lay_inv)
    measured(f"chaining (image-prompt stand-in, paper mode, identity): swap vs the patched model's plain run "
             f"{rel(got, want):.2e}; the stand-in's own effect {rel(want, without):.2e} (max relative)")
    assert rel(want, without) > 1e-2  # the stand-in changes the picture
    assert rel(got, want) < 1e-4


def test_a_patch_that_adds_nothing_changes_nothing(comfy, tiny, paths, measured):
    """The stand-in at scale 0 on both attentions of every layer: the swap's result is the unpatched swap's."""
    lay_inv, lay_traj = paths["layout"]
    _, ref_traj = paths["reference"]
    y, neg = paths["y"], paths["neg"]
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1
    chained = swap(comfy, with_image_prompt(tiny.personalized, 0.0, ("attn1", "attn2")), ref_traj, lay_traj, y, y,
                   neg, mask=mask)
    alone = swap(comfy, tiny.personalized, ref_traj, lay_traj, y, y, neg, mask=mask)
    got, want = sample(comfy, chained, y, neg, lay_inv), sample(comfy, alone, y, neg, lay_inv)
    measured(f"chaining: a zero-scale stand-in on every attention vs no patch {rel(got, want):.2e} (max relative)")
    assert rel(got, want) < 1e-6


def test_the_image_prompt_reaches_the_target(comfy, tiny, paths):
    """With the stand-in the retouch differs from the retouch without it (before: refused)."""
    lay_inv, lay_traj = paths["layout"]
    _, ref_traj = paths["reference"]
    y, neg = paths["y"], paths["neg"]
    chained = swap(comfy, with_image_prompt(tiny.personalized, 1.0), ref_traj, lay_traj, y, y, neg)
    alone = swap(comfy, tiny.personalized, ref_traj, lay_traj, y, y, neg)
    got, want = sample(comfy, chained, y, neg, lay_inv), sample(comfy, alone, y, neg, lay_inv)
    assert torch.isfinite(got).all() and rel(got, want) > 1e-2


def test_attention_capture_before_the_swap(comfy, tiny, paths, measured):
    """Capture -> swap records the target's maps exactly as swap -> capture does wherever the target attends
    itself (steps from lambda2 on), and leaves the swap's result as it was."""
    lay_inv, lay_traj = paths["layout"]
    _, ref_traj = paths["reference"]
    y, neg = paths["y"], paths["neg"]
    capture = comfy.NODE_CLASS_MAPPINGS["LR_AttentionCapture"]
    lambda2 = 2
    options = dict(layers="all", start_step=lambda2, end_step=STEPS + 1, record_self_kv=False)
    captured, before = capture.execute(model=tiny.personalized, **options).result
    first = swap(comfy, captured, ref_traj, lay_traj, y, y, neg, lambda2=lambda2)
    swapped = swap(comfy, tiny.personalized, ref_traj, lay_traj, y, y, neg, lambda2=lambda2)
    second, after = capture.execute(model=swapped, **options).result
    got_first, got_second = sample(comfy, first, y, neg, lay_inv), sample(comfy, second, y, neg, lay_inv)
    plain = sample(comfy, swapped, y, neg, lay_inv)
    assert set(before.maps) == set(after.maps) and len(before.maps) > 6
    worst = max(rel(before.maps[k], after.maps[k]) for k in before.maps)
    measured(f"chaining: Attention Capture before vs after the swap: {len(before.maps)} layers, maps max relative "
             f"difference {worst:.2e}; results vs the swap alone {rel(got_first, plain):.2e}, "
             f"{rel(got_second, plain):.2e}")
    assert before.counts == after.counts
    assert worst < 1e-5
    assert rel(got_first, plain) < 1e-6 and rel(got_second, plain) < 1e-6
    for store in (before, after):
        assert all(m.shape[0] == 1 for m in store.maps.values())  # the target's conditional row only
