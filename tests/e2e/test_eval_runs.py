"""Issue 16 end to end through the command line: ``run --method plain`` and ``run --method layout-retouch``
write 2 prompts x 2 seeds each with the tiny models, ``eval`` writes eval.json, the table and the pictures,
and a second ``eval`` gives the same numbers (the command line's ``main`` in this process: ``run_here``);
and ``eval`` as the README writes it, in a fresh interpreter (marked ``install``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import comfy_host
import eval_models
import numpy as np
import pytest
from PIL import Image

PACK_ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ("a {} on a beach", "a {} in the snow")
SMALL = ["Vanilla model (plain SD 1.5).ckpt_name=tiny_vanilla.safetensors",
         "Personalized model (DreamBooth).ckpt_name=tiny_personalized.safetensors",
         "EmptyLatentImage.width=64", "EmptyLatentImage.height=64", "LR_StepBlendedKSampler.steps=4"]
RETOUCH_SMALL = ["LR_StepBlendedKSampler.lambda1=1", "ImageScale.width=64", "ImageScale.height=64",
                 "KSamplerAdvanced.steps=4", "LR_DDIMInversion.steps=4", "LR_MultiSourceAttentionSwap.lambda2=2",
                 "LR_MultiSourceAttentionSwap.mask_start=3", "LR_CrossAttentionMask.steps_to_average=2",
                 "LR_SAMLoader.sam_name=tiny_sam.pth"]


def run_method(run_here, method: str, models: Path, output: Path, extra: list[str]) -> None:
    args = ["run", "--method", method, "--seeds", "3,4", "--subject", "sks vase", "--models", str(models),
            "--output", str(output), "--cpu", *extra]
    for prompt in PROMPTS:
        args += ["--prompt", prompt]
    assert run_here(args) == 0


def eval_models_in(root: Path) -> tuple[Path, Path]:
    """Tiny DINO and CLIP folders (the CLIP with the tokenizer ComfyUI ships for SD1.x, which is CLIP's)."""
    dino = eval_models.write_tiny_dino(root / "dino-vits16")
    clip = eval_models.write_tiny_clip(root / "clip-vit-base-patch32", comfy_host.COMFYUI / "comfy" / "sd1_tokenizer")
    return dino, clip


def test_run_two_methods_then_eval_twice(run_here, tiny_files, tiny_sam, tmp_path, capsys, measured):
    from comfyui_layout_retouch.evaluation.report import numbers

    models = tiny_files["tiny_vanilla"].parent.parent
    references = tmp_path / "references"
    eval_models.write_pictures(references, 2, seed=0, size=(80, 96))
    sets = [arg for item in SMALL for arg in ("--set", item)]
    run_method(run_here, "plain", models, tmp_path / "plain", sets)
    retouch = [arg for item in SMALL + RETOUCH_SMALL for arg in ("--set", item)]
    run_method(run_here, "layout-retouch", models, tmp_path / "layout-retouch",
               [*retouch, "--reference", str(references / "ref_0.png")])
    plain = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert plain["workflow"] == "layout_retouch_stage1_layout.json"
    for job in plain["jobs"].values():  # --method plain: the personalized model alone
        blend = next(n for n in job["prompt"].values() if n["class_type"] == "LR_StepBlendedKSampler")
        assert blend["inputs"]["lambda1"] == 0 and blend["inputs"]["steps"] == 4
    retouched = json.loads((tmp_path / "layout-retouch" / "manifest.json").read_text())
    assert retouched["workflow"] == "layout_retouch_full_dreambooth.json"
    assert all(len(job["images"]) == 2 for job in retouched["jobs"].values())  # layout and final

    root = tmp_path / "models"
    dino, clip = eval_models_in(root)
    inception = eval_models.write_tiny_inception(root / "inception_v3_google.pth")
    reports = []
    for output in ("eval_1", "eval_2"):
        capsys.readouterr()
        assert run_here(["eval", str(tmp_path / "plain"), str(tmp_path / "layout-retouch"), "--references",
                         str(references), "--dino", str(dino), "--clip", str(clip), "--inception", str(inception),
                         "--sam", str(tiny_sam), "--is-min-images", "2", "--output", str(tmp_path / output),
                         "--device", "cpu"]) == 0
        done = capsys.readouterr()
        assert "DINO (I_DINO): 100%" in done.err  # the progress bars
        reports.append(json.loads((tmp_path / output / "eval.json").read_text()))
    first, second = reports
    assert numbers(first) == numbers(second)  # every value, per image and aggregated, identical
    assert list(first["methods"]) == ["plain", "layout-retouch"]
    for name, method in first["methods"].items():
        assert [(i["template"], i["seed"]) for i in method["images"]] == [
            (t, s) for t in sorted(PROMPTS) for s in (3, 4)]
        assert {i["prompt"] for i in method["images"]} == {"a vase on a beach", "a vase in the snow"}
        means = method["means"]
        assert means["images"] == 4 and means["prompts"] == 2 and means["centres"] == 4
        for key in ("i_dino", "i_clip", "t_clip", "inception_score", "centre_spread"):
            assert isinstance(means[key], float), (name, key)
    assert all(Path(i["path"]).name.startswith("final_") for i in first["methods"]["layout-retouch"]["images"])
    table = (tmp_path / "eval_1" / "eval.md").read_text()
    for name, method in first["methods"].items():
        m = method["means"]
        assert (f"| {name} | {m['i_dino']:.3f} | {m['i_clip']:.3f} | {m['t_clip']:.3f} | "
                f"{m['inception_score']:.3f} | {m['centre_spread']:.4f} | — | 4 |") in table
    pictures = [*first["pictures"]["contact_sheets"], first["pictures"]["centres"]]
    assert pictures == ["contact_00_a_in_the_snow.png", "contact_01_a_on_a_beach.png", "centres.png"]
    for name in pictures:
        one, two = (np.asarray(Image.open(tmp_path / out / name)) for out in ("eval_1", "eval_2"))
        assert one.shape[0] > 64 and (one == two).all()
    timings = ", ".join(f"{part} {seconds:.3f} s" for part, seconds in first["seconds_per_image"].items())
    measured(f"eval per image on this CPU, tiny models, 64x64 images: {timings}")
    measured("eval table:\n" + table[table.index("| method"):table.index("\n\n", table.index("| method"))])


@pytest.mark.install
def test_the_eval_command_as_the_readme_writes_it(tmp_path):
    """``python <pack> eval ...`` in a fresh interpreter, where the README runs it (no ComfyUI needed): a
    runner-shaped folder of two prompts, its report and table."""
    run = eval_models.write_run(tmp_path / "plain", ["a {} on a beach", "a {} in the snow"], [3], seed=1)
    references = tmp_path / "references"
    eval_models.write_pictures(references, 2, seed=0)
    dino, clip = eval_models_in(tmp_path / "models")
    env = {k: v for k, v in comfy_host.fresh_environment().items() if k != "COMFYUI_PATH"}
    done = subprocess.run([sys.executable, str(PACK_ROOT), "eval", str(run), "--references", str(references),
                           "--dino", str(dino), "--clip", str(clip), "--output", str(tmp_path / "eval"), "--device",
                           "cpu"], capture_output=True, text=True, env=env, timeout=600, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    means = report["methods"]["plain"]["means"]
    assert means["images"] == 2 and all(isinstance(means[k], float) for k in ("i_dino", "i_clip", "t_clip"))
    assert "| plain |" in (tmp_path / "eval" / "eval.md").read_text()
