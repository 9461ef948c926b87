"""The retouch stage's entry point: a clone of the caller's model patched through ComfyUI's official hooks."""

from __future__ import annotations

import torch

from ..errors import Problem
from ..records import InversionTrajectory, model_key
from .layers import layer_keys, patched_key
from .session import (
    KEY,
    PATHS,
    CacheMode,
    ErrorFor,
    OuterSample,
    SourceMode,
    SourcePaths,
    apply_model_wrapper,
    post_cfg_function,
)
from .swap import SourceNeeds, SwapAttention, SwapSpec


def taken_problem(model, kind: str, keys: tuple[tuple[str, int, int], ...]) -> Problem | None:
    """Why the swap cannot patch ``keys``: another patch already replaces attention there, or None."""
    for key in keys:
        existing = patched_key(model, kind, key)
        if existing is not None:
            return (f"already has a {kind} replace patch on {existing} from another node.",
                    "apply the swap to the model before that node, or remove that node.")
    return None


def source_needs(model, spec: SwapSpec, mask: torch.Tensor | None) -> SourceNeeds:
    """Which layers of ``model`` the swap patches, and what it reads from the sources there."""
    cross_keys = layer_keys(model, spec.layout_layers)
    self_keys = tuple(sorted({*cross_keys, *layer_keys(model, spec.reference_layers)}))
    return SourceNeeds(spec, self_keys, cross_keys, mask is not None)


def record_problem(model, spec: SwapSpec, mask, inversions: dict[str, InversionTrajectory]) -> tuple[str, Problem] | None:
    """Fast mode: ``(input, problem)`` unless at least one inversion recorded attention and each
    record holds every layer the swap reads from that path (a path without a record runs its
    rows as in recorded mode)."""
    if all(inv.attention is None for inv in inversions.values()):
        return "source_paths", (
            "is the fast mode but neither inversion recorded attention.",
            "turn record_attention on in the DDIM Inversion nodes (or in the Step-Blended KSampler whose trajectory is "
            "the layout path), or choose 'recorded'.")
    needs = source_needs(model, spec, mask)
    steps = range(len(inversions["layout"]) - 1)
    for path in PATHS:
        record = inversions[path].attention
        if record is None:
            continue
        wanted = {layer for step in steps for layer, _ in needs.of(path, step)}
        missing = sorted(wanted - record.layers())
        if missing:
            blocks = ", ".join(f"{n} {i}" for n, i in sorted({layer[:2] for layer in missing}))
            return f"{path}_inversion", (
                f"recorded no attention at {blocks}, which the swap reads.",
                "set attention_layers of the node that recorded it (DDIM Inversion, or Step-Blended KSampler with "
                "lambda1 below steps) to cover the swap's layout_layers and reference_layers (e.g. 'output 6-11').")
    return None


def swap_model(model, layout: InversionTrajectory, reference: InversionTrajectory,
               layout_prompts: tuple[torch.Tensor, torch.Tensor], reference_prompts: tuple[torch.Tensor, torch.Tensor],
               spec: SwapSpec, mode: SourceMode, cache: CacheMode, mask: torch.Tensor | None, error_for: ErrorFor):
    """A clone of ``model`` that runs the multi-source swap in any stock sampler.

    Args:
        layout, reference: the source paths' recorded inversions (or stage 1's trajectory).
        layout_prompts, reference_prompts: each path's ``(positive, negative)`` text embeddings.
        mode, cache: how the sources run, and where the reference cache lives (off in the paper's mode).
        error_for: turns a problem with an input into the exception raised, here (a key taken by
            another patch) or when a sampler runs the model (:class:`~.session.OuterSample`).
    """
    cache = CacheMode.OFF if mode is SourceMode.REDENOISE else cache
    paths = SourcePaths(layout, reference, layout_prompts, reference_prompts, mode, cache,
                        (model_key(model, KEY), *reference_prompts) if cache is not CacheMode.OFF else ())
    needs = source_needs(model, spec, mask)
    for kind, keys in (("attn1", needs.self_layers), ("attn2", needs.cross_layers)):
        problem = taken_problem(model, kind, keys)
        if problem is not None:
            raise error_for("model", problem)

    import comfy.patcher_extension as ext

    m = model.clone()
    self_patch, cross_patch = SwapAttention("self", spec, mask), SwapAttention("cross", spec, None)
    for name, block_id, index in needs.self_layers:
        m.set_model_attn1_replace(self_patch, name, block_id, index)
    for name, block_id, index in needs.cross_layers:
        m.set_model_attn2_replace(cross_patch, name, block_id, index)
    outer = OuterSample(paths, needs, error_for)
    ext.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, KEY, outer, m.model_options, is_model_options=True)
    ext.add_wrapper_with_key(ext.WrappersMP.APPLY_MODEL, KEY, apply_model_wrapper, m.model_options,
                             is_model_options=True)
    if paths.redenoise:
        m.set_model_sampler_post_cfg_function(post_cfg_function)
    return m
