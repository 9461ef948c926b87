"""The evaluation's formulas (issue 16) against direct computations on the same embeddings and logits."""

from __future__ import annotations

import math

import pytest
import torch

from comfyui_layout_retouch.evaluation.metrics import (
    centre_density,
    centre_spread,
    cosine_matrix,
    identity_scores,
    inception_score,
    mask_centre,
    mean_of_means,
    text_scores,
)


def cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_identity_is_the_mean_cosine_to_every_reference():
    gen = torch.Generator().manual_seed(0)
    generated, references = torch.randn(5, 7, generator=gen), torch.randn(3, 7, generator=gen) * 4
    scores = identity_scores(generated, references)
    for i in range(5):
        want = sum(cos(generated[i].tolist(), references[m].tolist()) for m in range(3)) / 3
        assert scores[i].item() == pytest.approx(want, abs=1e-12)
    assert cosine_matrix(generated, references).shape == (5, 3)


def test_identity_ignores_scale_and_is_one_for_the_reference_itself():
    references = torch.tensor([[1.0, 2.0, 3.0]])
    assert identity_scores(references * 5, references).item() == pytest.approx(1.0, abs=1e-12)
    assert identity_scores(-references, references).item() == pytest.approx(-1.0, abs=1e-12)
    assert identity_scores(torch.tensor([[3.0, 0.0, -1.0]]), references).item() == pytest.approx(0.0, abs=1e-12)


def test_text_score_pairs_each_image_with_its_own_prompt():
    gen = torch.Generator().manual_seed(1)
    images, texts = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    scores = text_scores(images, texts)
    assert [s.item() for s in scores] == pytest.approx([cos(images[i].tolist(), texts[i].tolist()) for i in range(4)],
                                                       abs=1e-12)


def test_inception_score_of_uniform_logits_is_one():
    assert inception_score(torch.zeros(8, 1000)) == pytest.approx(1.0, abs=1e-12)
    same = torch.randn(1, 10).repeat(6, 1)  # every image the same distribution: no diversity
    assert inception_score(same) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("classes", [2, 5, 10])
def test_inception_score_of_one_hot_distinct_classes_is_their_number(classes):
    logits = torch.full((classes, 1000), -1e4)
    logits[torch.arange(classes), torch.arange(classes)] = 1e4  # image k is class k, certainly
    assert inception_score(logits) == pytest.approx(classes, rel=1e-9)


def test_inception_score_is_the_formula():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 4, generator=gen) * 3
    p = [[math.exp(v) / sum(math.exp(w) for w in row) for v in row] for row in logits.tolist()]
    marginal = [sum(row[c] for row in p) / 6 for c in range(4)]
    kl = [sum(row[c] * math.log(row[c] / marginal[c]) for c in range(4)) for row in p]
    assert inception_score(logits) == pytest.approx(math.exp(sum(kl) / 6), rel=1e-10)


def test_method_mean_is_over_prompts_of_the_mean_over_images():
    per_prompt = {"a {} on a beach": [0.2, 0.4], "a {} in the snow": [1.0], "unrun": []}
    assert mean_of_means(per_prompt) == pytest.approx((0.3 + 1.0) / 2)  # not (0.2 + 0.4 + 1.0) / 3
    assert mean_of_means({"a": [0.5, 0.7], "b": [0.1, 0.3]}) == pytest.approx((0.5 + 0.7 + 0.1 + 0.3) / 4)
    assert math.isnan(mean_of_means({}))


def test_centre_and_its_spread():
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[1:3, 0:2] = True  # columns 0-1 of 8, rows 1-2 of 4
    assert mask_centre(mask) == pytest.approx(((1.0) / 8, 2.0 / 4))
    with pytest.raises(ValueError, match="empty"):
        mask_centre(torch.zeros(3, 3, dtype=torch.bool))
    centres = torch.tensor([[0.0, 0.5], [1.0, 0.5], [0.5, 0.0], [0.5, 1.0]])
    xs, ys = centres[:, 0].tolist(), centres[:, 1].tolist()
    var = [sum((v - sum(vs) / 4) ** 2 for v in vs) / 4 for vs in (xs, ys)]
    assert centre_spread(centres) == pytest.approx(sum(var) / 2)
    assert centre_spread(torch.tensor([[0.3, 0.7]] * 5)) == 0.0


def test_centre_density_peaks_at_the_centres():
    density = centre_density(torch.tensor([[0.25, 0.75]]), size=64)
    assert density.max() == 1.0
    row, column = divmod(int(density.argmax()), 64)
    assert (column, row) in {(15, 47), (16, 48), (15, 48), (16, 47)}  # x = 0.25 of the width, y = 0.75
    assert centre_density(torch.zeros(0, 2), size=8).sum() == 0
