"""The benchmark's report: the headline, the tables of parts, throughput and record sizes, Pick-and-Draw's palette
comparison, each as Markdown."""

from __future__ import annotations

from .measure import Part
from .parts import BATCH


def throughput(parts: list[Part]) -> dict:
    """Images per minute at batch 1 and BATCH, plain and shipped default (the reference's inversion reused)."""
    by_name = {part.name: part for part in parts}
    return {name: {str(batch): round(60 * batch / by_name[part].seconds, 2)
                   for batch, part in ((1, name), (BATCH, f"{name}, batch of {BATCH}"))}
            for name in ("plain KSampler", "shipped default")}


def throughput_table(report: dict) -> str:
    lines = [f"| images per minute | batch 1 | batch {BATCH} | gain |", "|---|---|---|---|"]
    for name, rates in report["throughput"].items():
        lines.append(f"| {name} | {rates['1']:.2f} | {rates[str(BATCH)]:.2f} | "
                     f"{rates[str(BATCH)] / rates['1']:.2f}x |")
    return "\n".join(lines)


def sizes_table(report: dict) -> str:
    """The records' RAM at each family's native size (real shapes, fp16, 50 steps, ``auto`` layers)."""
    families = list(report["record_sizes_gib"])
    lines = ["| record (GiB) | " + " | ".join(families) + " |", "|---" * (len(families) + 1) + "|"]
    for name in report["record_sizes_gib"][families[0]]:
        values = [report["record_sizes_gib"][f][name] for f in families]
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in values) + " |")
    return "\n".join(lines)


# The headline: what a user of the shipped full workflows pays per image, then the paper's graph.
HEADLINE = (("shipped default, per image (the reference's inversion reused)", "shipped default"),
            ("shipped default, first image with a new reference", "shipped default, new reference"),
            ("the paper's graph (stage 1, both inversions, mask, stage 2)", "full pipeline"),
            ("Pick-and-Draw per image (the reference's palette reused)", "P&D per image (palette reused)"),
            ("Pick-and-Draw, first image with a new reference (DDIM inversion, palette)", "P&D, new reference"),
            ("Pick-and-Draw, first image with a new reference, the paper's null-text palette",
             "P&D, new reference (null-text palette)"))


def headline(report: dict) -> str:
    parts = {p["name"]: p for p in report["parts"]}
    lines = ["| per image | seconds | x plain | UNet rows (backward) | x plain | peak MiB | x plain |",
             "|---|---|---|---|---|---|---|"]
    for label, name in HEADLINE:
        if name not in parts:  # SDXL measures Layout-and-Retouch's rows only
            continue
        p = parts[name]
        lines.append(f"| {label} | {p['seconds']:.2f} | {p['time_ratio']:.2f} | {_rows(p)} | "
                     f"{p['rows_ratio']:.2f} | {p['peak_mib']:.0f} | {p['memory_ratio']:.2f} |")
    return "\n".join(lines)


def table(report: dict) -> str:
    lines = ["| part | seconds | x plain | peak MiB | x plain | UNet rows (backward) | x plain |",
             "|---|---|---|---|---|---|---|"]
    for p in report["parts"]:
        lines.append(f"| {p['name']} | {p['seconds']:.2f} | {p['time_ratio']:.2f} | {p['peak_mib']:.0f} | "
                     f"{p['memory_ratio']:.2f} | {_rows(p)} | {p['rows_ratio']:.2f} |")
    return "\n".join(lines)


def _rows(part: dict) -> str:
    """Forward rows, with the differentiated ones (each also run backward) in brackets."""
    return f"{part['unet_rows']} ({part['backward_rows']})" if part.get("backward_rows") else str(part["unet_rows"])




def palette_table(report: dict) -> str:
    lines = ["| step | layer | DDIM features | null-text features | set distance | means, relative |",
             "|---|---|---|---|---|---|"]
    for r in report["palette_sources"]["per_step_and_layer"]:
        lines.append(f"| {r['step']} | {r['layer']} | {r['ddim_features']} | {r['null_text_features']} | "
                     f"{r['set_distance']:.2e} | {r['mean_relative']:.2e} |")
    return "\n".join(lines)


def dit_sizes_line(report: dict) -> str:
    sizes = report["dit_record_sizes_gib"]
    shown = {k: v for k, v in sizes.items() if k not in ("model", "size", "blocks", "steps", "lambda2", "halves")}
    return (f"{sizes['model']} at {sizes['size']}x{sizes['size']}, {sizes['blocks']} auto blocks, {sizes['steps']} "
            f"steps, lambda2 {sizes['lambda2']}, {sizes['halves']} CFG half(s), bf16, GiB: " + "; ".join(f"{name} {gib:.2f}" for name, gib in shown.items()))


def report_text(report: dict) -> str:
    """The report as the ``bench`` command prints it."""
    out = [headline(report), ""]
    if "throughput" in report:
        out += [throughput_table(report), ""]
    out.append(sizes_table(report))
    if "dit_record_sizes_gib" in report:
        out.append(dit_sizes_line(report))
    out += ["", table(report)]
    if "palette_sources" in report:
        sources = report["palette_sources"]
        out.append(palette_table(report))
        out.append(f"paths (DDIM vs null-text), max relative latent difference {sources['path_relative_max']:.3g}; "
                   f"guided final latent, DDIM palette vs null-text palette: {sources['final_relative']:.3g} relative")
    for name, f in report.get("fast_mode_vs_recorded", {}).items():
        out.append(f"fast mode vs recorded ({name}), final latent: max abs difference {f['max_abs']:.3g}, "
                   f"mean {f['mean_abs']:.3g}, max relative {f['max_relative']:.3g}")
    return "\n".join(out)
