"""The GPU check (tools/gpu_check.sh) in its dry mode: the same script and measurements on the tiny models and
the CPU, so that it runs when a session is lent a device. Its SD1.x bench (every part) and SDXL bench are the
benchmark's smoke tests (the Flux bench's is host/test_benchmark.py); no time is asserted."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import comfy_host
import pytest

# This module starts interpreters or servers that load models of their own: the session's tiny models are
# dropped first (memory_budget.py: a worker and what it starts share 7 GiB).
pytestmark = pytest.mark.usefixtures("session_models_released")

PACK_ROOT = Path(__file__).resolve().parents[2]
ALL = ["plain KSampler", "stage 1 (step-blended)", "inversion (reference)", "inversion (layout)",
       "cross-attention mask (10 steps)", "stage 2 (swap + KSampler)", "stage 2, reference cached",
       "stage 2 on stage 1's path, cached", "stage 1 recording attention", "stage 2, fast mode, cached",
       "inversion recording attention", "stage 2, fast mode from inversions", "full pipeline",
       "full, reference cached", "full, stage 1's path, cached", "full, fast mode, cached",
       "shipped default", "shipped default, new reference", "P&D DDIM inversion (reference)",
       "P&D null-text inversion (reference)", "P&D palette (reference)", "P&D layout template",
       "P&D guided sampling", "P&D per image (palette reused)", "P&D, new reference",
       "P&D, new reference (null-text palette)", "plain KSampler, batch of 4", "shipped default, batch of 4"]
CORE = ["plain KSampler", "shipped default", "shipped default, new reference", "full pipeline"]


def test_the_gpu_check_runs_dry(comfy, tmp_path):
    import torch

    # The script's interpreters take this worker's share of the cores (conftest.py), not every core.
    env = {**os.environ, "COMFYUI_PATH": str(comfy_host.COMFYUI), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run(["bash", str(PACK_ROOT / "tools" / "gpu_check.sh"), "--dry", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=900, cwd=str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [p["name"] for p in results["parts"]] == ["checks (dry: the CPU)", "bench sd1", "bench sdxl", "bench flux"]
    assert all(p["returncode"] == 0 for p in results["parts"]) and results["dry"] is True
    table = (tmp_path / "gpu_check.md").read_text()
    for part in results["parts"][1:3]:
        report = part["report"]
        rows = {p["name"]: p["unet_rows"] for p in report["parts"]}
        assert list(rows) == (ALL if part["name"] == "bench sd1" else CORE), part["name"]
        assert report["setting"]["steps"] == 2 and rows["plain KSampler"] == 2 * 2  # 2 steps, two CFG halves
        assert rows["plain KSampler"] < rows["shipped default"] < rows["shipped default, new reference"]
        assert rows["shipped default"] < rows["full pipeline"]
        assert f"{report['setting']['model']}, 64 px, 2 steps" in table
    sd1 = results["parts"][1]["report"]
    check_every_part(sd1, table)
    sdxl = results["parts"][2]["report"]
    assert sdxl["setting"]["model"] == "tiny random SDXL"
    sizes = sdxl["record_sizes_gib"]["SDXL at 1024x1024"]
    assert sizes["layers"] == 6 and sizes["reference inversion, record_for reference"] < 4  # issue 13's RAM bound
    assert "| checks (dry: the CPU) | passed |" in table
    flux = results["parts"][3]["report"]
    rows = {p["name"]: p["unet_rows"] for p in flux["parts"]}
    assert flux["setting"]["model"] == "tiny random Flux.1-dev" and flux["setting"]["steps"] == 2
    assert list(rows) == ["plain KSampler", "shipped default", "shipped default, reference cache off",
                          "shipped default, new reference", "full pipeline"]
    assert rows["plain KSampler"] == 2  # cfg 1: one row per step
    assert rows["shipped default"] < rows["shipped default, reference cache off"] < rows[
        "shipped default, new reference"] < rows["full pipeline"]
    assert "tiny random Flux.1-dev, 64 px, 2 steps" in table and "Flux.1-dev reference cache" in table


def check_every_part(report: dict, table: str) -> None:
    """The SD1.x bench at 2 steps, every part: each one's UNet rows are what the method costs."""
    from comfyui_layout_retouch.benchmark.report import HEADLINE, headline, throughput_table
    from comfyui_layout_retouch.benchmark.report import table as part_table

    names = [p["name"] for p in report["parts"]]
    assert report["parts"][0]["time_ratio"] == 1.0 and report["parts"][0]["memory_ratio"] == 1.0
    assert all(p["seconds"] > 0 and p["peak_mib"] > 0 and p["unet_rows"] > 0 for p in report["parts"])
    rows = {p["name"]: p["unet_rows"] for p in report["parts"]}
    backward = {p["name"]: p["backward_rows"] for p in report["parts"]}
    assert rows["inversion (reference)"] == 2  # cfg 1: the positive half only
    assert rows["stage 2, reference cached"] < rows["stage 2 (swap + KSampler)"]
    assert rows["stage 2, fast mode from inversions"] == rows["plain KSampler"]  # no source rows at all
    assert report["setting"]["model"] == "tiny random SD1.x"
    assert part_table(report).count("\n") == len(names) + 1
    assert headline(report).count("\n") == len(HEADLINE) + 1 and {name for _, name in HEADLINE} <= set(names)
    # The shipped default runs no reference inversion in steady state; a new reference adds its inversion.
    assert rows["shipped default, new reference"] > rows["shipped default"]
    # Pick-and-Draw at 2 steps: layout step 0, appearance step 1, 3 iterations each: 6 differentiated
    # conditional rows, each also run backward, on top of the plain generation's rows.
    assert backward["P&D guided sampling"] == 6 and rows["P&D guided sampling"] == rows["plain KSampler"] + 6
    # One CFG step of vanilla SD, and the conditional pass the guidance reads at its latent.
    assert backward["P&D layout template"] == 0 and rows["P&D layout template"] == 3
    assert rows["P&D DDIM inversion (reference)"] == 2 and backward["P&D DDIM inversion (reference)"] == 0
    assert backward["P&D null-text inversion (reference)"] > 0 and backward["plain KSampler"] == 0
    assert rows["P&D, new reference"] == rows["P&D DDIM inversion (reference)"] + rows["P&D palette (reference)"] + \
        rows["P&D per image (palette reused)"]
    assert rows["P&D per image (palette reused)"] == rows["P&D guided sampling"] + rows["P&D layout template"]
    sources = report["palette_sources"]
    assert [(r["step"], r["ddim_features"] > 0, r["null_text_features"] > 0) for r in sources["per_step_and_layer"]
            ][:1] == [(1, True, True)] and all(r["set_distance"] >= 0 for r in sources["per_step_and_layer"])
    assert 0 < sources["final_relative"] < float("inf") and sources["path_relative_max"] >= 0
    assert "Palettes, DDIM vs null-text path" in table
    for fidelity in report["fast_mode_vs_recorded"].values():
        assert 0 <= fidelity["mean_abs"] <= fidelity["max_abs"] < float("inf")
    # Throughput: four seeds through one execution run four times the rows of one image.
    assert rows["plain KSampler, batch of 4"] == 4 * rows["plain KSampler"]
    assert rows["shipped default, batch of 4"] == 4 * rows["shipped default"]
    seconds = {p["name"]: p["seconds"] for p in report["parts"]}
    for name in ("plain KSampler", "shipped default"):
        assert report["throughput"][name] == {"1": round(60 / seconds[name], 2),
                                              "4": round(240 / seconds[f"{name}, batch of 4"], 2)}
    assert throughput_table(report).count("\n") == 3
