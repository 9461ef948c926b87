"""The UNet family (SD1.x, SD2.x, SDXL): its attention blocks, their token grids, its patches (``attn1``/``attn2``
replace patches per transformer block: the swap, the map capture, the recording) and how a record's kept input
is projected to keys and values.

A UNet block holding attention is a ``SpatialTransformer`` of ``depth`` transformer blocks; ComfyUI
keys each one ``(block_name, block_id, transformer_index)``.
"""

from __future__ import annotations

import math

import torch

from ..records import (
    CROSS_OUT,
    KEYS,
    KINDS,
    LAYOUT_KINDS,
    REFERENCE_KINDS,
    SELF_IN,
    SELF_OUT,
    SELF_VALUE_IN,
    VALUES,
    AttentionRecord,
    Layer,
    StepOfCall,
)
from .attend import ROWS_KEY, SOURCES_KEY, attend_as_before, host_attention
from .layer_set import LayerSet
from .maps import AttentionStore, conditional_rows, cross_attention_probs
from .rows import RowLayout
from .swap import SwapSpec, mask_tokens, swap_cross_attention, swap_self_attention

BLOCK_NAMES = ("input", "middle", "output")


def transformer_depths(model) -> dict[tuple[str, int], int]:
    """Transformer blocks per UNet block that holds attention, e.g. ``{("output", 6): 1, ...}`` for SD1.x."""
    unet = model.model.diffusion_model
    depths = {}
    for name, blocks in (("input", unet.input_blocks), ("middle", [unet.middle_block]), ("output", unet.output_blocks)):
        for i, block in enumerate(blocks):
            for layer in block:
                if type(layer).__name__ == "SpatialTransformer":
                    depths[(name, i)] = len(layer.transformer_blocks)
    return depths


def _levels(model, block_name: str) -> list[tuple[int, int]]:
    """``(block_id, resolution)`` of each of ``block_name``'s blocks: its tokens are latent size /
    ``resolution``, from the UNet's down- and upsampling layers, without running it."""
    unet = model.model.diffusion_model
    downs = sum(type(layer).__name__ == "Downsample" for block in unet.input_blocks for layer in block)
    blocks = {"input": unet.input_blocks, "middle": [unet.middle_block], "output": unet.output_blocks}[block_name]
    found, level = [], 0 if block_name == "input" else downs
    for i, block in enumerate(blocks):
        found.append((i, 2 ** level))
        for layer in block:
            name = type(layer).__name__
            level += (name == "Downsample") - (name == "Upsample")
    return found


def block_resolutions(model) -> dict[tuple[str, int], int]:
    """Each block's token grid as a fraction of the latent's side: ``{("output", 3): 2, ...}`` (1/2)."""
    return {(name, i): resolution for name in BLOCK_NAMES for i, resolution in _levels(model, name)}


def auto_layers(model) -> LayerSet:
    """``"auto"``: the decoder's attention blocks at 1/1 or 1/2 of the latent (SD1.x ``output 6-11``,
    SDXL ``output 3-5``; see the module's docstring)."""
    depths = transformer_depths(model)
    return LayerSet(frozenset(("output", i) for i, resolution in _levels(model, "output")
                              if resolution <= 2 and ("output", i) in depths))


def layers_at(model, resolution: int, block_name: str = "output") -> tuple[tuple[str, int, int], ...]:
    """The patch keys of ``block_name``'s transformer blocks whose tokens are latent size /
    ``resolution`` (e.g. SD1.x's decoder at 1/2: ``output 6-8``), from the UNet's down- and
    upsampling layers, without running it."""
    depths = transformer_depths(model)
    return tuple((block_name, i, j) for i, at in _levels(model, block_name)
                 if at == resolution and (block_name, i) in depths for j in range(depths[(block_name, i)]))


def self_attention(unet, layer: tuple[str, int, int]):
    """The ``attn1`` module (ComfyUI's ``CrossAttention``) of ``layer`` in a UNet (the model's
    ``diffusion_model``)."""
    name, block_id, index = layer
    blocks = {"input": unet.input_blocks, "middle": [unet.middle_block], "output": unet.output_blocks}[name]
    transformer = next(m for m in blocks[block_id] if type(m).__name__ == "SpatialTransformer")
    return transformer.transformer_blocks[index].attn1


def projection(unet):
    """``project(layer, kind, input)``: keys (``"keys"``) or values of ``layer``'s self-attention
    from its input, with the layer's own projections (weights as loaded, LoRA patches included)."""
    def project(layer, kind: str, tensor: torch.Tensor) -> torch.Tensor:
        attn = self_attention(unet, layer)
        return attn.to_k(tensor) if kind == KEYS else attn.to_v(tensor)
    return project


def keys(model, layers: LayerSet) -> tuple[tuple[str, int, int], ...]:
    """ComfyUI's patch keys ``(block_name, block_id, transformer_index)`` of ``model``'s transformer
    blocks in ``layers``, in order."""
    depths = transformer_depths(model)
    return tuple((n, i, j) for (n, i) in sorted(layers.keys_in(set(depths))) for j in range(depths[(n, i)]))


def patched_key(model, attn: str, key: tuple[str, int, int]) -> tuple | None:
    """Where an ``attn1``/``attn2`` replace patch covering ``key`` sits: ``key``, its whole block
    ``key[:2]``, or None."""
    taken = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get(attn, {})
    return next((at for at in (key, key[:2]) if at in taken), None)


def replace_patch(model, attn: str, key: tuple[str, int, int]):
    """The ``attn1``/``attn2`` replace patch already on ``key`` (or on its whole block), or None."""
    at = patched_key(model, attn, key)
    return None if at is None else model.model_options["transformer_options"]["patches_replace"][attn][at]


class SwapAttention:
    """An ``attn1`` (self) or ``attn2`` (cross) replace patch; outside a retouch run it computes
    what the key computed before it (ComfyUI's attention, or the patch it chains).

    A patch that was already on the key (another pack's, e.g. IPAdapter's ``attn2`` patches, or
    the pack's own Attention Capture, Self-Attention Guidance) is chained: wherever rows attend
    to themselves (the target rows in their own phase, the source rows always), they attend
    through it, called for the source rows, then for the target rows, each group one block per
    CFG half as ComfyUI lays out a call, with ``ROWS_KEY`` set to that group's
    :class:`RowLayout`. It does not run for the target rows where their output is the swap's:
    copied from the layout (layout phase), or their queries on the references' keys and values
    (reference phase of self-attention). The swap also wraps such patches on the keys it does
    not swap (always the own phase there), so every patch sees the groups apart.
    """

    def __init__(self, kind: str, spec: SwapSpec, mask: torch.Tensor | None, chained=None) -> None:
        self.kind = kind
        self.spec = spec
        self.mask = mask
        self.chained = chained

    def to(self, device_or_dtype):
        if self.mask is not None:
            self.mask = self.mask.to(device_or_dtype)
        if hasattr(self.chained, "to"):
            self.chained = self.chained.to(device_or_dtype)
        return self

    def __call__(self, q, k, v, extra_options):
        rows: RowLayout | None = extra_options.get(ROWS_KEY)
        if rows is None:
            return attend_as_before(self.chained, q, k, v, extra_options)
        attend = host_attention(extra_options["n_heads"], extra_options.get("attn_precision"))
        own = None
        if self.chained is not None:
            own = lambda q, k, v, group: self.chained(q, k, v, {**extra_options, ROWS_KEY: group})  # noqa: E731
        block = extra_options["block"]
        layer, sources = (*block, extra_options.get("block_index", 0)), extra_options.get(SOURCES_KEY)
        if self.kind == "cross":
            return swap_cross_attention(q, k, v, rows, self.spec.cross_phase(block, rows.step), attend, layer, sources,
                                        own)
        mask = None
        if self.mask is not None and self.spec.blends(block, rows.step):
            h, w = extra_options["activations_shape"][-2:]
            mask = mask_tokens(self.mask, rows, (h, w), q)
        return swap_self_attention(q, k, v, rows, self.spec.self_phase(block, rows.step), attend, mask, layer,
                                   sources, own)


class CaptureAttention:
    """An ``attn2`` (or, for K/V, ``attn1``) replace patch that records and then attends as usual."""

    def __init__(self, kind: str, store: AttentionStore, steps: range | None, resolution: int | None,
                 chained=None, sampling_sigmas: torch.Tensor | None = None) -> None:
        self.kind = kind
        self.store = store
        self.steps = steps
        self.resolution = resolution  # keep only layers at latent size / resolution; None = all
        self.chained = chained
        # Steps counted on this schedule; None: on the running sampler's own (a KSamplerAdvanced
        # that starts at step 10 counts its first step as 0 there).
        self.sigmas = None if sampling_sigmas is None else sampling_sigmas[:-1]
        self.position = StepOfCall()

    def step_of(self, extra_options: dict) -> int | None:
        sigmas = extra_options.get("sample_sigmas") if self.sigmas is None else self.sigmas
        if sigmas is None:
            return None
        return self.position(extra_options["sigmas"], sigmas)

    def wanted(self, extra_options: dict) -> tuple | None:
        h, w = extra_options["activations_shape"][-2:]
        latent_h = extra_options["original_shape"][-2]
        # The UNet halves odd sizes rounding up (stride-2 convolutions, padding 1): ceil at each level.
        if self.resolution is not None and h != -(-latent_h // self.resolution):
            return None
        step = self.step_of(extra_options)
        if step is None or (self.steps is not None and step not in self.steps):
            return None
        return (*extra_options["block"], extra_options["block_index"]), step, (h, w)

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        out = attend_as_before(self.chained, q, k, v, extra_options)
        found = self.wanted(extra_options)
        rows = conditional_rows(extra_options, q.shape[0]).to(q.device, non_blocking=True)
        if found is not None and len(rows):
            layer, step, size = found
            store = self.store
            store.latent_size = tuple(extra_options["original_shape"][-2:])
            if self.kind == "cross":
                store.add_cross(layer, step, size, cross_attention_probs(q[rows], k[rows], heads).to(torch.float32))
            else:
                import comfy.model_management

                dest = comfy.model_management.intermediate_device()
                store.sizes[layer] = size
                store.kv[(layer, step)] = (k[rows].detach().to(dest), v[rows].detach().to(dest))
        return out


class RecordSourceAttention:
    """An ``attn1`` (self) or ``attn2`` (cross) replace patch that attends as usual and records."""

    def __init__(self, kind: str, record: AttentionRecord, sampling_sigmas: torch.Tensor, chained=None,
                 kinds: tuple[str, ...] = KINDS) -> None:
        self.kind = kind
        self.record = record
        self.kinds = kinds
        self.step_of = StepOfCall(sampling_sigmas[:-1])  # step s starts at sampling_sigmas[s]
        self.chained = chained

    def __call__(self, q, k, v, extra_options):
        out = attend_as_before(self.chained, q, k, v, extra_options)
        step = self.step_of(extra_options["sigmas"])
        if step is None:  # the inversion's first evaluation, near sigma 0: no sampling step starts there
            return out
        layer = (*extra_options["block"], extra_options["block_index"])
        halves = list(extra_options["cond_or_uncond"])
        n = q.shape[0] // len(halves)
        kept = {SELF_OUT: out, KEYS: k, VALUES: v} if self.kind == "self" else {CROSS_OUT: out}
        for h, half in enumerate(halves):
            for kind, tensor in kept.items():
                if kind in self.kinds:
                    self.record.put(step, half, layer, kind, tensor[h * n:(h + 1) * n])
        return out


class RecordSelfInput:
    """An ``attn1_patch`` (run on every block before the self-attention's projections) that records
    the input its keys are projected from, and its values' where they differ (another pack's
    ``attn1_patch`` before it), on ``layers``. It changes nothing."""

    def __init__(self, record: AttentionRecord, sampling_sigmas: torch.Tensor, layers: set[Layer]) -> None:
        self.record = record
        self.step_of = StepOfCall(sampling_sigmas[:-1])
        self.layers = layers

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        layer = (*extra_options["block"], extra_options["block_index"])
        step = self.step_of(extra_options["sigmas"]) if layer in self.layers else None
        if step is not None:
            halves = list(extra_options["cond_or_uncond"])
            rows = n.shape[0] // len(halves)
            kept = {SELF_IN: context_attn1} if value_attn1 is context_attn1 else \
                {SELF_IN: context_attn1, SELF_VALUE_IN: value_attn1}
            for h, half in enumerate(halves):
                for kind, tensor in kept.items():
                    self.record.put(step, half, layer, kind, tensor[h * rows:(h + 1) * rows])
        return n, context_attn1, value_attn1


class UNetFamily:
    """SD1.x, SD2.x, SDXL and their finetunes: separate self- (``attn1``) and cross-attention (``attn2``)."""

    name = "UNet"
    models = "SD1.x, SD2.x, SDXL"
    cross_attention = True
    layout_reads = (SELF_OUT,)  # copied in the layout phase (with the cross-attention's output)
    # What a source's record keeps for each path: the reference's self-attention input (its keys and values
    # projected when read); the layout's self- and cross-attention outputs.
    record_kinds = {"reference": REFERENCE_KINDS, "layout": LAYOUT_KINDS}

    depths = staticmethod(transformer_depths)
    auto_layers = staticmethod(auto_layers)
    projection = staticmethod(projection)
    layers_at = staticmethod(layers_at)

    @staticmethod
    def recognises(diffusion_model) -> bool:
        return hasattr(diffusion_model, "input_blocks") and hasattr(diffusion_model, "output_blocks")

    @staticmethod
    def text_width(model) -> int | None:
        return model.model.model_config.unet_config.get("context_dim")  # its cross-attention's

    @staticmethod
    def join_texts(texts: list[torch.Tensor], error_for) -> torch.Tensor:
        """At one token count as ComfyUI batches conditionings: each repeated to the counts' lcm (cross-attention
        over a repeated text is the same attention)."""
        tokens = math.lcm(*(t.shape[1] for t in texts))
        return torch.cat([t.repeat(1, tokens // t.shape[1], 1) for t in texts])

    @staticmethod
    def call_options(x: torch.Tensor, context: torch.Tensor) -> dict:
        return {}  # each attention layer reads its own grid from activations_shape

    @staticmethod
    def attention_shapes(diffusion_model, layers: LayerSet, latent: tuple[int, int]) -> dict[tuple, tuple]:
        """Tokens at each block's resolution; the kept input is the block's width, the output the attention's."""
        model = _Bare(diffusion_model)
        resolution = block_resolutions(model)
        out = {}
        for key in keys(model, layers):
            attn = self_attention(diffusion_model, key)
            r = resolution[key[:2]]
            out[key] = (-(-latent[0] // r) * -(-latent[1] // r), attn.to_k.in_features, attn.to_k.out_features)
        return out

    @staticmethod
    def install_swap(clone, model, needs, spec, mask, positions: str | None = None) -> None:
        """Put a ``SwapAttention`` on every swapped layer and on every layer another patch holds
        (chained there); ``positions`` is a DiT's (a UNet's keys carry none)."""
        for kind, attn, swapped in (("self", "attn1", needs.self_layers), ("cross", "attn2", needs.cross_layers)):
            for key in keys(model, LayerSet(None)):  # every attention layer
                chained = replace_patch(model, attn, key)
                if key in swapped or chained is not None:
                    clone.set_model_patch_replace(SwapAttention(kind, spec, mask if kind == "self" else None, chained),
                                                  attn, *key)

    @staticmethod
    def install_recording(clone, record, sampling_sigmas: torch.Tensor, layers: LayerSet,
                          kinds: tuple[str, ...]) -> None:
        """Record ``kinds`` on ``layers``: ``attn1``/``attn2`` replace patches (chaining those on the keys), and an
        ``attn1_patch`` for the self-attention's input, last, so it sees what the projections get."""
        chosen = keys(clone, layers)
        for key in chosen:
            for kind, attn in (("self", "attn1"), ("cross", "attn2")):
                patch = RecordSourceAttention(kind, record, sampling_sigmas, replace_patch(clone, attn, key), kinds)
                clone.set_model_patch_replace(patch, attn, *key)
        if SELF_IN in kinds:
            clone.set_model_attn1_patch(RecordSelfInput(record, sampling_sigmas, set(chosen)))

    @staticmethod
    def map_layers(model) -> LayerSet:
        """Where the subject map is read: the decoder (a resolution picks among its blocks)."""
        return LayerSet(frozenset(b for b in transformer_depths(model) if b[0] == "output"))

    @staticmethod
    def install_map_capture(clone, model, store, layers: LayerSet, steps, resolution: int | None,
                            sampling_sigmas: torch.Tensor | None = None, self_kv: bool = False) -> None:
        """Put a ``CaptureAttention`` on the cross-attention of every layer in ``layers`` (chained), and with
        ``self_kv`` one on their self-attention, keeping its keys and values."""
        for key in keys(model, layers):
            clone.set_model_attn2_replace(CaptureAttention("cross", store, steps, resolution,
                                                           replace_patch(model, "attn2", key), sampling_sigmas), *key)
            if self_kv:
                clone.set_model_attn1_replace(CaptureAttention("self", store, steps, resolution,
                                                               replace_patch(model, "attn1", key), sampling_sigmas),
                                              *key)


class _Bare:
    """What the walkers read of a ModelPatcher (``model.model.diffusion_model``, ``model_options``), around a bare
    UNet."""

    def __init__(self, diffusion_model) -> None:
        self.model = type("Model", (), {"diffusion_model": diffusion_model})()
        self.model_options = {}


UNET = UNetFamily()
