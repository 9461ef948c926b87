"""Putting the retouch patches on a clone of the caller's model, through ComfyUI's official hooks."""

from __future__ import annotations

import torch

from ..errors import NodeInputError
from .layers import LayerSet, attention_blocks, layer_keys
from .session import KEY, NODE, OuterSample, SourcePaths, apply_model_wrapper, post_cfg_function
from .swap import SourceNeeds, SwapAttention, SwapSpec


def check_free(model, kind: str, keys: tuple[tuple[str, int, int], ...]) -> None:
    """Fail loudly where another patch already replaces attention on a key we need."""
    taken = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get(kind, {})
    for key in keys:
        for existing in (key, key[:2]):
            if existing in taken:
                raise NodeInputError(
                    NODE, "model", f"already has a {kind} replace patch on {existing} from another node.",
                    "apply the Multi-Source Attention Swap to the model before that node, or remove that node.")


def source_needs(model, spec: SwapSpec, mask: torch.Tensor | None) -> SourceNeeds:
    """Which layers of ``model`` the swap patches, and what it reads from the sources there."""
    cross_keys = layer_keys(model, spec.layout_layers)
    self_keys = tuple(sorted({*cross_keys, *layer_keys(model, spec.reference_layers)}))
    return SourceNeeds(spec, self_keys, cross_keys, mask is not None)


def patch_model(model, paths: SourcePaths, spec: SwapSpec, mask: torch.Tensor | None):
    """A clone of ``model`` that runs the multi-source swap in any stock sampler."""
    needs = source_needs(model, spec, mask)
    self_keys, cross_keys = needs.self_layers, needs.cross_layers
    check_free(model, "attn1", self_keys)
    check_free(model, "attn2", cross_keys)

    import comfy.patcher_extension as ext

    m = model.clone()
    self_patch, cross_patch = SwapAttention("self", spec, mask), SwapAttention("cross", spec, None)
    for name, block_id, index in self_keys:
        m.set_model_attn1_replace(self_patch, name, block_id, index)
    for name, block_id, index in cross_keys:
        m.set_model_attn2_replace(cross_patch, name, block_id, index)
    ext.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, KEY, OuterSample(paths, needs), m.model_options,
                             is_model_options=True)
    ext.add_wrapper_with_key(ext.WrappersMP.APPLY_MODEL, KEY, apply_model_wrapper, m.model_options,
                             is_model_options=True)
    if paths.redenoise:
        m.set_model_sampler_post_cfg_function(post_cfg_function)
    return m


def layer_problem(model, name: str, layers: LayerSet):
    """Why a layer set selects no attention block of ``model``, or None."""
    if not layers.keys_in(attention_blocks(model)):
        blocks = ", ".join(f"{n} {i}" for n, i in sorted(attention_blocks(model)))
        return ("selects no attention block of this model.", f"choose among: {blocks}; or 'all'.")
    return None
