"""The parts the benchmark measures, in an order where each finds what it needs (inversions, caches) as a graph
would: every part (SD1.x), the headline's (any UNet family), a DiT family's, and the comparisons beside them (the
fast mode's fidelity, Pick-and-Draw's two palette sources)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..guidance.losses import uremd
from ..nodes.labels import CACHE_OFF, FAST, RECORD_REFERENCE, RECORDED, REDENOISED
from ..nodes.labels import CACHE_RAM as CACHED
from .dits import DitPipeline
from .measure import Part, chain, with_ratios
from .measure import measure as measure_part
from .pipeline import PD_SOURCE_NAMES, PD_SOURCES, Pipeline

BATCH = 4  # the throughput rows' batch


def measure_parts(p: Pipeline, repeats: int) -> list[Part]:
    """Every part, in an order where each finds what it needs (inversions, caches) as a graph would."""
    invert_reference = p.invert("reference_inv", lambda: p.reference)
    invert_layout = p.invert("layout_inv", lambda: p.state["stage1"][0])
    # The fast mode's inversions use the sources' own prompts and the negative: then it is exact.
    record_reference = p.invert("reference_rec", lambda: p.reference, p.yr, p.neg, RECORD_REFERENCE)
    record_layout = p.invert("layout_rec", lambda: p.state["stage1"][0], p.pp, p.neg, "layout")
    fill_cache = p.stage2("reference_inv", "layout_inv", cache=CACHED)
    p.count_rows()
    p.warm_up()  # through the counting wrapper too: the first part measured is not its first call
    measure = lambda name, fn: measure_part(name, fn, p.device, repeats, p.rows)  # noqa: E731
    parts = [
        measure("plain KSampler", p.plain),
        measure("stage 1 (step-blended)", p.stage1()),
        measure("inversion (reference)", invert_reference),
        measure("inversion (layout)", invert_layout),
        measure("cross-attention mask (10 steps)", p.mask("layout_inv")),
        measure("stage 2 (swap + KSampler)", p.stage2("reference_inv", "layout_inv")),
    ]
    fill_cache()  # an earlier generation with this reference (ComfyUI also keeps its inversion)
    parts += [
        measure("stage 2, reference cached", p.stage2("reference_inv", "layout_inv", cache=CACHED)),
        measure("stage 2 on stage 1's path, cached", p.stage2("reference_inv", "stage 1", cache=CACHED)),
        measure("stage 1 recording attention", p.stage1(record=True)),
        measure("stage 2, fast mode, cached", p.stage2("reference_inv", "stage 1", FAST, CACHED)),
        measure("inversion recording attention", record_layout),
    ]
    record_reference()  # once per reference, kept by ComfyUI's cache
    parts += [
        measure("stage 2, fast mode from inversions", p.stage2("reference_rec", "layout_rec", FAST)),
        measure("full pipeline", chain(p.stage1(), invert_reference, invert_layout, p.mask("layout_inv"),
                                        p.stage2("reference_inv", "layout_inv"))),
    ]
    fill_cache()  # the full pipeline inverted the reference anew: an earlier generation with it
    parts += [
        measure("full, reference cached", chain(p.stage1(), invert_layout, p.mask("layout_inv"),
                                                 p.stage2("reference_inv", "layout_inv", cache=CACHED))),
        measure("full, stage 1's path, cached", chain(p.stage1(), p.mask("stage 1"),
                                                       p.stage2("reference_inv", "stage 1", cache=CACHED))),
        measure("full, fast mode, cached", chain(p.stage1(record=True), p.mask("stage 1"),
                                                  p.stage2("reference_inv", "stage 1", FAST, CACHED))),
    ]
    # The shipped full workflows: stage 1 records and is the layout path; the reference's inversion records at
    # the swap's reference prompts, once per photo (ComfyUI's cache); the swap in the fast mode, cache on.
    shipped = (p.stage1(record=True), p.mask("stage 1"), p.stage2("reference_rec", "stage 1", FAST, CACHED))
    parts += [
        measure("shipped default", chain(*shipped)),
        measure("shipped default, new reference", chain(record_reference, *shipped)),
    ]
    parts += pick_and_draw_parts(p, measure)
    # Throughput: BATCH seeds of one prompt through one execution (the runner's --batch), reference reused.
    parts += [
        measure(f"plain KSampler, batch of {BATCH}", lambda: p.plain(BATCH)),
        measure(f"shipped default, batch of {BATCH}", chain(
            p.stage1(record=True, batch=BATCH), p.mask("stage 1", BATCH),
            p.stage2("reference_rec", "stage 1", FAST, CACHED, BATCH))),
    ]
    return with_ratios(parts)


def pick_and_draw_parts(p: Pipeline, measure: Callable[[str, Callable[[], None]], Part]) -> list[Part]:
    """Pick-and-Draw's parts: each inversion of the reference, the palette, template and guided sampling, per
    image and with a new reference (the shipped palette path, then the other)."""
    pd = p.pick_and_draw()
    shipped, other = PD_SOURCES
    return [
        measure("P&D DDIM inversion (reference)", pd["ddim"]),
        measure("P&D null-text inversion (reference)", pd["null_text"]),
        measure("P&D palette (reference)", pd[f"palette_{shipped}"]),
        measure("P&D layout template", pd["template"]),
        measure("P&D guided sampling", pd[f"guided_{shipped}"]),
        measure("P&D per image (palette reused)", chain(pd["template"], pd[f"guided_{shipped}"])),
        measure("P&D, new reference", chain(pd[shipped], pd[f"palette_{shipped}"], pd["template"],
                                             pd[f"guided_{shipped}"])),
        measure(f"P&D, new reference ({PD_SOURCE_NAMES[other]} palette)",
                chain(pd[other], pd[f"palette_{other}"], pd["template"], pd[f"guided_{other}"])),
    ]


def measure_core_parts(p: Pipeline, repeats: int, pick_and_draw: bool = False) -> list[Part]:
    """The headline's Layout-and-Retouch rows (SDXL's, and any family's with ``--parts headline``): plain,
    the shipped default in steady state and with a new reference, and the paper's graph; with
    ``pick_and_draw``, Pick-and-Draw's parts too."""
    record_reference = p.invert("reference_rec", lambda: p.reference, p.yr, p.neg, RECORD_REFERENCE)
    shipped = (p.stage1(record=True), p.mask("stage 1"), p.stage2("reference_rec", "stage 1", FAST, CACHED))
    paper = (p.stage1(), p.invert("reference_inv", lambda: p.reference),
             p.invert("layout_inv", lambda: p.state["stage1"][0]), p.mask("layout_inv"),
             p.stage2("reference_inv", "layout_inv"))
    p.count_rows()
    p.warm_up()  # through the counting wrapper too: the first part measured is not its first call
    record_reference()  # once per reference, kept by ComfyUI's cache
    measure = lambda name, fn: measure_part(name, fn, p.device, repeats, p.rows)  # noqa: E731
    return with_ratios([
        measure("plain KSampler", p.plain),
        measure("shipped default", chain(*shipped)),
        measure("shipped default, new reference", chain(record_reference, *shipped)),
        measure("full pipeline", chain(*paper)),
        *(pick_and_draw_parts(p, measure) if pick_and_draw else []),
    ])


def fast_mode_fidelity(p: Pipeline) -> dict:
    """The same layout and mask retouched in the fast and the recorded mode: final latents compared."""
    fidelity = {}
    for name, ref, lay, cache in (("stage 1's path", "reference_inv", "stage 1", CACHED),
                                  ("inversions at the source prompts", "reference_rec", "layout_rec", CACHE_OFF)):
        p.stage2(ref, lay, FAST, cache)()
        p.stage2(ref, lay, RECORDED, cache)()
        got = p.state["out", ref, lay, FAST, cache, 1]["samples"].float()
        want = p.state["out", ref, lay, RECORDED, cache, 1]["samples"].float()
        diff = (got - want).abs()
        fidelity[name] = {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
                          "max_relative": float(diff.max() / want.abs().max())}
    return fidelity


def _set_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Eq. 6-7's cost between two palettes, both ways: UREMD of each against the other (the mean over its
    features of the cosine distance to the other's nearest), averaged; 0 when they hold the same directions."""
    return float((uremd(a.float(), b) + uremd(b.float(), a)) / 2)


def palette_sources(p: Pipeline) -> dict:
    """The palette on the DDIM Inversion's path against the null-text inversion's (the paper's), from the same
    reference photo: per appearance step and layer, the features each holds, the distance between the two
    sets (:func:`_set_distance`) and between their means; the two paths' latents at those steps; and the
    final latents of the same generation guided by each."""
    rows = []
    ddim, null = p.state["palette", "ddim"], p.state["palette", "null_text"]
    for (step, layer), features in sorted(ddim.features.items()):
        other = null.features[(step, layer)]
        mean_a, mean_b = features.float().mean(0), other.float().mean(0)
        rows.append({"step": step, "layer": " ".join(map(str, layer)), "ddim_features": features.shape[0],
                     "null_text_features": other.shape[0], "set_distance": round(_set_distance(features, other), 6),
                     "mean_relative": round(float((mean_a - mean_b).norm() / mean_b.norm()), 6)})
    paths = p.state["ddim"][1].latents, p.state["null_text"][1].latents
    path = [round(float((a - b).norm() / b.norm()), 6) for a, b in zip(*paths, strict=True)]
    finals = [p.state["pick_and_draw", s]["samples"].float() for s in PD_SOURCES]
    return {"per_step_and_layer": rows, "path_relative_max": max(path),
            "final_relative": float((finals[0] - finals[1]).norm() / finals[1].norm())}


DIT_PARTS = ("plain KSampler", "shipped default", "shipped default, reference cache off",
              "shipped default, new reference", "full pipeline")


def measure_dit_parts(p: DitPipeline, repeats: int) -> list[Part]:
    """A DiT family's rows: plain; the shipped default per image (stage 1's path as the layout, the swap's sources live in
    the recorded mode, the reference's inversion reused and its attention read from the reference cache), the same
    with the cache off (the reference rows run every image) and with a new reference (its inversion, and the cache
    filled again); the paper's graph (both inversions, the sources re-denoised)."""
    record_reference = p.invert("reference_rec", lambda: p.reference, p.yr)
    shipped = (p.stage1(), p.mask("stage 1"), p.stage2("reference_rec", "stage 1", RECORDED, CACHED))
    uncached = (p.stage1(), p.mask("stage 1"), p.stage2("reference_rec", "stage 1", RECORDED, CACHE_OFF))
    paper = (p.stage1(), p.invert("reference_inv", lambda: p.reference),
             p.invert("layout_inv", lambda: p.state["stage1"][0]), p.mask("layout_inv"),
             p.stage2("reference_inv", "layout_inv", REDENOISED))
    p.count_rows()
    p.warm_up()
    record_reference()
    chain(*shipped)()  # the reference cache filled, as by the artist's first image
    measure = lambda name, fn: measure_part(name, fn, p.device, repeats, p.rows)  # noqa: E731
    return with_ratios([measure(DIT_PARTS[0], p.plain), measure(DIT_PARTS[1], chain(*shipped)),
                        measure(DIT_PARTS[2], chain(*uncached)),
                        measure(DIT_PARTS[3], chain(record_reference, *shipped)),  # a new inversion: the cache misses
                        measure(DIT_PARTS[4], chain(*paper))])
