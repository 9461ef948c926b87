"""Joint attention (a DiT whose blocks attend over the text and image tokens together, ``[txt | img]``): the swap,
the subject map and the recording patches on its blocks, shared by the families that have it (through
:class:`.joint.JointFamily`).

Such a model has no separate self- and cross-attention. The swap's "self-attention" is the image-query to
image-key part of it (METHOD.md, Flux), so in the swapped blocks, for the target rows of a call:

- ``s < lambda2`` (layout phase): the image tokens' keys and values are the layout path's; the
  text tokens' are the target's own; the queries are the target's;
- ``s >= lambda2`` (reference phase): the image tokens' keys and values are the references' (all
  reference rows of the target's CFG half, joined along the tokens);
- ``s >= mask_start``: the image tokens' attention output is blended with the layout's,
  ``M * phi_t + (1 - M) * phi_o``; the text tokens' output is the target's.

Where RoPE has already turned the keys positional when the attention backend sees them (Flux, Qwen-Image),
``positions = "shifted"`` (the default) rotates the m-th reference's keys further by ``(m + 1)`` image widths
along the width axis, so no reference key sits at a target position: the target's queries then find the
subject's appearance by content, not by place, and do not copy the reference photo's layout
(Personalize-Anything reports that ghosting with shared positions). ``"shared"`` keeps each key at its own
position, as Stable Flow injects keys and values. RoPE is a rotation per axis, so rotating a rotated key by an
offset is the key at the shifted position, exactly.

The patches are ComfyUI ``dit`` block replacements (``("double_block", i)``/``("single_block", i)``) that run
the block (or the patch that was on the key, chained) with an attention override in a copy of the call's
``transformer_options``; an override already there (another pack's) is the attention the patch calls (one slot:
ComfyUI does not chain them); a block's attention call over its image tokens alone (SD3.5 Medium's second one) is
passed through (:func:`is_joint`). A family gives its blocks, its projection (how a block's image tokens become its
attention input, keys and values: :class:`JointProjection`) and its RoPE.
"""

from __future__ import annotations

import math

import torch

from ..records import KEYS, SELF_IN, SELF_OUT, VALUES, StepOfCall
from .attend import ROWS_KEY, SOURCES_KEY
from .maps import conditional_rows
from .rows import RowLayout
from .sources import StepSources
from .swap import Phase, layout_of_sources, mask_tokens

TOKENS_KEY = "lr_swap_tokens"  # the call's (text tokens, image token rows, image token columns), set by the session
PROJECTION_KEY = "lr_joint_projection"  # the called model's JointProjection, for the recording patches
OVERRIDE = "optimized_attention_override"  # ComfyUI's attention override slot in transformer_options


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``[n, heads, tokens, d]`` to the records' ``[n, tokens, heads * d]``."""
    return x.transpose(1, 2).flatten(2)


def to_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[n, tokens, heads * d]`` (or ``[n, tokens, heads, d]``: SD3's values) to ``[n, heads, tokens, d]``."""
    return (x if x.ndim == 4 else x.unflatten(2, (heads, -1))).transpose(1, 2)


def _in_heads(q, k, v, heads: int, kwargs: dict):
    """The override's q, k, v as ``[n, heads, tokens, d]``, and whether they came flat (``[n, tokens, heads * d]``:
    an attention called without ``skip_reshape``, as Qwen-Image's)."""
    if kwargs.get("skip_reshape", False):
        return q, k, v, False
    return to_heads(q, heads), to_heads(k, heads), to_heads(v, heads), True


def is_joint(q: torch.Tensor, tokens: tuple[int, int, int], kwargs: dict) -> bool:
    """Whether a block's attention call is its joint attention (at least the ``n_txt + h * w`` text and image
    tokens), not an attention of the image tokens alone (SD3.5 Medium's ``x_block.attn2``: :mod:`.sd3`), which the
    patches pass through untouched."""
    n_txt, h, w = tokens
    return q.shape[2 if kwargs.get("skip_reshape", False) else 1] >= n_txt + h * w


def _through(func, prior, q, k, v, heads: int, rest, kwargs):
    """An attention call as it came: the override that was there (chained) or ComfyUI's."""
    if prior is not None:
        return prior(func, q, k, v, heads, *rest, **kwargs)
    return func(q, k, v, heads, *rest, **kwargs)


def _attend(func, prior, heads: int, flat: bool, rest, kwargs):
    """The block's attention ``(q, k, v) -> [n, tokens, heads * d]`` on ``[n, heads, tokens, d]`` inputs: the
    override that was there (chained) or ComfyUI's, given the inputs in the layout its caller used."""
    def attend(q, k, v):
        if flat:
            q, k, v = to_tokens(q), to_tokens(k), to_tokens(v)
        if prior is not None:
            return prior(func, q, k, v, heads, *rest, **kwargs)
        return func(q, k, v, heads, *rest, **kwargs)
    return attend


def shift_rope(k: torch.Tensor, columns: int, theta: float, axes_dim: tuple[int, ...]) -> torch.Tensor:
    """Keys ``[n, heads, tokens, d]`` (RoPE applied) moved ``columns`` further along the width axis.

    The rotation is applied here (:func:`rope_keys`: a product that broadcasts), not by the host's ``apply_rope1``:
    from ComfyUI 0.33 that dispatches to comfy-kitchen's kernels (a CUDA build on cu130 torches), made for a table
    of one row per token, and this table is one offset for every token."""
    from comfy.ldm.flux.math import rope

    ids = torch.zeros(1, 1, len(axes_dim), device=k.device)  # (index, row, column[, Flux.2's text axis])
    ids[..., 2] = float(columns)
    pe = torch.cat([rope(ids[..., i], axes_dim[i], theta) for i in range(len(axes_dim))], dim=-3).unsqueeze(1)
    return rope_keys(k, pe, k)


def rope_keys(k: torch.Tensor, pe: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """RoPE on keys ``[n, heads, tokens, d]`` as ComfyUI's Flux ``attention`` applies it (``pe``: one row,
    ``[1, 1, tokens, d / 2, 2, 2]``)."""
    shape = k.shape
    k = k.to(dtype=pe.dtype).reshape(*shape[:-1], -1, 1, 2)
    return (pe[..., 0] * k[..., 0] + pe[..., 1] * k[..., 1]).reshape(*shape).type_as(like)


class JointProjection:
    """A joint block's image-token keys and values from one kept tensor: the block's normed and modulated image
    tokens, the input its attention projects (one tensor where keys and values are two, so a record takes half the
    RAM). Keys and values are projected when read, with the block's own weights (LoRA patches included, as
    ComfyUI's ops cast them), the keys normed and at the call's RoPE positions, as the block makes them. A family
    gives :meth:`input_of` and :meth:`__call__`; :meth:`at` takes a Flux-shaped RoPE embedding."""

    def __init__(self, diffusion_model) -> None:
        self.dm = diffusion_model

    def input_of(self, layer, args: dict, index: torch.Tensor | None, tokens: tuple[int, int, int]) -> torch.Tensor:
        """The image tokens' attention input ``[n, h * w, width]`` of the rows ``index`` (None: all) of a block
        called with ``args`` (the ``dit`` patch's), as the block computes it."""
        raise NotImplementedError

    def at(self, pe: torch.Tensor, tokens: tuple[int, int, int]):
        """``project(layer, kind, input)`` for a call whose RoPE embedding (text, then image tokens) is ``pe``."""
        n_txt, h, w = tokens
        pe_img = None if pe is None else pe[:1, :, n_txt:n_txt + h * w]
        return lambda layer, kind, x: self(layer, kind, x, pe_img)

    def __call__(self, layer, kind: str, x: torch.Tensor, pe_img: torch.Tensor | None) -> torch.Tensor:
        """Keys (``[n, tokens, heads * d]``, RoPE applied at ``pe_img``) or values of ``layer`` from its input."""
        raise NotImplementedError


def swap_joint_attention(q, k, v, rows: RowLayout, phase: Phase, attend, tokens: tuple[int, int, int],
                         mask: torch.Tensor | None = None, layer=None, sources: StepSources | None = None,
                         shift=None, project=None) -> torch.Tensor:
    """Joint attention of one call's rows with the target rows' image keys and values swapped.

    Args:
        q, k, v: ``[rows.total, heads, txt + img (+ more), d]``, RoPE applied.
        attend: the block's attention, ``(q, k, v) -> [n, tokens, heads * d]``.
        tokens: ``(n_txt, h, w)``: text tokens, then ``h * w`` image tokens in row-major order.
        mask: ``[n_target, h * w, 1]`` blend weights (1 keeps the target), or None.
        shift: ``shift(keys, m)``: the m-th reference's keys moved off the target's positions, or None.
        project: keys and values from a record's kept input (:class:`JointProjection`); the keys and values
            computed here are not kept (the block patch keeps their input).
    """
    if phase is Phase.OWN and mask is None:
        return attend(q, k, v)
    n_txt, h, w = tokens
    img = slice(n_txt, n_txt + h * w)
    heads = q.shape[1]
    sources = sources or StepSources(rows)
    src = rows.sources_index().to(q.device, non_blocking=True)
    out_sources = attend(q[src], k[src], v[src]) if len(src) else None
    t = rows.target_index().to(q.device, non_blocking=True)
    q_t, k_t, v_t = q[t], k[t], v[t]
    if phase is not Phase.OWN:
        path = "layout" if phase is Phase.LAYOUT else "reference"
        index = rows.layout_index() if path == "layout" else rows.reference_index()
        present = (rows.n_layout if path == "layout" else rows.n_reference) > 0
        index = index.to(q.device, non_blocking=True)
        k_src, v_src = (to_heads(sources.for_targets(path, layer, kind, to_tokens(x[index][:, :, img]) if present else None,
                                                   q_t, project, keep=False), heads) for kind, x in ((KEYS, k), (VALUES, v)))
        if path == "reference" and shift is not None:
            n = h * w
            k_src = torch.cat([shift(k_src[:, :, m * n:(m + 1) * n], m) for m in range(k_src.shape[2] // n)], dim=2)
        k_t = torch.cat([k_t[:, :, :n_txt], k_src.to(k_t.dtype), k_t[:, :, img.stop:]], dim=2)
        v_t = torch.cat([v_t[:, :, :n_txt], v_src.to(v_t.dtype), v_t[:, :, img.stop:]], dim=2)
    out_target = attend(q_t, k_t, v_t)
    if mask is not None:
        layout_rows = layout_of_sources(out_sources, rows)
        layout = sources.for_targets("layout", layer, SELF_OUT, None if layout_rows is None else layout_rows[:, img],
                                     out_target)
        out_target = out_target.clone()
        out_target[:, img] = mask * out_target[:, img] + (1 - mask) * layout.to(out_target.dtype)
    return rows.assemble(out_target, out_sources)


class JointBlockSwap:
    """A ``dit`` block replacement: the block (or the patch that was on its key) run with the swap's
    attention override; outside a retouch run, the block as before."""

    def __init__(self, block: tuple[str, int], spec, mask: torch.Tensor | None, chained, rope: tuple | None) -> None:
        self.block = block
        self.spec = spec
        self.mask = mask
        self.chained = chained
        self.rope = rope  # (theta, axes_dim), or None for shared positions

    def to(self, device_or_dtype):
        if self.mask is not None:
            self.mask = self.mask.to(device_or_dtype)
        if hasattr(self.chained, "to"):
            self.chained = self.chained.to(device_or_dtype)
        return self

    def _run(self, args: dict, extra: dict) -> dict:
        return self.chained(args, extra) if self.chained is not None else extra["original_block"](args)

    def __call__(self, args: dict, extra: dict) -> dict:
        options = args.get("transformer_options") or {}
        rows: RowLayout | None = options.get(ROWS_KEY)
        if rows is None:
            return self._run(args, extra)
        tokens, sources, prior = options[TOKENS_KEY], options.get(SOURCES_KEY), options.get(OVERRIDE)
        block, step = self.block, rows.step
        phase = self.spec.self_phase(block, step)
        layer, project = (*block, 0), None
        if sources is not None and isinstance(sources.project, JointProjection):
            project = sources.project.at(args.get("pe"), tokens)  # no "pe": keys without RoPE (SD3)
            if phase is Phase.REFERENCE and rows.n_reference and sources.writes("reference"):
                # the reference cache keeps the reference rows' attention input, not their keys and values
                index = rows.reference_index().to(args["img"].device, non_blocking=True)
                sources.put("reference", layer, SELF_IN, sources.project.input_of(layer, args, index, tokens))
        mask = None
        if self.mask is not None and self.spec.blends(block, step):
            mask = self.mask
        shift = None
        if self.rope is not None:
            theta, axes_dim = self.rope
            shift = lambda keys, m: shift_rope(keys, (m + 1) * tokens[2], theta, axes_dim)  # noqa: E731

        def override(func, q, k, v, heads, *rest, **kwargs):
            if not is_joint(q, tokens, kwargs):
                return _through(func, prior, q, k, v, heads, rest, kwargs)
            q, k, v, flat = _in_heads(q, k, v, heads, kwargs)
            attend = _attend(func, prior, heads, flat, rest, kwargs)
            blend = None if mask is None else mask_tokens(mask, rows, tokens[1:], q)
            return swap_joint_attention(q, k, v, rows, phase, attend, tokens, blend, layer, sources, shift, project)

        return self._run({**args, "transformer_options": {**options, OVERRIDE: override}}, extra)


def subject_probs(q: torch.Tensor, k: torch.Tensor, n_txt: int, n_img: int) -> torch.Tensor:
    """Head-averaged joint-attention probabilities of the image queries on the text keys, ``[rows, n_img, n_txt]``:
    the softmax runs over every key (text and image), as the block's attention does."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    q_img = q[:, :, n_txt:n_txt + n_img].to(dtype)
    probs = []
    for head in range(q.shape[1]):  # one head at a time: [n_img, all tokens] each, not all heads at once
        logits = q_img[:, head] @ k[:, head].to(dtype).transpose(-1, -2) / math.sqrt(q.shape[-1])
        probs.append(torch.softmax(logits, dim=-1)[:, :, :n_txt])
    return torch.stack(probs).mean(0)


class JointMapCapture:
    """A ``dit`` double-block replacement that adds the conditional target rows' image-to-text attention
    (:func:`subject_probs`) to a store (an ``AttentionStore`` or ``SubjectMapRecord``: ``add_cross``), then
    attends as before; steps counted on ``sampling_sigmas`` when given, else on the run's own schedule; an image
    token is ``patch`` latent pixels each way (the family's ``patch_size``)."""

    def __init__(self, block: tuple[str, int], store, steps, chained, sampling_sigmas: torch.Tensor | None,
                 patch: int) -> None:
        self.block = block
        self.patch = patch
        self.store = store
        self.steps = steps
        self.chained = chained
        self.sigmas = None if sampling_sigmas is None else sampling_sigmas[:-1]
        self.position = StepOfCall()

    def _run(self, args: dict, extra: dict) -> dict:
        return self.chained(args, extra) if self.chained is not None else extra["original_block"](args)

    def __call__(self, args: dict, extra: dict) -> dict:
        options = args.get("transformer_options") or {}
        sigmas = options.get("sample_sigmas") if self.sigmas is None else self.sigmas
        step = None if sigmas is None or "sigmas" not in options else self.position(options["sigmas"], sigmas)
        tokens = options.get(TOKENS_KEY)
        if step is None or tokens is None or (self.steps is not None and step not in self.steps):
            return self._run(args, extra)
        prior, store = options.get(OVERRIDE), self.store
        n_txt, h, w = tokens

        def override(func, q, k, v, heads, *rest, **kwargs):
            out = _through(func, prior, q, k, v, heads, rest, kwargs)
            if not is_joint(q, tokens, kwargs):
                return out
            q, k, _, _ = _in_heads(q, k, k, heads, kwargs)
            rows = conditional_rows(options, q.shape[0]).to(q.device, non_blocking=True)
            if len(rows):
                store.latent_size = (self.patch * h, self.patch * w)
                store.add_cross((*self.block, 0), step, (h, w), subject_probs(q[rows], k[rows], n_txt, h * w))
            return out

        return self._run({**args, "transformer_options": {**options, OVERRIDE: override}}, extra)


class JointRecord:
    """A ``dit`` block replacement that runs the block (or the patch on its key) and records what a swap reads of
    this path, per step and CFG half, in every row: the image tokens' attention input (``SELF_IN``: their keys and
    values, projected when read, :class:`JointProjection`) and their attention output (``SELF_OUT``: the layout's,
    for the mask blend); steps counted on ``sampling_sigmas`` (the inversion's own first evaluation, near sigma 0,
    starts no step and records nothing)."""

    def __init__(self, block: tuple[str, int], record, sampling_sigmas: torch.Tensor, chained,
                 kinds: tuple[str, ...]) -> None:
        self.block = block
        self.record = record
        self.step_of = StepOfCall(sampling_sigmas[:-1])
        self.chained = chained
        self.kinds = kinds

    def _run(self, args: dict, extra: dict) -> dict:
        return self.chained(args, extra) if self.chained is not None else extra["original_block"](args)

    def __call__(self, args: dict, extra: dict) -> dict:
        options = args.get("transformer_options") or {}
        step = self.step_of(options["sigmas"]) if "sigmas" in options else None
        tokens = options.get(TOKENS_KEY)
        if step is None or tokens is None:
            return self._run(args, extra)
        layer, halves = (*self.block, 0), list(options["cond_or_uncond"])

        def put(kind: str, tensor: torch.Tensor) -> None:
            n = tensor.shape[0] // len(halves)
            for h, half in enumerate(halves):
                self.record.put(step, half, layer, kind, tensor[h * n:(h + 1) * n])

        if SELF_IN in self.kinds:
            put(SELF_IN, options[PROJECTION_KEY].input_of(layer, args, None, tokens))
        if SELF_OUT not in self.kinds:
            return self._run(args, extra)
        prior, (n_txt, h, w) = options.get(OVERRIDE), tokens

        def override(func, q, k, v, heads, *rest, **kwargs):
            out = _through(func, prior, q, k, v, heads, rest, kwargs)
            if is_joint(q, tokens, kwargs):
                put(SELF_OUT, out[:, n_txt:n_txt + h * w])
            return out

        return self._run({**args, "transformer_options": {**options, OVERRIDE: override}}, extra)
