"""The evaluation's report: per-image values aggregated per prompt and per method, ``eval.json`` and
the markdown table in the papers' layout (L&R Table 1, P&D Table 1: methods as rows, metrics as
columns, three decimals).

Aggregation (the papers': 8 images per subject and prompt, averaged): per prompt, the mean over
its images; per method, the mean over prompts of those means (:func:`metrics.mean_of_means`). The
Inception Score is per prompt (one image set, L&R Fig. 4a); a method's IS is the mean over the
prompts that have enough images. The centre spread is over all of a method's centres (L&R Fig. 1
pools its 31 prompts). A metric that cannot be computed is ``null`` with its reason in ``absent``,
never an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .metrics import centre_spread, mean_of_means

PER_IMAGE = ("i_dino", "i_clip", "t_clip", "image_reward")
COLUMNS = (("i_dino", "I_DINO"), ("i_clip", "I_CLIP"), ("t_clip", "T_CLIP"), ("inception_score", "IS"),
           ("centre_spread", "centre \N{GREEK SMALL LETTER SIGMA}²"), ("image_reward", "ImageReward"))
AGGREGATION = ("per prompt: the mean over its images; per method: the mean over prompts of those means (IS: over "
               "the prompts with enough images; centre spread: over all the method's centres)")


def summarise(images: Sequence[Mapping[str, Any]], inception: Mapping[str, float | None],
              inception_absent: Mapping[str, str]) -> dict[str, Any]:
    """A method's ``prompts`` and ``means`` from its per-image records (``template``, the
    :data:`PER_IMAGE` values, ``centre``) and its per-prompt Inception Scores (None where absent,
    with the reason in ``inception_absent``)."""
    templates = sorted({image["template"] for image in images})
    prompts: dict[str, dict[str, Any]] = {}
    for template in templates:
        mine = [image for image in images if image["template"] == template]
        entry: dict[str, Any] = {"images": len(mine)}
        for metric in PER_IMAGE:
            values = [image[metric] for image in mine if image.get(metric) is not None]
            entry[metric] = sum(values) / len(values) if values else None
        entry["inception_score"] = inception.get(template)
        if template in inception_absent:
            entry["inception_score_absent"] = inception_absent[template]
        prompts[template] = entry
    means: dict[str, Any] = {"images": len(images), "prompts": len(templates)}
    for metric in PER_IMAGE:
        per_prompt = {t: [i[metric] for i in images if i["template"] == t and i.get(metric) is not None]
                      for t in templates}
        means[metric] = mean_of_means(per_prompt) if any(per_prompt.values()) else None
    scores = [v for v in inception.values() if v is not None]
    means["inception_score"] = sum(scores) / len(scores) if scores else None
    centres = [image["centre"] for image in images if image.get("centre") is not None]
    means["centres"] = len(centres)
    means["centre_spread"] = centre_spread(torch.tensor(centres, dtype=torch.float64)) if len(centres) >= 2 else None
    return {"prompts": prompts, "means": means}


def numbers(report: Mapping[str, Any]) -> dict[str, Any]:
    """What two evaluations of the same images must share: every metric value, per image and
    aggregated (no timings, no paths of this run)."""
    return {name: {"images": [{k: v for k, v in image.items() if k != "path"} for image in method["images"]],
                   "prompts": method["prompts"], "means": method["means"]}
            for name, method in report["methods"].items()}


def _cell(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def table(report: Mapping[str, Any]) -> str:
    """The main table: a row per method, a column per metric (the upward arrow: higher is better)."""
    lines = ["| method | " + " | ".join(f"{label} \N{UPWARDS ARROW}" for _, label in COLUMNS) + " | images |",
             "|---|" + "---:|" * (len(COLUMNS) + 1)]
    for name, method in report["methods"].items():
        means = method["means"]
        cells = [_cell(means.get(key), 4 if key == "centre_spread" else 3) for key, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {means['images']} |")
    return "\n".join(lines)


def markdown(report: Mapping[str, Any]) -> str:
    """The report as markdown: the table, why a column is empty, per prompt, pictures, timings."""
    settings = report["settings"]
    out = ["# Evaluation", "",
           f"{len(report['methods'])} methods, {len(settings['references'])} reference photos "
           f"(`{settings['references_folder']}`), DINO `{settings['dino']}`, CLIP `{settings['clip']}`. "
           f"Cosine similarities; {AGGREGATION}.", "", table(report), ""]
    if report["absent"]:
        out += ["Absent (—):", ""] + [f"- {label}: {report['absent'][key]}" for key, label in COLUMNS
                                      if key in report["absent"]] + [""]
    out += ["## Per prompt", "", "| prompt | method | images | I_DINO | I_CLIP | T_CLIP | IS |",
            "|---|---|---:|---:|---:|---:|---:|"]
    templates = sorted({t for method in report["methods"].values() for t in method["prompts"]})
    for template in templates:
        for name, method in report["methods"].items():
            entry = method["prompts"].get(template)
            if entry is not None:
                cells = [_cell(entry.get(k)) for k in ("i_dino", "i_clip", "t_clip", "inception_score")]
                out.append(f"| {template} | {name} | {entry['images']} | " + " | ".join(cells) + " |")
    pictures = report["pictures"]
    out += ["", "## Pictures", ""] + [f"- `{p}`" for p in pictures["contact_sheets"]]
    why = report["absent"].get("centre_spread", "no centres")
    out += [f"- `{pictures['centres']}`" if pictures["centres"] else f"- no centre plot: {why}"]
    out += ["", f"## Time per image ({settings['device']})", "", "| part | seconds per image |", "|---|---:|"]
    out += [f"| {part} | {seconds:.3f} |" for part, seconds in report["seconds_per_image"].items()]
    return "\n".join(out) + "\n"
