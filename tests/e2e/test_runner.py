"""The headless runner: 2 prompts x 2 seeds, a manifest, a resumed run; batches (``--batch``) whose images
equal their single runs; and the command as the README writes it, in a fresh interpreter.

The checks of what runs go through the command line's ``main`` in this process, on the host the session
has loaded (``start_host``, which imports the host in a fresh interpreter, is replaced by the registration
of the models folder it does). One test runs the real command in a fresh interpreter, without
``COMFYUI_PATH`` where the pack is installed in the host's ``custom_nodes/`` (marked ``install``: CI's
second pass runs it there).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import comfy_host
import numpy as np
import pytest
from PIL import Image

PACK_ROOT = Path(__file__).resolve().parents[2]
SMALL = ["Vanilla model (plain SD 1.5).ckpt_name=tiny_vanilla.safetensors",
         "Personalized model (DreamBooth).ckpt_name=tiny_personalized.safetensors",
         "EmptyLatentImage.width=64", "EmptyLatentImage.height=64",
         "LR_StepBlendedKSampler.steps=4", "LR_StepBlendedKSampler.lambda1=1"]


RETOUCH_SMALL = ["ImageScale.width=64", "ImageScale.height=64", "KSamplerAdvanced.steps=4",
                 "LR_DDIMInversion.steps=4", "LR_MultiSourceAttentionSwap.lambda2=2",
                 "LR_MultiSourceAttentionSwap.mask_start=3", "LR_CrossAttentionMask.steps_to_average=2",
                 "LR_SAMLoader.sam_name=tiny_sam.pth"]


def arguments(models: Path, output: Path, workflow: str | None = "layout_retouch_stage1_layout.json",
              prompts: tuple[str, ...] = ("a {} on a beach", "a {} in the snow"), seeds: str = "3,4",
              extra: tuple[str, ...] = (), small: list[str] = SMALL) -> list[str]:
    """The runner's command line (after ``python <pack>``)."""
    args = ["run", *([str(PACK_ROOT / "workflows" / workflow)] if workflow else []), "--seeds", seeds,
            "--subject", "sks vase", "--models", str(models), "--output", str(output), "--cpu", *extra]
    for prompt in prompts:
        args += ["--prompt", prompt]
    for item in small:
        args += ["--set", item]
    return args


def models_of(tiny_files) -> Path:
    return tiny_files["tiny_vanilla"].parent.parent


def test_runner_two_prompts_two_seeds_and_resume(run_here, tiny_files, tmp_path, caplog):
    output = tmp_path / "out"
    assert run_here(arguments(models_of(tiny_files), output)) == 0
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
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert run_here(arguments(models_of(tiny_files), output)) == 0
    assert "4 jobs, 4 already done" in caplog.text
    assert stamps == {p: (output / p).stat().st_mtime_ns for p in stamps}


def pixels(output: Path, job: dict) -> list[np.ndarray]:
    """The job's images, ordered by their SaveImage prefix (``layout``, ``final``)."""
    paths = sorted(job["images"], key=lambda p: Path(p).name.rsplit("_", 2)[0])
    return [np.asarray(Image.open(output / p), dtype=np.int16) for p in paths]


@pytest.mark.parametrize("workflow", ["layout_retouch_stage1_layout.json", "layout_retouch_full_dreambooth.json"])
def test_batch_images_equal_their_single_runs(run_here, tiny_files, tmp_path, workflow, measured):
    models = models_of(tiny_files)
    small, extra = SMALL, ()
    if "full" in workflow:
        reference = tmp_path / "reference.png"
        gen = np.random.default_rng(0)
        Image.fromarray(gen.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(reference)
        small, extra = SMALL + RETOUCH_SMALL, ("--reference", str(reference))
    prompts = ("a {} on a beach",)
    assert run_here(arguments(models, tmp_path / "single", workflow, prompts, "5,6", extra, small)) == 0
    assert run_here(arguments(models, tmp_path / "batched", workflow, prompts, "5,6", (*extra, "--batch", "2"),
                              small)) == 0
    singles = json.loads((tmp_path / "single" / "manifest.json").read_text())["jobs"]
    jobs = json.loads((tmp_path / "batched" / "manifest.json").read_text())["jobs"]
    assert singles.keys() == jobs.keys() and len(jobs) == 2  # the same jobs: a batch resumes a single run
    saved = 2 if "full" in workflow else 1
    worst = 0
    for key, job in jobs.items():
        assert job["batch"] == {"seeds": [5, 6], "index": [5, 6].index(job["seed"])}
        blend = next(n for n in job["prompt"].values() if n["class_type"] == "LR_StepBlendedKSampler")
        assert blend["inputs"]["batch_seeds"] == "5,6"
        latent = next(n for n in job["prompt"].values() if n["class_type"] == "EmptyLatentImage")
        assert latent["inputs"]["batch_size"] == 2
        ours, theirs = pixels(tmp_path / "batched", job), pixels(tmp_path / "single", singles[key])
        assert len(ours) == len(theirs) == saved
        for a, b in zip(ours, theirs, strict=True):
            assert a.shape == b.shape == (64, 64, 3)
            worst = max(worst, int(np.abs(a - b).max()))
    assert worst <= 1, f"a batched image differs from its single run by {worst}/255"
    images = [p for job in jobs.values() for p in job["images"]]
    assert len(set(images)) == 2 * saved  # every image listed, none twice
    a, b = (pixels(tmp_path / "batched", job)[0] for job in jobs.values())
    assert np.abs(a - b).max() > 0  # two seeds, two images
    measured(f"runner --batch 2, {workflow}: max |batched - single| = {worst}/255 over {2 * saved} images")


def test_a_failed_job_is_in_the_manifest_and_exits_1(run_here, tiny_files, tmp_path):
    """In this process as over servers (issue 35): a job ComfyUI refuses fails with its message in the manifest,
    the run goes on to the next job, and exits 1."""
    output = tmp_path / "out"
    assert run_here(arguments(models_of(tiny_files), output, prompts=("a {} on a beach",),
                              small=[*SMALL[1:], "Vanilla model (plain SD 1.5).ckpt_name=no_such_model.ckpt"])) == 1
    jobs = json.loads((output / "manifest.json").read_text())["jobs"]
    assert len(jobs) == 2  # both tried
    for job in jobs.values():
        assert job["images"] == [] and "ComfyUI rejected the prompt" in job["error"] and "no_such_model.ckpt" in \
            job["error"]


def test_a_batch_the_graph_cannot_take_is_refused_before_any_job(run_here, tiny_files, tmp_path, capsys):
    """Noise added by the retouch sampler would make a batch's images differ from their single runs: refused before
    anything runs, as over servers (tests/unit/test_headless_faults.py), exit 1, the manifest says why."""
    output = tmp_path / "out"
    args = arguments(models_of(tiny_files), output, "layout_retouch_full_dreambooth.json", ("a {} on a beach",),
                     "5,6", ("--batch", "2"), SMALL + RETOUCH_SMALL + ["KSamplerAdvanced.add_noise=enable"])
    assert run_here(args) == 1
    assert "run: --batch: node 'KSampler (Advanced)" in capsys.readouterr().err
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["jobs"] == {} and "draws one noise for the whole batch" in manifest["refused"]
    assert [p.name for p in output.iterdir()] == ["manifest.json"]


@pytest.mark.install
def test_the_run_command_as_the_readme_writes_it(comfy, tiny_files, tmp_path):
    """``python <pack> run --method plain ...`` in a fresh interpreter: it finds the host, loads ComfyUI and
    the pack, and runs a shipped workflow end to end."""
    output = tmp_path / "out"
    args = arguments(models_of(tiny_files), output, None, ("a {} on a beach",), "7",
                     ("--method", "plain"), SMALL[:-1])
    done = subprocess.run([sys.executable, str(PACK_ROOT), *args], capture_output=True, text=True,
                          env=comfy_host.fresh_environment(), timeout=600, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    (job,) = json.loads((output / "manifest.json").read_text())["jobs"].values()
    assert job["seed"] == 7 and len(job["images"]) == 1
    image = np.asarray(Image.open(output / job["images"][0]))
    assert image.shape == (64, 64, 3) and image.std() > 0
    assert "ran 1 of 1 jobs" in done.stderr
