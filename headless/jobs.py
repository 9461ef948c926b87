"""The jobs of a headless run, their manifest, and what both runners do before the first job (:func:`prepare`).

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
folder. A ``manifest.json`` in the output folder records exactly what ran, and why a job failed; a job
whose images are all there is skipped, so an interrupted batch resumes where it stopped.

Batches (``batch > 1``, for throughput on a GPU): up to ``batch`` jobs of one template and one
set of overrides run as one graph execution. The latent source (every ``batch_size`` input, e.g.
Empty Latent Image) is set to the number of jobs and every sampler that takes per-image seeds
(``batch_seeds``, the Step-Blended KSampler) gets the jobs' seeds, so latent ``k`` starts from
the noise its own seed gives a single run: each image equals its single run up to float
rounding (batched matrix products round differently). A sampler that draws one noise for the
whole batch (a stock KSampler, a KSamplerAdvanced with noise added) would break that, so such a
graph is refused, before any job runs; a KSamplerAdvanced with ``add_noise`` disabled draws nothing and is fine.

The runners (:mod:`.local` in this process, :mod:`.servers` over ComfyUI's HTTP API) share everything here:
:func:`open_manifest`, then :func:`prepare` (the pending jobs, their groups, the preflight), then one
:meth:`Plan.finish` or :meth:`Plan.fail` per group.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Mapping
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


def group_prompt(base: dict, group: list[Job], subject: Subject, ref_name: str | None,
                 per_image_seeds: set[str]) -> tuple[dict, dict[str, str]]:
    """The API prompt that runs ``group`` (one job, or a batch of one template) in one execution, and the texts
    its first job set, by node title."""
    prompt = copy.deepcopy(base)
    texts = apply_job(prompt, group[0], subject, ref_name, group[0].key)
    if len(group) > 1:
        apply_batch(prompt, [job.seed for job in group], per_image_seeds)
    return prompt, texts


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


def per_image_seed_classes(prompt: dict, definitions: Mapping[str, Any]) -> set[str]:
    """The node classes of ``prompt`` that take per-image seeds (an optional ``batch_seeds`` input).

    ``definitions``: node class name -> an object with ``INPUT_TYPES()`` (ComfyUI's ``NODE_CLASS_MAPPINGS``, or
    a server's ``/object_info`` read by ``client.node_definitions``).
    """
    return {kind for kind in {n["class_type"] for n in prompt.values()}
            if kind in definitions and "batch_seeds" in definitions[kind].INPUT_TYPES().get("optional", {})}


def reference_name(reference: Path) -> str:
    """The name the reference photo takes in ComfyUI's input folder (by its content: one file per photo)."""
    return f"lr_reference_{hashlib.sha1(reference.read_bytes()).hexdigest()[:10]}{reference.suffix}"


def node_order(node_id: str) -> tuple[int, str]:
    """Node ids in the workflow's order (numeric ids as numbers), so a manifest lists images stably."""
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)


def saved_images(outputs: dict[str, Any]) -> list[list[dict]]:
    """The images each SaveImage saved (``type`` output), per node in the workflow's order, from an execution's
    UI outputs (the in-process executor's, or a server's ``/history`` entry's ``outputs``)."""
    return [[image for image in outputs[node_id].get("images", []) if image.get("type") == "output"]
            for node_id in sorted(outputs, key=node_order)]


def image_path(image: dict) -> str:
    """An image's path in the output folder, as the manifest lists it."""
    return str(Path(image.get("subfolder", "")) / image["filename"])


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


def failed_entry(job: Job, error: str, **extra) -> dict:
    """A job's manifest entry when it failed: no images (a resumed run runs it again), and why."""
    return {"key": job.key, "template": job.template, "seed": job.seed, "images": [], "error": error, **extra}


def reason(error: BaseException) -> str:
    """What a failed group's manifest entry says: the message of the pack's own errors (which name the problem
    and the fix), else the exception's type and message (``FileExistsError: [Errno 17] ...``)."""
    text = str(error) or repr(error)
    own = type(error).__module__.split(".")[0] == __name__.split(".")[0]
    return text if own else f"{type(error).__name__}: {text}"


def write_manifest(output: Path, manifest: dict) -> None:
    """Write ``manifest.json`` whole or not at all (a temporary file, then renamed): an interrupted run keeps the
    last complete one."""
    temporary = output / f".{MANIFEST}.tmp"
    temporary.write_text(json.dumps(manifest, indent=1, default=str))
    os.replace(temporary, output / MANIFEST)


def load_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {"jobs": {}}


def open_manifest(output: Path, workflow_name: str, subject: Subject, reference: Path | None) -> dict[str, Any]:
    """Create ``output``; the manifest a run continues (an earlier run's jobs kept), with this run's settings."""
    output.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(output)
    manifest.pop("refused", None)  # an earlier run's refusal
    if "refused" in manifest.get("servers", {}):
        del manifest["servers"]
    manifest.update(workflow=workflow_name, subject=asdict(subject), reference=str(reference) if reference else None)
    return manifest


def finished(entry: dict | None, output: Path) -> bool:
    """Whether a job's manifest entry lists images that are all there (a resumed run skips it)."""
    return bool(entry and entry.get("images") and all((output / p).exists() for p in entry["images"]))


@dataclass
class Plan:
    """One run, prepared (:func:`prepare`): the groups to run (each one execution) and the base prompt they are
    made from; and, as the run goes, its manifest, the records of the jobs done and why jobs failed.

    The runner that prepared it owns it for the run: it calls :meth:`finish` or :meth:`fail` once per group (the
    server runner from its slots' threads, under its lock); both write the manifest.
    """

    output: Path
    manifest: dict
    base: dict
    subject: Subject
    ref_name: str | None
    per_image_seeds: set[str]
    groups: list[list[Job]]
    preflight: dict  # the largest group's prompt: what every server must be able to run
    records: list[JobRecord] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # job key -> why

    @property
    def pending(self) -> int:
        return sum(len(group) for group in self.groups)

    def prompt(self, group: list[Job]) -> tuple[dict, dict[str, str]]:
        """The API prompt of ``group`` and the texts it sets (:func:`group_prompt`)."""
        return group_prompt(self.base, group, self.subject, self.ref_name, self.per_image_seeds)

    def finish(self, group: list[Job], entries: list[dict], records: list[JobRecord]) -> None:
        """Record a group that ran (or failed: ``entries`` with an ``error``) in the manifest, and write it."""
        for job, entry in zip(group, entries, strict=True):
            self.manifest["jobs"][job.key] = entry
            if entry.get("error"):
                self.failed[job.key] = entry["error"]
        self.records += records
        write_manifest(self.output, self.manifest)

    def fail(self, group: list[Job], error: str, **extra) -> None:
        """Record every job of ``group`` as failed with ``error`` (``extra``: more fields of each entry)."""
        self.finish(group, [failed_entry(job, error, **extra) for job in group], [])


def prepare(manifest: dict, output: Path, base: dict, definitions: Mapping[str, Any], jobs: list[Job],
            subject: Subject, ref_name: str | None, batch: int) -> Plan:
    """What both runners do before the first job: the jobs not done yet, in groups of up to ``batch`` (one
    execution each), and the preflight: the largest group's prompt, so that a workflow that cannot take the batch
    (:class:`BatchError`) is refused before anything runs (the manifest records why, under ``refused``).

    ``base``: the API prompt; ``definitions``: its node classes' definitions (:func:`per_image_seed_classes`).
    """
    pending = [job for job in jobs if not finished(manifest["jobs"].get(job.key), output)]
    logger.info("%d jobs, %d already done", len(jobs), len(jobs) - len(pending))
    groups = batches(pending, max(1, batch))
    plan = Plan(output, manifest, base, subject, ref_name, per_image_seed_classes(base, definitions), groups, {})
    largest = max(groups, key=len, default=jobs[:1])
    try:
        plan.preflight = plan.prompt(largest)[0] if largest else copy.deepcopy(base)
    except BatchError as error:
        manifest["refused"] = str(error)
        write_manifest(output, manifest)
        raise
    return plan


class _Count:
    """A progress bar where tqdm is not installed (the server runner needs nothing of ComfyUI's environment)."""

    def __init__(self, total: int) -> None:
        self.total, self.n = total, 0

    def __enter__(self) -> _Count:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int) -> None:
        self.n += n
        logger.info("layout-retouch: %d/%d images", self.n, self.total)


def progress(total: int):
    """One progress bar over a run's jobs (a context manager with ``update(n)``)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _Count(total)
    return tqdm(total=total, desc="layout-retouch", unit="image")
