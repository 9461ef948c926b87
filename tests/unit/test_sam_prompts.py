"""Segment Anything without a model: what is not a SAM checkpoint, and the prompt read from a mask."""

from __future__ import annotations

import numpy as np
import pytest

from comfyui_layout_retouch.masks import sam as sam_lib


def test_not_a_sam_checkpoint():
    with pytest.raises(ValueError, match="not a Segment Anything checkpoint"):
        sam_lib.detect_config({"model.diffusion_model.out.2.weight": (4, 320, 3, 3)})


def test_prompt_from_mask():
    m = np.zeros((20, 30), dtype=np.float32)
    m[5:15, 8:20] = 1
    box, point = sam_lib.prompt_from_mask(m)
    assert box.tolist() == [8, 5, 19, 14]
    x, y = point[0]
    assert 12 <= x <= 15 and 8 <= y <= 11  # the most interior pixel
    soft = m * 0.3
    soft[6, 9] = 0.9  # a soft map: its strong response wins over depth alone
    assert sam_lib.prompt_from_mask(soft)[1][0].tolist() == [9, 6]


def test_speck_does_not_stretch_the_box():
    """An 80x120 subject and one 8x8 speck far away: the raw foreground's box would be 257x299 px,
    eight times the subject's area; SAM is prompted with the subject's own box and an interior point."""
    m = np.zeros((400, 400), dtype=np.float32)
    m[40:160, 40:120] = 1  # the subject, 80 wide and 120 tall
    m[331:339, 289:297] = 1  # the speck, 64 px (1% of the image is 1600 px)
    fg = sam_lib.foreground(m)
    ys, xs = np.nonzero(fg)
    assert (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (257, 299)  # what the raw M^c gave
    box, point = sam_lib.prompt_from_mask(m)
    assert box.tolist() == [40, 40, 119, 159]
    x, y = point[0]
    assert 40 <= x < 120 and 40 <= y < 160
    assert np.array_equal(sam_lib.prompt_region(m), fg & (np.arange(400)[:, None] < 200))
    assert sam_lib.prompt_from_mask(m, min_component_area=0)[0].tolist() == [40, 40, 296, 338]  # 0 keeps every part


def test_only_specks_prompt_with_the_largest():
    """Where no part reaches the area, the largest part prompts SAM, never the speckled whole."""
    m = np.zeros((400, 400), dtype=np.float32)
    m[10:14, 10:14] = 1  # 16 px
    m[200:208, 300:308] = 1  # 64 px: the largest
    m[390:395, 20:25] = 1  # 25 px
    box, point = sam_lib.prompt_from_mask(m)
    assert box.tolist() == [300, 200, 307, 207]
    assert 300 <= point[0, 0] <= 307 and 200 <= point[0, 1] <= 207
    region = sam_lib.prompt_region(m)
    assert int(region.sum()) == 64 and region[200:208, 300:308].all()


def test_soft_map_cleaned_like_a_binary_one():
    """A soft map (max <= 0.5): its positive pixels are the foreground, and a far speck is dropped too."""
    m = np.zeros((200, 200), dtype=np.float32)
    m[20:80, 30:70] = 0.3
    m[50, 50] = 0.45  # the strongest response
    m[190:194, 190:194] = 0.4  # a speck stronger than the subject's body
    box, point = sam_lib.prompt_from_mask(m)
    assert box.tolist() == [30, 20, 69, 79]
    assert point[0].tolist() == [50, 50]
