"""The retouch stage's entry point: a clone of the caller's model patched through ComfyUI's official hooks."""

from __future__ import annotations

import torch

from ..errors import Problem
from ..records import CROSS_OUT, KEYS, SELF_OUT, VALUES, InversionTrajectory, model_key
from .families import family_of
from .layers import layer_keys
from .prompts import PathPrompts
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
from .swap import SourceNeeds, SwapSpec


def swapped_problem(model) -> Problem | None:
    """Why the swap cannot patch ``model``: it carries a swap already (the only patch not chained)."""
    import comfy.patcher_extension as ext

    if ext.get_wrappers_with_key(ext.WrappersMP.OUTER_SAMPLE, KEY, model.model_options, is_model_options=True):
        return ("already carries a Multi-Source Attention Swap; two swaps cannot share one sampler run (each adds "
                "its own source rows and checks the run against its own inversions).",
                "connect the swap to the model before the first swap, and keep one swap per KSampler.")
    return None


def source_needs(model, spec: SwapSpec, mask: torch.Tensor | None) -> SourceNeeds:
    """Which layers of ``model`` the swap patches, and what it reads from the sources there."""
    family = family_of(model)
    layout_keys = layer_keys(model, spec.layout_layers)
    self_keys = tuple(sorted({*layout_keys, *layer_keys(model, spec.reference_layers)}))
    return SourceNeeds(spec, self_keys, layout_keys if family.cross_attention else (), mask is not None,
                       family.layout_reads)


KIND_NAMES = {SELF_OUT: "self-attention output", CROSS_OUT: "cross-attention output",
              KEYS: "self-attention keys", VALUES: "self-attention values"}


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
        wanted = {need for step in steps for need in needs.of(path, step)}
        missing = sorted({layer for layer, _ in wanted} - record.layers())
        if missing:
            blocks = ", ".join(f"{n} {i}" for n, i in sorted({layer[:2] for layer in missing}))
            return f"{path}_inversion", (
                f"recorded no attention at {blocks}, which the swap reads.",
                "set attention_layers of the node that recorded it (DDIM Inversion, or Step-Blended KSampler with "
                "lambda1 below steps) to cover the swap's layout_layers and reference_layers (e.g. 'auto').")
        lacking = sorted({kind for _, kind in record.lacks(wanted)})
        if lacking:
            return f"{path}_inversion", (
                f"recorded no {' or '.join(KIND_NAMES[k] for k in lacking)}, which the swap reads from its {path}.",
                f"set record_for of its DDIM Inversion to '{path}' (or 'layout and reference').")
    return None


def swap_model(model, layout: InversionTrajectory, reference: InversionTrajectory,
               layout_prompts: PathPrompts, reference_prompts: PathPrompts, spec: SwapSpec, mode: SourceMode,
               cache: CacheMode, mask: torch.Tensor | None, error_for: ErrorFor, positions: str = "shifted"):
    """A clone of ``model`` that runs the multi-source swap in any stock sampler.

    Args:
        layout, reference: the source paths' recorded inversions (or stage 1's trajectory).
        layout_prompts, reference_prompts: each path's prompts (:func:`.prompts.path_prompts`).
        positions: a DiT's reference keys "shifted" off the target's RoPE positions or "shared" (:mod:`.joint`).
        mode, cache: how the sources run, and where the reference cache lives (off in the paper's mode).
        error_for: turns a problem with an input into the exception raised, here (a model that
            carries a swap already) or when a sampler runs the model (:class:`~.session.OuterSample`).
    """
    cache = CacheMode.OFF if mode is SourceMode.REDENOISE else cache
    paths = SourcePaths(layout, reference, layout_prompts, reference_prompts, mode, cache,
                        (model_key(model, KEY), *reference_prompts.key) if cache is not CacheMode.OFF else ())
    needs = source_needs(model, spec, mask)
    problem = swapped_problem(model)
    if problem is not None:
        raise error_for("model", problem)

    import comfy.patcher_extension as ext

    m = model.clone()  # patches already on a key are chained (SwapAttention says where they run)
    family_of(model).install_swap(m, model, needs, spec, mask, positions)
    outer = OuterSample(paths, needs, error_for)
    ext.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, KEY, outer, m.model_options, is_model_options=True)
    ext.add_wrapper_with_key(ext.WrappersMP.APPLY_MODEL, KEY, apply_model_wrapper, m.model_options,
                             is_model_options=True)
    if paths.redenoise:
        m.set_model_sampler_post_cfg_function(post_cfg_function)
    return m
