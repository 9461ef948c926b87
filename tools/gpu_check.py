"""The GPU check's measurements (run by tools/gpu_check.sh, which says how): each part a fresh interpreter with
its own time limit, so one that fails or runs long costs only its own share of the device's 8 minutes.

1. The checks only a GPU can fail, from the test suite with the tests' host on the GPU (``LR_TEST_DEVICE=cuda``):
   the mask reading stage 1's record, and the records' moves between the GPU and RAM (the recorded and fast
   modes of the swap).
2. ``bench --parts headline`` for SD1.5 at 512 and SDXL at 1024 (random fp16 weights): plain, the shipped
   Layout-and-Retouch default per image and with a new reference, the paper's graph, Pick-and-Draw per image and
   with a new reference (its guided rows included), with both palette paths compared.
3. ``bench --family flux`` at 1024, 28 steps (a random full-size Flux.1-dev in bf16, made on the GPU): plain, the
   shipped default with and without the reference cache, with a new reference, the paper's graph.

Writes ``gpu_check.json`` (every part's outcome and report) and ``gpu_check.md`` (the tables).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]
CUDA_CHECKS = ["host/test_attention_masks.py::test_mask_reads_stage_1s_record",
               "host/test_source_records.py::test_fast_mode_from_stage_1",
               "host/test_source_records.py::test_reference_cache_skips_reference_rows_in_later_runs",
               "host/test_source_records.py::test_a_reference_records_only_the_self_attention_input"]


def run(name: str, command: list[str], limit: float, env: dict[str, str], log: Path, cwd: Path = PACK) -> dict:
    """Run ``command``; its outcome (return code, seconds, the end of its output)."""
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit, env=env, cwd=str(cwd))
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as error:
        code, output = "timeout", f"{error.stdout or ''}{error.stderr or ''}"
        output = output.decode() if isinstance(output, bytes) else output
    seconds = round(time.perf_counter() - start, 1)
    log.write_text(output)
    print(f"{name}: {code} in {seconds} s", flush=True)  # noqa: T201
    return {"name": name, "returncode": code, "seconds": seconds, "tail": output[-1500:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry", action="store_true", help="tiny models on the CPU, 2 steps")
    args = parser.parse_args()
    out, dry = args.out, args.dry
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    results: dict = {"dry": dry, "date": time.strftime("%Y-%m-%d %H:%M"), "parts": []}
    # From tests/ (pytest's root): the pack's folder on sys.path would shadow ComfyUI's nodes module. Dry, the checks
    # are collected, not run: the command and the tests' names are what can rot (the suite runs the tests itself).
    pytest = [sys.executable, "-m", "pytest", *CUDA_CHECKS, "-q", "-p", "no:cacheprovider", "-x",
              *(["--collect-only"] if dry else [])]
    results["parts"].append(run("checks on the GPU" if not dry else "checks (dry: the CPU)", pytest, 150,
                                {**env, "LR_TEST_DEVICE": "cpu" if dry else "cuda"}, out / "checks.log",
                                PACK / "tests"))
    for family, size, limit, repeats in (("sd1", 512, 170, 2), ("sdxl", 1024, 170, 1), ("flux", 1024, 200, 1)):
        report = out / f"bench_{family}.json"
        # Dry, SD1.x runs every part (the benchmark's smoke test: e2e/test_gpu_check.py) and SDXL the Layout-and-
        # Retouch rows alone (its Pick-and-Draw rows are SD1.x's code on another model, and the tiny SDXL's backward
        # passes would take minutes of the test suite's CPU); the headline's selection is of those parts.
        parts = "all" if dry else "headline"
        command = [sys.executable, str(PACK), "bench", "--family", family, "--parts", parts, "--output",
                   str(report), "--repeats", str(1 if dry else repeats)]  # dry: the script's path, not timings
        steps = ["--steps", "28"] if family == "flux" else []  # Flux.1-dev's usual count
        command += ["--cpu", "--steps", "2", "--size", "64"] if dry else ["--size", str(size), *steps]
        # Dry, the limit is the test suite's, not the device's: the CPU may be shared with other tests.
        part = run(f"bench {family}", command, 600 if dry else limit, env, out / f"bench_{family}.log")
        if report.is_file():
            part["report"] = json.loads(report.read_text())
        results["parts"].append(part)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    (out / "gpu_check.md").write_text(markdown(results))
    print(markdown(results))  # noqa: T201
    return 0 if all(p["returncode"] == 0 for p in results["parts"]) else 1


def markdown(results: dict) -> str:
    lines = [f"# GPU check ({'dry: tiny models on the CPU' if results['dry'] else 'device'}), {results['date']}", "",
             "| part | outcome | seconds |", "|---|---|---|"]
    for part in results["parts"]:
        lines.append(f"| {part['name']} | {'passed' if part['returncode'] == 0 else part['returncode']} | "
                     f"{part['seconds']} |")
    for part in results["parts"]:
        report = part.get("report")
        if not report:
            continue
        setting = report["setting"]
        lines += ["", f"## {part['name']}: {setting['model']}, {setting['size']} px, {setting['steps']} steps, "
                      f"{setting['device']}", "", "| part | seconds | x plain | UNet rows (backward) | peak MiB |",
                  "|---|---|---|---|---|"]
        for p in report["parts"]:
            rows = f"{p['unet_rows']} ({p['backward_rows']})" if p.get("backward_rows") else str(p["unet_rows"])
            lines.append(f"| {p['name']} | {p['seconds']:.2f} | {p['time_ratio']:.2f} | {rows} | {p['peak_mib']:.0f} |")
        dit = report.get("dit_record_sizes_gib")
        if dit:
            lines += ["", f"{dit['model']} reference cache at {dit['size']}x{dit['size']}, {dit['blocks']} auto blocks, "
                          f"{dit['steps']} steps, bf16: "
                          f"{next(v for k, v in dit.items() if k.startswith('reference cache')):.2f} GiB."]
        sources = report.get("palette_sources")
        if sources:
            lines += ["", f"Palettes, DDIM vs null-text path: paths' latents differ by at most "
                          f"{sources['path_relative_max']:.3g} (relative); guided final latents by "
                          f"{sources['final_relative']:.3g}; largest set distance "
                          f"{max(r['set_distance'] for r in sources['per_step_and_layer']):.3g}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
