"""The ``eval`` command's one entry point: runner outputs and reference photos in, ``eval.json``,
``eval.md`` and the pictures out (the metrics: ``metrics``; the layout: ``report``).

Every input is checked and every model loaded before the first image is embedded, so a wrong
folder fails in seconds. Each part runs over all images with a progress bar and is timed (seconds
per image, reading the files included): DINO, CLIP (image and the prompts' text), Inception,
the subject centres (SAM and DINO on the candidates), ImageReward.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .metrics import identity_scores, inception_score, text_scores
from .models import INCEPTION_URL, load_clip, load_dino, load_image_reward, load_inception
from .pictures import centre_plot, contact_sheet, slug
from .report import AGGREGATION, markdown, summarise
from .runs import EvalInputError, Method, Sample, load_pixels, read_references, read_runs

logger = logging.getLogger(__name__)

SAM_FILES = "sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth or sam_vit_h_4b8939.pth, from facebookresearch/segment-anything"


def _over_images(paths: list[Path], fn: Callable[[list[torch.Tensor]], Any], desc: str, batch_size: int,
                 timings: dict[str, float]) -> list[Any]:
    """``fn`` on the images at ``paths`` in batches, with a progress bar; the seconds per image go
    into ``timings[desc]``; returns each batch's result."""
    from tqdm import tqdm

    out = []
    start = time.perf_counter()
    with tqdm(total=len(paths), desc=desc, unit="image") as bar:
        for first in range(0, len(paths), batch_size):
            chunk = paths[first:first + batch_size]
            out.append(fn([load_pixels(p) for p in chunk]))
            bar.update(len(chunk))
    timings[desc] = (time.perf_counter() - start) / max(1, len(paths))
    return out


def _contact_sheets(methods: list[Method], output: Path) -> list[str]:
    """A sheet per prompt template (rows: methods, columns: seeds); their file names."""
    names = []
    for k, template in enumerate(sorted({s.template for m in methods for s in m.samples})):
        rows = [(m.name, {s.seed: s.path for s in m.samples if s.template == template}) for m in methods]
        seeds = sorted({seed for _, images in rows for seed in images})
        names.append(f"contact_{k:02d}_{slug(template)}.png")
        contact_sheet(template or "(no template)", rows, seeds, output / names[-1])
    return names


def _load_sam(path: Path):
    from ..masks.sam import load_sam

    if not path.is_file():
        raise EvalInputError(f"--sam {path}: no such file; download {SAM_FILES}.")
    try:
        return load_sam(str(path))
    except ValueError as e:
        raise EvalInputError(f"--sam {path}: {e}; give a Segment Anything checkpoint, {SAM_FILES}.") from e


def _inception_scores(methods: list[Method], model, min_images: int,
                      batch_size: int, timings: dict[str, float], absent: dict[str, str]) -> dict[str, dict]:
    """Per method, per prompt: the IS (or None) and why absent."""
    scores: dict[str, dict] = {m.name: {"scores": {}, "absent": {}} for m in methods}
    sets = []
    for method in methods:
        for template in sorted({s.template for s in method.samples}):
            paths = [s.path for s in method.samples if s.template == template]
            if model is None:
                scores[method.name]["scores"][template] = None
            elif len(paths) < min_images:
                scores[method.name]["scores"][template] = None
                scores[method.name]["absent"][template] = (f"{len(paths)} images, fewer than --is-min-images "
                                                           f"{min_images}")
            else:
                sets.append((method.name, template, paths))
    if model is None:
        absent["inception_score"] = f"no --inception weights given (torchvision's inception_v3: {INCEPTION_URL})"
        return scores
    if not sets:
        counts = [[s.template for s in m.samples] for m in methods]
        most = max(templates.count(t) for templates in counts for t in templates)
        absent["inception_score"] = (f"at most {most} images per prompt, fewer than --is-min-images {min_images}: "
                                     f"run more seeds (e.g. --seeds 0-{min_images - 1})")
        return scores
    paths = [p for _, _, group in sets for p in group]
    logits = torch.cat(_over_images(paths, model.logits, "Inception (IS)", batch_size, timings))
    first = 0
    for name, template, group in sets:
        scores[name]["scores"][template] = inception_score(logits[first:first + len(group)])
        first += len(group)
    return scores


@torch.inference_mode()
def evaluate(runs: list[Path], references: Path, dino: Path, clip: Path, output: Path, inception: Path | None = None,
             sam: Path | None = None, image_reward: Path | None = None, image: str | None = None,
             is_min_images: int = 8, device: str | None = None, batch_size: int = 16,
             grid: int = 4) -> dict[str, Any]:
    """Evaluate each runner output folder in ``runs`` (one method each) against the photos in
    ``references``; write ``eval.json``, ``eval.md`` and the pictures into ``output``; return the report.

    Raises:
        EvalInputError: a missing or wrong input, named by its flag, with the fix.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if is_min_images < 2:
        raise EvalInputError(f"--is-min-images {is_min_images}: the Inception Score of one image is always 1; "
                             "give 2 or more (the papers use hundreds).")
    methods = read_runs(runs, image)
    photos = read_references(references)
    dino_model, clip_model = load_dino(dino, device), load_clip(clip, device)
    inception_model = load_inception(inception, device) if inception is not None else None
    sam_model = _load_sam(sam) if sam is not None else None
    reward_model, reward_absent = load_image_reward(image_reward, device)

    samples: list[tuple[Method, Sample]] = [(m, s) for m in methods for s in m.samples]
    paths = [s.path for _, s in samples]
    timings: dict[str, float] = {}
    absent: dict[str, str] = {}
    reference_pixels = [load_pixels(p) for p in photos]
    reference_dino, reference_clip = dino_model.embed(reference_pixels), clip_model.embed(reference_pixels)
    i_dino = identity_scores(torch.cat(_over_images(paths, dino_model.embed, "DINO (I_DINO)", batch_size, timings)),
                             reference_dino)
    start = time.perf_counter()
    texts = sorted({s.prompt for _, s in samples})
    text_embeddings = dict(zip(texts, clip_model.embed_texts(texts), strict=True))
    clip_images = torch.cat(_over_images(paths, clip_model.embed, "CLIP (I_CLIP, T_CLIP)", batch_size, timings))
    timings["CLIP (I_CLIP, T_CLIP)"] = (time.perf_counter() - start) / len(paths)  # with the prompts' texts
    i_clip = identity_scores(clip_images, reference_clip)
    t_clip = text_scores(clip_images, torch.stack([text_embeddings[s.prompt] for _, s in samples]))

    records: dict[str, list[dict]] = {m.name: [] for m in methods}
    for k, (method, sample) in enumerate(samples):
        records[method.name].append({"template": sample.template, "seed": sample.seed, "prompt": sample.prompt,
                                     "path": str(sample.path), "i_dino": float(i_dino[k]),
                                     "i_clip": float(i_clip[k]), "t_clip": float(t_clip[k])})
    flat = [record for method in methods for record in records[method.name]]  # in the order of ``samples``

    if sam_model is None:
        absent["centre_spread"] = f"no --sam checkpoint given: the subject's centre needs Segment Anything ({SAM_FILES})"
    else:
        from .centres import subject_centre

        def centres(batch: list[torch.Tensor]) -> list:
            return [subject_centre(sam_model, dino_model, p, reference_dino, grid, device=device) for p in batch]

        found = [c for chunk in _over_images(paths, centres, "SAM + DINO (centres)", batch_size, timings) for c in chunk]
        for record, (centre, score) in zip(flat, found, strict=True):
            record["centre"] = None if centre is None else list(centre)
            record["centre_identity"] = score

    if reward_model is None:
        absent["image_reward"] = reward_absent
    else:
        from PIL import Image

        prompts = iter([record["prompt"] for record in flat])

        def rewards(batch: list[torch.Tensor]) -> list[float]:
            return [float(reward_model.score(next(prompts), [Image.fromarray(p.numpy())])) for p in batch]

        values = [v for chunk in _over_images(paths, rewards, "ImageReward", batch_size, timings) for v in chunk]
        for record, value in zip(flat, values, strict=True):
            record["image_reward"] = value

    scores = _inception_scores(methods, inception_model, is_min_images, batch_size, timings, absent)

    output.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "version": 1,
        "settings": {"references_folder": str(references), "references": [p.name for p in photos],
                     "dino": str(dino), "clip": str(clip), "inception": None if inception is None else str(inception),
                     "sam": None if sam is None else str(sam), "sam_grid": grid,
                     "image_reward": None if image_reward is None else str(image_reward), "image": image,
                     "is_min_images": is_min_images, "device": device, "aggregation": AGGREGATION},
        "methods": {}, "absent": absent, "seconds_per_image": timings,
        "pictures": {"contact_sheets": _contact_sheets(methods, output), "centres": None},
    }
    for method in methods:
        summary = summarise(records[method.name], scores[method.name]["scores"], scores[method.name]["absent"])
        report["methods"][method.name] = {"folder": str(method.folder), "workflow": method.workflow,
                                          "images": records[method.name], **summary}
    if sam_model is not None:
        panels = [(name, torch.tensor([i["centre"] for i in method["images"] if i.get("centre") is not None],
                                      dtype=torch.float64).reshape(-1, 2), method["means"]["centre_spread"])
                  for name, method in report["methods"].items()]
        report["pictures"]["centres"] = centre_plot(panels, output / "centres.png").name
    (output / "eval.json").write_text(json.dumps(report, indent=1))
    (output / "eval.md").write_text(markdown(report))
    logger.info("eval: %d images of %d methods; %s", len(samples), len(methods), output / "eval.md")
    return report
