"""Attending as ComfyUI does, and the keys our patches read from ``transformer_options``.

The lowest module of ``attention/``: the swap, the capture and the recording patches all attend
through here, so a key they patch computes what it computed before, or what the patch already
on it computes (chained).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
ROWS_KEY = "lr_swap_rows"  # the call's RowLayout, set by the swap for the call's patches
SOURCES_KEY = "lr_swap_sources"  # the call's StepSources, set by the swap


def host_attention(heads: int, attn_precision=None) -> Attend:
    """ComfyUI's ``optimized_attention``, looked up at call time (ComfyUI picks it at start-up)."""
    import comfy.ldm.modules.attention as host

    return lambda q, k, v: host.optimized_attention(q, k, v, heads, attn_precision=attn_precision)


def attend_as_before(chained, q, k, v, extra_options) -> torch.Tensor:
    """What a key computes without our patch: the patch that was on it (chained), or ComfyUI's attention."""
    if chained is not None:
        return chained(q, k, v, extra_options)
    return host_attention(extra_options["n_heads"], extra_options.get("attn_precision"))(q, k, v)
