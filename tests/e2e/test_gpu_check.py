"""The GPU check (tools/gpu_check.sh) in its dry mode: the same script and measurements on the tiny models and
the CPU, so that it runs when a session is lent a device. Its SDXL bench is the SDXL benchmark's smoke test."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import comfy_host

PACK_ROOT = Path(__file__).resolve().parents[2]
HEADLINE = ["plain KSampler", "shipped default", "shipped default, new reference", "full pipeline",
            "P&D DDIM inversion (reference)", "P&D null-text inversion (reference)", "P&D palette (reference)",
            "P&D layout template", "P&D guided sampling", "P&D per image (palette reused)", "P&D, new reference",
            "P&D, new reference (null-text palette)"]


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
        assert list(rows) == (HEADLINE if part["name"] == "bench sd1" else HEADLINE[:4]), part["name"]
        assert report["setting"]["steps"] == 2 and rows["plain KSampler"] == 2 * 2  # 2 steps, two CFG halves
        assert rows["plain KSampler"] < rows["shipped default"] < rows["shipped default, new reference"]
        assert rows["shipped default"] < rows["full pipeline"]
        assert f"{report['setting']['model']}, 64 px, 2 steps" in table
    sd1 = results["parts"][1]["report"]
    rows = {p["name"]: p["unet_rows"] for p in sd1["parts"]}
    # Pick-and-Draw at 2 steps: layout step 0, appearance step 1, 3 iterations each: 6 differentiated rows.
    backward = {p["name"]: p["backward_rows"] for p in sd1["parts"]}
    assert backward["P&D guided sampling"] == 6 and rows["P&D guided sampling"] == rows["plain KSampler"] + 6
    assert backward["P&D null-text inversion (reference)"] > 0 == backward["P&D DDIM inversion (reference)"]
    assert sd1["palette_sources"]["per_step_and_layer"] and sd1["palette_sources"]["final_relative"] > 0
    assert "Palettes, DDIM vs null-text path" in table
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
    assert "tiny random Flux.1-dev, 64 px, 2 steps" in table and "Flux reference cache" in table
