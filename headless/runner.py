"""The headless batch runner: a workflow over prompts and seeds, through ComfyUI's own executor.

Jobs are the product of prompt templates and seeds. Each job edits the converted prompt by node
title (the contract of the shipped workflows, also usable in a user's own):

| title starts with | input set (``value`` of a primitive, else ``text``) | value |
|---|---|---|
| ``Personalized prompt`` | ``value`` / ``text`` | the template with ``{}`` = the subject (e.g. ``sks vase``) |
| ``Vanilla prompt`` | ``value`` / ``text`` | the template with ``{}`` = the class name (e.g. ``red vase``) |
| ``Reference prompt`` | ``value`` / ``text`` | ``a photo of {subject}`` |
| ``Subject word`` | ``value`` / ``text`` | the subject word(s) for the cross-attention mask |
| ``Reference photo`` | ``image`` | the reference image (copied into ComfyUI's input folder) |

Every ``seed``/``noise_seed`` input gets the job's seed; every SaveImage writes under the job's
folder. A ``manifest.json`` in the output folder records exactly what ran; a job whose images
are all there is skipped, so an interrupted batch resumes where it stopped.

Batches (``batch > 1``, for throughput on a GPU): up to ``batch`` jobs of one template and one
set of overrides run as one graph execution. The latent source (every ``batch_size`` input, e.g.
Empty Latent Image) is set to the number of jobs and every sampler that takes per-image seeds
(``batch_seeds``, the Step-Blended KSampler) gets the jobs' seeds, so latent ``k`` starts from
the noise its own seed gives a single run: each image equals its single run up to float
rounding (batched matrix products round differently). A sampler that draws one noise for the
whole batch (a stock KSampler, a KSamplerAdvanced with noise added) would break that, so such a
graph is refused; a KSamplerAdvanced with ``add_noise`` disabled draws nothing and is fine.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Subject:
    """How the ``{}`` of a prompt template is filled."""

    personalized: str = "sks vase"  # fills {} in the personalized prompt
    vanilla: str = "vase"  # fills {} in the vanilla prompt
    word: str = "vase"  # located in the personalized prompt for the cross-attention mask


@dataclass(frozen=True)
class Job:
    template: str
    seed: int
    overrides: tuple[tuple[str, str, Any], ...] = ()

    @property
    def key(self) -> str:
        text = json.dumps([self.template, self.seed, self.overrides], sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass
class JobRecord:
    key: str
    template: str
    seed: int
    texts: dict[str, str]
    images: list[str] = field(default_factory=list)
    seconds: float = 0.0


def fill(template: str, value: str) -> str:
    return template.replace("{}", value) if "{}" in template else template


class BatchError(ValueError):
    """The workflow cannot run a batch whose images equal their single runs."""


def apply_batch(prompt: dict, seeds: list[int], per_image_seed_classes: set[str]) -> None:
    """Edit ``prompt`` (already edited by :func:`apply_job`) in place to run ``seeds`` as one batch.

    ``per_image_seed_classes``: the node classes that take a ``batch_seeds`` input.
    """
    sources = [n for n in prompt.values() if isinstance(n["inputs"].get("batch_size"), int)]
    if not sources:
        raise BatchError("--batch: the workflow has no latent source with a batch_size (an Empty Latent Image).")
    for node in sources:
        node["inputs"]["batch_size"] = len(seeds)
    for node in prompt.values():
        inputs, title = node["inputs"], node.get("_meta", {}).get("title", node["class_type"])
        if node["class_type"] in per_image_seed_classes:
            inputs["batch_seeds"] = ",".join(str(s) for s in seeds)
            sampler = str(inputs.get("sampler_name", ""))
            if "ancestral" in sampler or "sde" in sampler:
                logger.warning("--batch: '%s' samples with %s, which draws its per-step noise for the whole batch: "
                               "the images will differ from their single runs", title, sampler)
        elif any(isinstance(inputs.get(name), int) for name in ("seed", "noise_seed")) and \
                inputs.get("add_noise") != "disable":
            raise BatchError(f"--batch: node '{title}' ({node['class_type']}) draws one noise for the whole batch "
                             "from its seed, so the batch's images would not equal their single runs. Run without "
                             "--batch, or use the Step-Blended KSampler (or a KSamplerAdvanced with add_noise "
                             "disabled) there.")


def apply_job(prompt: dict, job: Job, subject: Subject, reference: str | None, prefix: str) -> dict[str, str]:
    """Edit ``prompt`` in place for ``job``; return the texts that were set, by node title."""
    values = {
        "Personalized prompt": fill(job.template, subject.personalized),
        "Vanilla prompt": fill(job.template, subject.vanilla),
        "Reference prompt": f"a photo of {subject.personalized}",
        "Subject word": subject.word,
    }
    texts = {}
    for node in prompt.values():
        title, inputs = node.get("_meta", {}).get("title", ""), node["inputs"]
        for start, value in values.items():
            field_name = "value" if "value" in inputs else "text"  # a primitive, or a CLIPTextEncode
            if title.startswith(start) and isinstance(inputs.get(field_name), str):
                inputs[field_name] = texts[title] = value
        if title.startswith("Reference photo") and reference is not None:
            inputs["image"] = reference
        for name in ("seed", "noise_seed"):
            if name in inputs and not isinstance(inputs[name], list):
                inputs[name] = job.seed
        if node["class_type"] == "SaveImage":
            inputs["filename_prefix"] = f"{prefix}/{Path(str(inputs['filename_prefix'])).name}"
    for title, name, value in job.overrides:
        targets = [n for n in prompt.values() if n.get("_meta", {}).get("title") == title or n["class_type"] == title]
        if not targets:
            raise KeyError(f"no node titled '{title}' for --set")
        for node in targets:
            node["inputs"][name] = value
    return texts


def write_manifest(output: Path, manifest: dict) -> None:
    """Write ``manifest.json`` whole or not at all (a temporary file, then renamed): an interrupted run keeps the
    last complete one."""
    temporary = output / f".{MANIFEST}.tmp"
    temporary.write_text(json.dumps(manifest, indent=1, default=str))
    os.replace(temporary, output / MANIFEST)


def load_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {"jobs": {}}


def batches(jobs: list[Job], size: int) -> list[list[Job]]:
    """Consecutive runs of up to ``size`` jobs that share a template and overrides (in job order)."""
    out: list[list[Job]] = []
    for job in jobs:
        last = out[-1] if out else None
        if last and len(last) < size and (last[0].template, last[0].overrides) == (job.template, job.overrides):
            last.append(job)
        else:
            out.append([job])
    return out


def reference_name(reference: Path) -> str:
    """The name the reference photo takes in ComfyUI's input folder (by its content: one file per photo)."""
    return f"lr_reference_{hashlib.sha1(reference.read_bytes()).hexdigest()[:10]}{reference.suffix}"


def run_batch(workflow: dict, jobs: list[Job], subject: Subject, output: Path, reference: Path | None = None,
              workflow_name: str = "workflow", batch: int = 1) -> list[JobRecord]:
    """Run every job not already done; return the records of the jobs run now.

    ``batch``: up to this many jobs of one template run as one graph execution (see the module's docstring).
    """
    import comfy.utils
    import folder_paths
    from tqdm import tqdm

    import nodes

    from .. import host_api
    from .executor import _Server
    from .ui_format import ui_to_prompt

    output.mkdir(parents=True, exist_ok=True)
    folder_paths.set_output_directory(str(output))
    ref_name = None
    if reference is not None:
        ref_name = reference_name(reference)
        shutil.copy(reference, Path(folder_paths.get_input_directory()) / ref_name)
    base = workflow if "nodes" not in workflow else ui_to_prompt(workflow, nodes.NODE_CLASS_MAPPINGS)
    manifest = load_manifest(output)
    manifest.update(workflow=workflow_name, subject=asdict(subject), reference=str(reference) if reference else None)
    executor = host_api.prompt_executor(_Server())  # classic cache: models load once
    done = []
    pending = [j for j in jobs if not _finished(manifest["jobs"].get(j.key), output)]
    logger.info("%d jobs, %d already done", len(jobs), len(jobs) - len(pending))
    previous_disabled = comfy.utils.PROGRESS_BAR_ENABLED
    comfy.utils.PROGRESS_BAR_ENABLED = False  # one bar over the jobs, not one per sampler
    per_image_seeds = {kind for kind in {n["class_type"] for n in base.values()}
                       if "batch_seeds" in nodes.NODE_CLASS_MAPPINGS[kind].INPUT_TYPES().get("optional", {})}
    try:
        with tqdm(total=len(pending), desc="layout-retouch", unit="image") as bar:
            for group in batches(pending, max(1, batch)):
                done += _run_group(group, base, subject, ref_name, executor, per_image_seeds, manifest, output)
                bar.update(len(group))
    finally:
        comfy.utils.PROGRESS_BAR_ENABLED = previous_disabled
    return done


def _run_group(group: list[Job], base: dict, subject: Subject, ref_name: str | None, executor,
               per_image_seeds: set[str], manifest: dict, output: Path) -> list[JobRecord]:
    """Run ``group`` (one job, or a batch of one template) as one execution; record it in the manifest."""
    from .executor import execute

    prompt, texts = group_prompt(base, group, subject, ref_name, per_image_seeds)
    start = time.perf_counter()
    outputs = execute(prompt, executor)
    seconds = round((time.perf_counter() - start) / len(group), 2)
    saved = [[str(Path(i["subfolder"]) / i["filename"]) for i in outputs[node_id].get("images", [])
              if i.get("type") == "output"] for node_id in sorted(outputs, key=_node_order)]
    entries, records = job_entries(group, texts, saved, seconds, prompt)
    for job, entry in zip(group, entries, strict=True):
        manifest["jobs"][job.key] = entry
    write_manifest(output, manifest)
    return records


def group_prompt(base: dict, group: list[Job], subject: Subject, ref_name: str | None,
                 per_image_seeds: set[str]) -> tuple[dict, dict[str, str]]:
    """The API prompt that runs ``group`` (one job, or a batch of one template) in one execution, and the texts
    its first job set, by node title."""
    prompt = copy.deepcopy(base)
    texts = apply_job(prompt, group[0], subject, ref_name, group[0].key)
    if len(group) > 1:
        apply_batch(prompt, [job.seed for job in group], per_image_seeds)
    return prompt, texts


def job_entries(group: list[Job], texts: dict[str, str], saved: list[list[str]], seconds: float, prompt: dict,
                **extra) -> tuple[list[dict], list[JobRecord]]:
    """The manifest entries and records of a group run as one execution: ``saved`` holds each SaveImage's image
    paths (in node order), each the batch in order, so image ``k`` is job ``k``'s."""
    entries, records = [], []
    for k, job in enumerate(group):
        images = [p for files in saved for p in (files[k:k + 1] if len(files) == len(group) else files)]
        record = JobRecord(job.key, job.template, job.seed, texts, images, seconds)
        entry = {**asdict(record), "overrides": [list(o) for o in job.overrides], "prompt": prompt, **extra}
        if len(group) > 1:
            entry["batch"] = {"seeds": [j.seed for j in group], "index": k}
        entries.append(entry)
        records.append(record)
    return entries, records


def _node_order(node_id: str) -> tuple[int, str]:
    """Node ids in the workflow's order (numeric ids as numbers), so a manifest lists images stably."""
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)


def _finished(entry: dict | None, output: Path) -> bool:
    return bool(entry and entry.get("images") and all((output / p).exists() for p in entry["images"]))
