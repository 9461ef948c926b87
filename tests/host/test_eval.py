"""The ``eval`` command (issue 16) on runner-shaped folders with tiny random DINO, CLIP, Inception and SAM
models loaded through the users' path (``from_pretrained``, a state dict, the pack's SAM loader):
every number equals its direct computation, the report and pictures are written, bad input is a
clear error. The real runner's output is evaluated end to end in ``e2e/test_eval_runs.py``.

Needs the host only for the CLIP tokenizer files ComfyUI ships (``comfy/sd1_tokenizer``).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import eval_models
import provide_host
import pytest
import torch
from PIL import Image

from comfyui_layout_retouch.evaluation.runs import EvalInputError

TEMPLATES = ["a {} on a beach", "a {} in the snow"]
COMFYUI = provide_host.find()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny model folders and files, as users keep the real ones."""
    if COMFYUI is None:
        pytest.skip(provide_host.describe_search())
    import tiny_models

    root = tmp_path_factory.mktemp("eval_models")
    return {"dino": eval_models.write_tiny_dino(root / "dino-vits16"),
            "clip": eval_models.write_tiny_clip(root / "clip-vit-base-patch32", COMFYUI / "comfy" / "sd1_tokenizer"),
            "inception": eval_models.write_tiny_inception(root / "inception_v3_google.pth"),
            "sam": tiny_models.write_tiny_sam(root / "sams")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_runs")
    eval_models.write_pictures(root / "references", 2, seed=0)
    return {"references": root / "references",
            "plain": eval_models.write_run(root / "plain", TEMPLATES, [3, 4], seed=1,
                                           workflow="layout_retouch_stage1_layout.json"),
            "copies": eval_models.write_run(root / "copies", TEMPLATES, [3, 4], seed=2, same_image=True)}


def pixels(path: Path) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.array(Image.open(path).convert("RGB")))


def test_every_number_is_its_direct_computation(models, runs, tmp_path):
    from comfyui_layout_retouch.evaluation.evaluate import evaluate
    from comfyui_layout_retouch.evaluation.models import load_clip, load_dino, load_inception

    out = tmp_path / "eval"
    report = evaluate([runs["plain"], runs["copies"]], runs["references"], models["dino"], models["clip"], out,
                      inception=models["inception"], sam=models["sam"], is_min_images=2, device="cpu")
    assert list(report["methods"]) == ["plain", "copies"]
    assert report["settings"]["inception"] == str(models["inception"]) and report["settings"]["device"] == "cpu"
    dino, clip, inception = load_dino(models["dino"]), load_clip(models["clip"]), load_inception(models["inception"])
    references = [pixels(p) for p in sorted(runs["references"].glob("*.png"))]
    ref_dino = torch.nn.functional.normalize(dino.embed(references).double(), dim=-1)
    ref_clip = torch.nn.functional.normalize(clip.embed(references).double(), dim=-1)
    for name, method in report["methods"].items():
        manifest = json.loads((runs[name] / "manifest.json").read_text())
        assert len(method["images"]) == 4
        for image in method["images"]:
            job = next(j for j in manifest["jobs"].values() if (j["template"], j["seed"]) ==
                       (image["template"], image["seed"]))
            assert image["path"] == str(runs[name] / job["images"][-1])  # the final image, not the layout
            assert image["prompt"] == image["template"].replace("{}", "red vase")  # the class noun, for CLIP
            picture = [pixels(Path(image["path"]))]
            g_dino = torch.nn.functional.normalize(dino.embed(picture).double(), dim=-1)[0]
            g_clip = torch.nn.functional.normalize(clip.embed(picture).double(), dim=-1)[0]
            text = torch.nn.functional.normalize(clip.embed_texts([image["prompt"]]).double(), dim=-1)[0]
            assert image["i_dino"] == pytest.approx(float((ref_dino @ g_dino).mean()), abs=1e-6)
            assert image["i_clip"] == pytest.approx(float((ref_clip @ g_clip).mean()), abs=1e-6)
            assert image["t_clip"] == pytest.approx(float(text @ g_clip), abs=1e-6)
            assert 0 <= image["centre"][0] <= 1 and 0 <= image["centre"][1] <= 1
        for template, entry in method["prompts"].items():
            mine = [i for i in method["images"] if i["template"] == template]
            assert entry["images"] == 2
            for metric in ("i_dino", "i_clip", "t_clip"):
                assert entry[metric] == pytest.approx(sum(i[metric] for i in mine) / 2)
            log_p = inception.logits([pixels(Path(i["path"])) for i in mine]).double().log_softmax(1)
            kl = (log_p.exp() * (log_p - log_p.exp().mean(0, keepdim=True).log())).sum(1)
            assert entry["inception_score"] == pytest.approx(float(kl.mean().exp()), rel=1e-6)
        for metric in ("i_dino", "i_clip", "t_clip", "inception_score"):
            per_prompt = [e[metric] for e in method["prompts"].values()]
            assert method["means"][metric] == pytest.approx(sum(per_prompt) / len(per_prompt))
        centres = torch.tensor([i["centre"] for i in method["images"]], dtype=torch.float64)
        assert method["means"]["centre_spread"] == pytest.approx(float(centres.var(0, unbiased=False).mean()))
    for entry in report["methods"]["copies"]["prompts"].values():  # one picture twice: no diversity at all
        assert entry["inception_score"] == pytest.approx(1.0, abs=1e-9)
    assert report["methods"]["copies"]["means"]["centre_spread"] == pytest.approx(0.0, abs=1e-12)
    if importlib.util.find_spec("ImageReward") is None:  # the package is not installed here: absent, not an error
        assert report["absent"] == {"image_reward": "the image-reward package is not installed (`pip install "
                                                    "image-reward`)"}
    else:
        assert report["absent"] == {"image_reward": "no --image-reward weights given (THUDM/ImageReward "
                                                    "(ImageReward.pt and med_config.json))"}
    assert json.loads((out / "eval.json").read_text())["methods"]["plain"]["means"] == \
        report["methods"]["plain"]["means"]
    table = (out / "eval.md").read_text()
    up, sigma = "\N{UPWARDS ARROW}", "\N{GREEK SMALL LETTER SIGMA}"  # (the source stays cp1252: comfy-test's lint)
    assert (f"| method | I_DINO {up} | I_CLIP {up} | T_CLIP {up} | IS {up} | centre {sigma}² {up} | ImageReward {up} "
            "| images |") in table
    plain = report["methods"]["plain"]["means"]
    assert f"| plain | {plain['i_dino']:.3f} | {plain['i_clip']:.3f} | {plain['t_clip']:.3f} |" in table
    assert report["pictures"]["contact_sheets"] == ["contact_00_a_in_the_snow.png", "contact_01_a_on_a_beach.png"]
    for name in [*report["pictures"]["contact_sheets"], "centres.png"]:
        assert Image.open(out / name).size[0] > 2 * 64  # a label column and two seeds at least
    assert set(report["seconds_per_image"]) == {"DINO (I_DINO)", "CLIP (I_CLIP, T_CLIP)", "SAM + DINO (centres)",
                                                "Inception (IS)"}


def test_the_contact_sheet_puts_each_method_and_seed_in_its_cell(models, runs, tmp_path):
    from comfyui_layout_retouch.evaluation.evaluate import evaluate

    out = tmp_path / "eval"
    report = evaluate([runs["plain"], runs["copies"]], runs["references"], models["dino"], models["clip"], out,
                      device="cpu")
    assert report["absent"]["inception_score"].startswith("no --inception weights given (torchvision's inception_v3")
    sheet = pixels(out / "contact_01_a_on_a_beach.png").numpy()
    from comfyui_layout_retouch.evaluation.pictures import HEADER, LABEL

    manifest = json.loads((runs["copies"] / "manifest.json").read_text())
    job = next(j for j in manifest["jobs"].values() if (j["template"], j["seed"]) == ("a {} on a beach", 4))
    cell = sheet[2 * HEADER + 64:2 * HEADER + 128, LABEL + 64:LABEL + 128]  # row 2 (copies), column 2 (seed 4)
    assert (cell == pixels(runs["copies"] / job["images"][-1]).numpy()).all()


def test_what_cannot_be_computed_is_absent_with_its_reason(models, runs, tmp_path):
    from comfyui_layout_retouch.evaluation.evaluate import evaluate

    out = tmp_path / "eval"
    report = evaluate([runs["plain"]], runs["references"], models["dino"], models["clip"], out,
                      inception=models["inception"], device="cpu")  # 2 images a prompt, 8 wanted; no SAM
    means = report["methods"]["plain"]["means"]
    assert means["inception_score"] is None and means["centre_spread"] is None and means["image_reward"] is None
    assert "at most 2 images per prompt, fewer than --is-min-images 8" in report["absent"]["inception_score"]
    assert report["methods"]["plain"]["prompts"]["a {} on a beach"]["inception_score_absent"] == \
        "2 images, fewer than --is-min-images 8"
    assert "no --sam checkpoint given" in report["absent"]["centre_spread"]
    assert "image-reward" in report["absent"]["image_reward"]
    table = (out / "eval.md").read_text()
    assert "| — | — | — | 4 |" in table and "- IS: at most 2 images per prompt" in table
    assert not (out / "centres.png").exists() and report["pictures"]["centres"] is None


def test_the_layout_image_on_request(models, runs, tmp_path):
    from comfyui_layout_retouch.evaluation.runs import read_run

    method = read_run(runs["copies"], image="layout")
    assert all(s.path.name == "layout_00001_.png" for s in method.samples)
    with pytest.raises(EvalInputError, match=r"--image mask: .* saved no image with that prefix .*'final', 'layout'"):
        read_run(runs["copies"], image="mask")


def cli(*args: str):
    from comfyui_layout_retouch.headless.cli import main

    return main(["eval", *args])


def test_bad_input_is_a_clear_error(models, runs, tmp_path):
    good = ["--references", str(runs["references"]), "--dino", str(models["dino"]), "--clip", str(models["clip"]),
            "--output", str(tmp_path / "eval")]
    with pytest.raises(SystemExit, match=r"RUN_DIR .*nowhere: no manifest.json in it\. Give the --output folder"):
        cli(str(tmp_path / "nowhere"), *good)
    refs = ["--references", str(tmp_path / "no_photos")]
    with pytest.raises(SystemExit, match=r"--references .*no_photos: no such folder"):
        cli(str(runs["plain"]), *good, *refs)
    (tmp_path / "no_photos").mkdir()
    with pytest.raises(SystemExit, match=r"--references .*no_photos: no image"):
        cli(str(runs["plain"]), *good, *refs)
    with pytest.raises(SystemExit, match=r"--dino .*clip-vit-base-patch32: .*config.json is a 'clip' model, not "
                                         r"DINO ViT-S/16 \('vit'\)\. Give --dino the folder of facebook/dino-vits16"):
        cli(str(runs["plain"]), *good, "--dino", str(models["clip"]))
    with pytest.raises(SystemExit, match=r"--clip .*dino-vits16: .*a 'vit' model, not CLIP ViT-B/32"):
        cli(str(runs["plain"]), *good, "--clip", str(models["dino"]))
    with pytest.raises(SystemExit, match=r"--dino .*missing: no such folder.*huggingface-cli download "
                                         r"facebook/dino-vits16"):
        cli(str(runs["plain"]), *good, "--dino", str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match=r"--inception .*: not torchvision's inception_v3 weights .*download "
                                         r"torchvision's weights, https://download.pytorch.org"):
        cli(str(runs["plain"]), *good, "--inception", str(models["sam"]))
    with pytest.raises(SystemExit, match=r"--sam .*inception_v3_google.pth: this is not a Segment Anything"):
        cli(str(runs["plain"]), *good, "--sam", str(models["inception"]))
    with pytest.raises(SystemExit, match=r"--is-min-images 1: .*give 2 or more"):
        cli(str(runs["plain"]), *good, "--is-min-images", "1")


def test_images_of_mixed_sizes_are_refused(runs, tmp_path):
    from comfyui_layout_retouch.evaluation.runs import read_runs

    big = eval_models.write_run(tmp_path / "big", TEMPLATES, [3], seed=5, size=(96, 64))
    with pytest.raises(EvalInputError, match=r"images of mixed sizes: .* is 64x64 but .*big.* is 96x64\. Run every "
                                             r"method at one width and height"):
        read_runs([runs["plain"], big])
    broken = tmp_path / "broken"
    shutil.copytree(runs["plain"], broken)
    job = next(iter(json.loads((broken / "manifest.json").read_text())["jobs"].values()))
    (broken / job["images"][-1]).unlink()
    with pytest.raises(EvalInputError, match=r"is listed in the manifest but missing; rerun the runner"):
        read_runs([broken])
    with pytest.raises(EvalInputError, match="two folders give one method name"):
        read_runs([runs["plain"], runs["plain"]])
