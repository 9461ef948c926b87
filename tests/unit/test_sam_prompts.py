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
