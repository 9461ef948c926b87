"""The headless runner through its real command line: 2 prompts x 2 seeds, a manifest, a resumed run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[2]
SMALL = ["Vanilla model (plain SD 1.5).ckpt_name=tiny_vanilla.safetensors",
         "Personalized model (DreamBooth).ckpt_name=tiny_personalized.safetensors",
         "EmptyLatentImage.width=64", "EmptyLatentImage.height=64",
         "LR_StepBlendedKSampler.steps=4", "LR_StepBlendedKSampler.lambda1=1"]


def run_cli(models: Path, output: Path, comfyui: Path) -> subprocess.CompletedProcess:
    args = [sys.executable, str(PACK_ROOT), "run", str(PACK_ROOT / "workflows/layout_retouch_stage1_layout.json"),
            "--prompt", "a {} on a beach", "--prompt", "a {} in the snow", "--seeds", "3,4",
            "--subject", "sks vase", "--models", str(models), "--output", str(output), "--cpu"]
    for item in SMALL:
        args += ["--set", item]
    env = {**os.environ, "COMFYUI_PATH": str(comfyui)}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, cwd=str(comfyui))


def test_runner_two_prompts_two_seeds_and_resume(comfy, tiny_files, tmp_path):
    from comfy_host import COMFYUI

    models = tiny_files["tiny_vanilla"].parent.parent
    output = tmp_path / "out"
    first = run_cli(models, output, COMFYUI)
    assert first.returncode == 0, first.stderr[-3000:]
    manifest = json.loads((output / "manifest.json").read_text())
    jobs = manifest["jobs"]
    assert len(jobs) == 4
    assert {(j["template"], j["seed"]) for j in jobs.values()} == {
        (p, s) for p in ("a {} on a beach", "a {} in the snow") for s in (3, 4)}
    for job in jobs.values():
        assert len(job["images"]) == 1 and (output / job["images"][0]).exists()
        blend = next(n for n in job["prompt"].values() if n["class_type"] == "LR_StepBlendedKSampler")
        assert blend["inputs"]["seed"] == job["seed"] and blend["inputs"]["steps"] == 4
        encoded = {n["_meta"]["title"]: n["inputs"]["text"] for n in job["prompt"].values()
                   if n["class_type"] == "CLIPTextEncode"}
        want = job["template"].replace("{}", "sks vase")
        assert encoded["Personalized prompt (with token)"] == want
        assert encoded["Vanilla prompt (no token)"] == job["template"].replace("{}", "vase")
    assert manifest["workflow"] == "layout_retouch_stage1_layout.json"
    stamps = {p: (output / p).stat().st_mtime_ns for j in jobs.values() for p in j["images"]}
    second = run_cli(models, output, COMFYUI)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "4 jobs, 4 already done" in second.stderr + second.stdout
    assert stamps == {p: (output / p).stat().st_mtime_ns for p in stamps}
