"""Several reference photos of one subject (the paper's {I_r^m}): one DDIM Inversion of a LATENT batch of M
images, every target reading the keys and values of all M, joined along the tokens."""

from __future__ import annotations

import pytest
import torch
from test_swap import STEPS, rel, sample

FAST = "recorded, attention from the inversions (fast)"


@pytest.fixture(scope="module")
def inverted(comfy, tiny):
    """The layout and references A and B inverted alone, and the batches [A, B], [B, A], [A, A]."""
    gen = torch.Generator().manual_seed(7)
    images = torch.rand(3, 64, 64, 3, generator=gen)
    images[1, ..., 0] = 0.9  # A reddish, B greenish: two different photos
    images[2, ..., 1] = 0.9
    with torch.inference_mode():
        lat = tiny.vae.encode(images)
    invert = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
    empty = tiny.encode("")
    batches = {"layout": lat[:1], "A": lat[1:2], "B": lat[2:3], "AB": lat[1:3], "BA": lat[[2, 1]],
               "AA": lat[[1, 1]]}
    out = {name: invert.execute(model=tiny.personalized, positive=empty, latent={"samples": b}, steps=STEPS,
                                scheduler="ddim_uniform", sampler_name="ddim", cfg=1.0, record_attention=True,
                                attention_layers="output 6-11").result
           for name, b in batches.items()}
    return {**out, "y": tiny.encode("a photo of sks vase"), "neg": tiny.encode("blurry"), "empty": empty}


def retouch(comfy, tiny, inverted, refs: str, mode="recorded", cache="off", source_prompt="y"):
    """The retouch with references ``refs``; the sources' prompts are the target's, or (for the fast
    mode's equality) the inversions' own empty prompt in both halves."""
    lay_inv, lay_traj = inverted["layout"]
    y = inverted[source_prompt]
    neg = inverted["empty"] if source_prompt == "empty" else inverted["neg"]
    node = comfy.NODE_CLASS_MAPPINGS["LR_MultiSourceAttentionSwap"]
    patched = node.execute(model=tiny.personalized, reference_inversion=inverted[refs][1], layout_inversion=lay_traj,
                           reference_positive=y, reference_negative=neg, layout_positive=y, layout_negative=neg,
                           lambda2=2, mask_start=4, layout_layers="output 6-11", reference_layers="output 6-11",
                           source_paths=mode, reference_cache=cache, mask=torch.full((1, 64, 64), 0.5)).result[0]
    return sample(comfy, patched, inverted["y"], inverted["neg"], lay_inv)


@pytest.fixture(scope="module")
def results(comfy, tiny, inverted):
    return {refs: retouch(comfy, tiny, inverted, refs) for refs in ("A", "B", "AB", "BA", "AA")}


def test_every_reference_is_read(results, measured):
    """[A, B] is neither A's result nor B's (before: exactly A's, the first image only)."""
    ab = results["AB"]
    assert ab.shape == results["A"].shape and torch.isfinite(ab).all()
    against_a, against_b = rel(ab, results["A"]), rel(ab, results["B"])
    measured(f"multi-reference: [A, B] vs A alone {against_a:.3e}, vs B alone {against_b:.3e} (max relative)")
    assert against_a > 1e-3 and against_b > 1e-3


def test_order_does_not_matter(results, measured):
    diff = rel(results["BA"], results["AB"])
    measured(f"multi-reference: [B, A] vs [A, B] max relative difference {diff:.2e}")
    assert diff < 1e-5


def test_a_duplicated_reference_equals_one(results, measured):
    """[A, A]: every key twice, so each weight halves and the attention is A's (up to rounding)."""
    diff = rel(results["AA"], results["A"])
    measured(f"multi-reference: [A, A] vs A max relative difference {diff:.2e}")
    assert diff < 1e-5


def test_fast_mode_and_cache_with_two_references(comfy, tiny, inverted, results, measured):
    """Fast mode reads what the inversion of the batch recorded (at its own prompt); the cache is filled, then read."""
    fast = retouch(comfy, tiny, inverted, "AB", mode=FAST)
    recorded = retouch(comfy, tiny, inverted, "AB", source_prompt="empty")
    first = retouch(comfy, tiny, inverted, "AB", cache="offloaded to RAM")
    reused = retouch(comfy, tiny, inverted, "AB", cache="offloaded to RAM")
    other_order = retouch(comfy, tiny, inverted, "BA", cache="offloaded to RAM")
    cache = inverted["AB"][1].cache
    measured(f"multi-reference: fast vs recorded {rel(fast, recorded):.2e}; cache filled "
             f"{rel(first, results['AB']):.2e}, reused {rel(reused, results['AB']):.2e}; [B, A] with its own cache "
             f"{rel(other_order, results['AB']):.2e}")
    assert rel(fast, recorded) < 1e-5
    assert torch.equal(first, results["AB"]) and rel(reused, results["AB"]) < 1e-5
    assert rel(other_order, results["AB"]) < 1e-5
    assert inverted["BA"][1].cache is not cache  # each batch, in its order, keeps its own cache


def test_paper_mode_with_two_references(comfy, tiny, inverted, results):
    got = retouch(comfy, tiny, inverted, "AB", mode="re-denoised (paper)")
    assert got.shape == results["AB"].shape and torch.isfinite(got).all()
    assert rel(got, retouch(comfy, tiny, inverted, "BA", mode="re-denoised (paper)")) < 1e-5
