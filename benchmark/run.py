"""Timing each part of the pipeline against a plain generation, on one machine and one model.

On a GPU: a randomly initialised full-size SD1.5 in fp16 (speed does not depend on the
weights), peak memory as CUDA's max allocated per part. On the CPU: the tiny SD1.x, peak memory
as the process's peak RSS during the part (reset before each part through Linux's
``/proc/self/clear_refs``; elsewhere the peak so far, which only grows).
Every ratio is to the plain generation measured in the same run. Segment Anything is not part
of the timed pipeline (its cost does not depend on the method; see the README).
"""

from __future__ import annotations

import json
import logging
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


@dataclass
class Part:
    name: str
    seconds: float
    peak_mib: float
    unet_rows: int = 0  # latent rows through the UNet (one row: one image, one CFG half, one step)
    time_ratio: float = 0.0
    memory_ratio: float = 0.0
    rows_ratio: float = 0.0


def _reset_cpu_peak() -> bool:
    """Reset the process's peak RSS (Linux: ``/proc/self/clear_refs`` 5); False where it cannot be.

    Memory freed by earlier parts is first handed back to the system (glibc's ``malloc_trim``),
    or the allocator's retained pages would count as this part's."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure(name: str, fn: Callable[[], object], device: torch.device, repeats: int,
             rows: list[int] | None = None) -> Part:
    times, peaks = [], []
    first_rows = rows[0] if rows else 0
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            _reset_cpu_peak()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        peaks.append(_peak_mib(device))
    part = Part(name, statistics.median(times), max(peaks), (rows[0] - first_rows) // repeats if rows else 0)
    logger.info("%-34s %8.2f s %10.0f MiB %8d rows", name, part.seconds, part.peak_mib, part.unet_rows)
    return part


def run(size: int, steps: int, repeats: int, cpu: bool) -> dict:
    """Measure every part; return the report (parts with ratios, and the setting)."""
    import comfy.model_management as mm
    import comfy.sd

    import nodes

    from .random_models import SD1_TINY_UNET, SD15_UNET, sd1_checkpoint

    device = mm.get_torch_device()
    full = device.type == "cuda" and not cpu
    unet = SD15_UNET if full else SD1_TINY_UNET
    # Vanilla and personalized: two UNets, as with a DreamBooth checkpoint (one text encoder and VAE).
    vanilla, clip, _ = comfy.sd.load_state_dict_guess_config(sd1_checkpoint(unet, 1), embedding_directory=None)[:3]
    personalized_sd = sd1_checkpoint(unet, 2, with_text_and_vae=False)
    personalized = comfy.sd.load_state_dict_guess_config(personalized_sd, output_vae=False, output_clip=False)[0]
    mapping = nodes.NODE_CLASS_MAPPINGS
    encode = lambda text: nodes.CLIPTextEncode().encode(clip, text)[0]  # noqa: E731
    vp, pp, yr, neg, empty = (encode(t) for t in ("a red vase on a beach", "a sks vase on a beach",
                                                   "a photo of sks vase", "blurry", ""))
    latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
    reference = {"samples": torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))}
    cfg = 7.5
    # The paper's 5, 10 and 30 of 50 steps, scaled to other step counts.
    lambda1, lambda2, mask_start = max(1, steps // 10), steps // 5, 3 * steps // 5
    state: dict = {}

    def plain():
        return nodes.KSampler().sample(personalized, 0, steps, cfg, "ddim", "ddim_uniform", pp, neg, latent)[0]

    def stage1(record: bool = False):
        def fn():
            state["stage1"] = mapping["LR_StepBlendedKSampler"].execute(
                vanilla, personalized, vp, neg, pp, neg, latent, 0, steps, lambda1, cfg, "ddim",
                "ddim_uniform", 1.0, record, "output 6-11").result
        return fn

    def invert(name: str, source: Callable[[], dict], prompt=empty, negative=None, record=False):
        def fn():
            state[name] = mapping["LR_DDIMInversion"].execute(
                personalized, prompt, source(), steps, "ddim_uniform", "ddim", 1.0, negative, record,
                "output 6-11").result
        return fn

    def mask(layout: str):
        def fn():
            state["mask"] = mapping["LR_CrossAttentionMask"].execute(
                personalized, layout_path(layout), clip, "a sks vase on a beach", "vase",
                "1/2 of the latent (32x32 at 512 px)", 10, 0.1).result[1]
        return fn

    def layout_path(layout: str):
        return state["stage1"][1] if layout == "stage 1" else state[layout][1]

    def stage2(reference_inv: str, layout: str, mode: str = "recorded", cache: str = "off"):
        def fn():
            patched = mapping["LR_MultiSourceAttentionSwap"].execute(
                personalized, state[reference_inv][1], layout_path(layout), yr, neg, pp, neg, lambda2,
                mask_start, "output 6-11", "output 6-11", mode, cache, state["mask"]).result[0]
            start = state["stage1"][2] if layout == "stage 1" else state[layout][0]
            state["out", reference_inv, layout, mode, cache] = nodes.KSamplerAdvanced().sample(
                patched, "disable", 0, steps, cfg, "ddim", "ddim_uniform", yr, neg, start, 0, 10000, "disable")[0]
        return fn

    def chain(*parts):
        def fn():
            for part in parts:
                part()
        return fn

    cached, fast = "offloaded to RAM", "recorded, attention from the inversions (fast)"
    invert_reference = invert("reference_inv", lambda: reference)
    invert_layout = invert("layout_inv", lambda: state["stage1"][0])
    # The fast mode's inversions use the sources' own prompts and the negative: then it is exact.
    record_reference = invert("reference_rec", lambda: reference, yr, neg, True)
    record_layout = invert("layout_rec", lambda: state["stage1"][0], pp, neg, True)
    fill_cache = stage2("reference_inv", "layout_inv", cache=cached)

    plain()  # warm-up: loads the models
    # Rows through the UNet, counted with a keyed DIFFUSION_MODEL wrapper on the benchmark's own models
    # (clones, the swap's included, carry it): the work of each part, whatever the hardware.
    import comfy.patcher_extension as ext

    rows = [0]

    def count_rows(executor, x, *args, **kwargs):
        rows[0] += x.shape[0]
        return executor(x, *args, **kwargs)

    for model in (vanilla, personalized):
        ext.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "lr_benchmark_rows", count_rows,
                                 model.model_options, is_model_options=True)
    measure = lambda name, fn: _measure(name, fn, device, repeats, rows)  # noqa: E731
    parts = [
        measure("plain KSampler", plain),
        measure("stage 1 (step-blended)", stage1()),
        measure("inversion (reference)", invert_reference),
        measure("inversion (layout)", invert_layout),
        measure("cross-attention mask (10 steps)", mask("layout_inv")),
        measure("stage 2 (swap + KSampler)", stage2("reference_inv", "layout_inv")),
    ]
    fill_cache()  # an earlier generation with this reference (ComfyUI also keeps its inversion)
    parts += [
        measure("stage 2, reference cached", stage2("reference_inv", "layout_inv", cache=cached)),
        measure("stage 2 on stage 1's path, cached", stage2("reference_inv", "stage 1", cache=cached)),
        measure("stage 1 recording attention", stage1(record=True)),
        measure("stage 2, fast mode, cached", stage2("reference_inv", "stage 1", fast, cached)),
        measure("inversion recording attention", record_layout),
    ]
    record_reference()  # once per reference, kept by ComfyUI's cache
    parts += [
        measure("stage 2, fast mode from inversions", stage2("reference_rec", "layout_rec", fast)),
        measure("full pipeline", chain(stage1(), invert_reference, invert_layout, mask("layout_inv"),
                                       stage2("reference_inv", "layout_inv"))),
    ]
    fill_cache()  # the full pipeline inverted the reference anew: an earlier generation with it
    parts += [
        measure("full, reference cached", chain(stage1(), invert_layout, mask("layout_inv"),
                                                stage2("reference_inv", "layout_inv", cache=cached))),
        measure("full, stage 1's path, cached", chain(stage1(), mask("stage 1"),
                                                      stage2("reference_inv", "stage 1", cache=cached))),
        measure("full, fast mode, cached", chain(stage1(record=True), mask("stage 1"),
                                                 stage2("reference_inv", "stage 1", fast, cached))),
    ]
    for p in parts:
        p.time_ratio = round(p.seconds / parts[0].seconds, 2)
        p.memory_ratio = round(p.peak_mib / parts[0].peak_mib, 2)
        p.rows_ratio = round(p.unet_rows / parts[0].unet_rows, 2)
    # Fidelity of the fast mode: the same layout and mask retouched both ways.
    fidelity = {}
    for name, ref, lay, cache in (("stage 1's path", "reference_inv", "stage 1", cached),
                                  ("inversions at the source prompts", "reference_rec", "layout_rec", "off")):
        stage2(ref, lay, fast, cache)()
        stage2(ref, lay, "recorded", cache)()
        got = state["out", ref, lay, fast, cache]["samples"].float()
        want = state["out", ref, lay, "recorded", cache]["samples"].float()
        diff = (got - want).abs()
        fidelity[name] = {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
                          "max_relative": float(diff.max() / want.abs().max())}
    return {
        "setting": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
                    or "cpu", "model": "random SD1.5 (fp16)" if full else "tiny random SD1.x",
                    "size": size, "steps": steps, "lambda1": lambda1, "lambda2": lambda2,
                    "mask_start": mask_start, "cfg": cfg, "sampler": "ddim/ddim_uniform", "repeats": repeats,
                    "torch": torch.__version__, "memory": "CUDA max allocated" if device.type == "cuda" else
                    "process peak RSS during the part" if _reset_cpu_peak() else "process peak RSS so far",
                    "date": time.strftime("%Y-%m-%d")},
        "parts": [asdict(p) for p in parts],
        "fast_mode_vs_recorded": fidelity,
    }


def table(report: dict) -> str:
    lines = ["| part | seconds | x plain | peak MiB | x plain | UNet rows | x plain |", "|---|---|---|---|---|---|---|"]
    for p in report["parts"]:
        lines.append(f"| {p['name']} | {p['seconds']:.2f} | {p['time_ratio']:.2f} | {p['peak_mib']:.0f} | "
                     f"{p['memory_ratio']:.2f} | {p['unet_rows']} | {p['rows_ratio']:.2f} |")
    return "\n".join(lines)


def main(size: int, steps: int, repeats: int, cpu: bool, output: Path) -> dict:
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        report = run(size, steps, repeats, cpu)
    output.write_text(json.dumps(report, indent=1))
    print(json.dumps(report["setting"]))  # noqa: T201  (the command's output)
    print(table(report))  # noqa: T201
    for name, f in report["fast_mode_vs_recorded"].items():
        print(f"fast mode vs recorded ({name}), final latent: max abs difference {f['max_abs']:.3g}, "  # noqa: T201
              f"mean {f['mean_abs']:.3g}, max relative {f['max_relative']:.3g}")
    return report
