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
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
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


def load_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {"jobs": {}}


def run_batch(workflow: dict, jobs: list[Job], subject: Subject, output: Path, reference: Path | None = None,
              workflow_name: str = "workflow") -> list[JobRecord]:
    """Run every job not already done; return the records of the jobs run now."""
    import comfy.utils
    import execution
    import folder_paths
    from tqdm import tqdm

    import nodes

    from .executor import _Server, execute
    from .ui_format import ui_to_prompt

    output.mkdir(parents=True, exist_ok=True)
    folder_paths.set_output_directory(str(output))
    ref_name = None
    if reference is not None:
        ref_name = f"lr_reference_{hashlib.sha1(reference.read_bytes()).hexdigest()[:10]}{reference.suffix}"
        shutil.copy(reference, Path(folder_paths.get_input_directory()) / ref_name)
    base = workflow if "nodes" not in workflow else ui_to_prompt(workflow, nodes.NODE_CLASS_MAPPINGS)
    manifest = load_manifest(output)
    manifest.update(workflow=workflow_name, subject=asdict(subject), reference=str(reference) if reference else None)
    executor = execution.PromptExecutor(_Server(), cache_type=False)  # classic cache: models load once
    done = []
    pending = [j for j in jobs if not _finished(manifest["jobs"].get(j.key), output)]
    logger.info("%d jobs, %d already done", len(jobs), len(jobs) - len(pending))
    previous_disabled = comfy.utils.PROGRESS_BAR_ENABLED
    comfy.utils.PROGRESS_BAR_ENABLED = False  # one bar over the jobs, not one per sampler
    try:
        for job in tqdm(pending, desc="layout-retouch", unit="image"):
            prompt = copy.deepcopy(base)
            texts = apply_job(prompt, job, subject, ref_name, job.key)
            start = time.perf_counter()
            outputs = execute(prompt, executor)
            images = [str(Path(i["subfolder"]) / i["filename"]) for node in outputs.values()
                      for i in node.get("images", []) if i.get("type") == "output"]
            record = JobRecord(job.key, job.template, job.seed, texts, images, round(time.perf_counter() - start, 2))
            manifest["jobs"][job.key] = {**asdict(record), "overrides": [list(o) for o in job.overrides],
                                         "prompt": prompt}
            (output / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
            done.append(record)
    finally:
        comfy.utils.PROGRESS_BAR_ENABLED = previous_disabled
    return done


def _finished(entry: dict | None, output: Path) -> bool:
    return bool(entry and entry.get("images") and all((output / p).exists() for p in entry["images"]))
