"""Timing each part of the pipeline against a plain generation, on one machine and one model family
(``bench --family``).

On a GPU: a randomly initialised full-size model (SD1.5 or SDXL in fp16, a DiT in bf16; speed does not depend on
the weights); on the CPU the tiny one (:mod:`.measure` says how memory is measured). Every ratio is to the plain
generation measured in the same run. Segment Anything is not part of the timed pipeline (its cost does not
depend on the method; see docs/benchmark.md). The package's parts: :mod:`.measure`, :mod:`.pipeline` and
:mod:`.dits` (the families' models and graphs), :mod:`.parts`, :mod:`.report`, :mod:`.record_sizes`.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

from . import parts as measured_parts
from . import report as tables
from .dits import DITS, DitPipeline
from .measure import reset_cpu_peak
from .pipeline import UNETS, Pipeline
from .record_sizes import dit_sizes, latent_downscale, meta_dit
from .record_sizes import sizes as record_sizes

FAMILIES = (*UNETS, *DITS)  # bench --family


def native_size(family: str) -> int:
    """The family's native image size: SD1.x 512, SDXL 1024, a DiT its row's."""
    return DITS[family].size if family in DITS else 512 if family == "sd1" else 1024


def run(size: int, steps: int, repeats: int, cpu: bool, family: str = "sd1", parts: str = "all") -> dict:
    """Measure every part (SD1.x; SDXL, a DiT or ``parts="headline"``: the headline's); return the report (parts with
    ratios, the fast mode's fidelity and the throughput for SD1.x's every part, the palettes' comparison where
    Pick-and-Draw ran, the setting, the records' sizes)."""
    p = DitPipeline(size, steps, cpu, family) if family in DITS else Pipeline(size, steps, cpu, family)
    device = p.device
    if family in DITS:
        spec = DITS[family]
        lambda2 = round(spec.steps / 5)
        measured = measured_parts.measure_dit_parts(p, repeats)
        extra = {"dit_record_sizes_gib": {"model": spec.label, "size": spec.size,
                                          **dit_sizes(meta_dit(spec.full), spec.steps, lambda2, spec.size,
                                                     1 if spec.cfg == 1.0 else 2, latent_downscale(spec.full))}}
    elif family == "sdxl" or parts == "headline":
        measured = measured_parts.measure_core_parts(p, repeats, pick_and_draw=parts == "headline")
        extra = {"palette_sources": measured_parts.palette_sources(p)} if parts == "headline" else {}
    else:
        measured = measured_parts.measure_parts(p, repeats)
        extra = {"throughput": tables.throughput(measured), "fast_mode_vs_recorded": measured_parts.fast_mode_fidelity(p),
                 "palette_sources": measured_parts.palette_sources(p)}
    return {
        "setting": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
                    or "cpu", "model": p.label,
                    "size": size, "steps": steps, "lambda1": p.lambda1, "lambda2": p.lambda2,
                    "mask_start": p.mask_start, "cfg": p.cfg, "sampler": f"{p.sampler}/{p.scheduler}", "repeats": repeats,
                    "torch": torch.__version__, "memory": "CUDA max allocated" if device.type == "cuda" else
                    "process peak RSS during the part" if reset_cpu_peak() else "process peak RSS so far",
                    "date": time.strftime("%Y-%m-%d")},
        "parts": [asdict(part) for part in measured],
        **extra,
        "record_sizes_gib": record_sizes(),
    }


def main(size: int, steps: int, repeats: int, cpu: bool, output: Path, family: str = "sd1",
         parts: str = "all") -> dict:
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        report = run(size, steps, repeats, cpu, family, parts)
    output.write_text(json.dumps(report, indent=1))
    print(json.dumps(report["setting"]))  # noqa: T201  (the command's output)
    print(tables.report_text(report))  # noqa: T201
    return report
