"""The in-process runner: the jobs of :mod:`.jobs` through ComfyUI's own executor, in this process, without the web
server (the host loaded by ``cli.start_host``).

One executor serves the whole run (its classic cache: the models load once). A job ComfyUI refuses (validation)
or fails executing fails in the manifest with ComfyUI's message, as on a server; the other jobs go on.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from .jobs import (
    Job,
    Plan,
    Subject,
    image_path,
    job_entries,
    open_manifest,
    prepare,
    progress,
    reason,
    reference_name,
    saved_images,
)

logger = logging.getLogger(__name__)


def run_local(workflow: dict, jobs: list[Job], subject: Subject, output: Path, reference: Path | None = None,
              workflow_name: str = "workflow", batch: int = 1) -> Plan:
    """Run every job not already done; return the run's :class:`.jobs.Plan` (its records, and why jobs failed).

    ``batch``: up to this many jobs of one template run as one graph execution (:mod:`.jobs`). Raises
    :class:`.jobs.BatchError`, before any job, for a batch the workflow cannot take.
    """
    import comfy.utils
    import folder_paths

    import nodes

    from .executor import prompt_executor
    from .ui_format import ui_to_prompt

    manifest = open_manifest(output, workflow_name, subject, reference)
    folder_paths.set_output_directory(str(output))
    base = workflow if "nodes" not in workflow else ui_to_prompt(workflow, nodes.NODE_CLASS_MAPPINGS)
    ref_name = reference_name(reference) if reference is not None else None
    plan = prepare(manifest, output, base, nodes.NODE_CLASS_MAPPINGS, jobs, subject, ref_name, batch)
    if reference is not None:
        shutil.copy(reference, Path(folder_paths.get_input_directory()) / ref_name)
    executor = prompt_executor()  # classic cache: models load once
    previous_disabled = comfy.utils.PROGRESS_BAR_ENABLED
    comfy.utils.PROGRESS_BAR_ENABLED = False  # one bar over the jobs, not one per sampler
    try:
        with progress(plan.pending) as bar:
            for group in plan.groups:
                run_group(group, plan, executor)
                bar.update(len(group))
    finally:
        comfy.utils.PROGRESS_BAR_ENABLED = previous_disabled
    return plan


def run_group(group: list[Job], plan: Plan, executor) -> None:
    """Run ``group`` (one job, or a batch of one template) as one execution; record it, or why it failed, in the
    manifest."""
    from .executor import execute

    start = time.perf_counter()
    try:
        prompt, texts = plan.prompt(group)
        outputs = execute(prompt, executor)
    except Exception as error:  # a job that fails fails alone, as on a server
        logger.error("a job failed: %s", reason(error))
        plan.fail(group, reason(error))
        return
    seconds = round((time.perf_counter() - start) / len(group), 2)
    saved = [[image_path(i) for i in files] for files in saved_images(outputs)]
    plan.finish(group, *job_entries(group, texts, saved, seconds, prompt))
