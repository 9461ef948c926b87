"""The runner over several ComfyUI servers: the jobs of :mod:`.jobs`, sent through each server's own HTTP API.

Each server gets the API-format graph through ``POST /prompt`` (the reference photo uploaded once through
``/upload/image``), completion is read from ``/history/<id>``, and the images are fetched through ``/view`` into
the output folder (written to a temporary name, then renamed: no half-written image). Jobs (or ``--batch``
groups) wait in one queue; each server takes up to ``in_flight`` of them at a time, one slot (a thread) each.

Faults (the kinds are :mod:`.client`'s):

- a server that refuses a prompt (validation) or fails executing it fails that job, with the server's message in
  the manifest; no other job stops;
- any other fault while a slot runs a job (an answer that is not ComfyUI's, such as a malformed ``/history`` or a
  failing ``/view``; an image that cannot be written; a batch the graph cannot take) fails that job the same way,
  with what went wrong; the slot takes the next job. No fault leaves a slot's job counted as running, so a run
  always ends;
- a server that dies or stops answering mid-job (or forgets a prompt it took: restarted) has the job put back for
  the others (the manifest lists the retry; after ``max_retries`` of them the job fails); the server is asked again
  every ``retry_after`` seconds and, when it answers, takes jobs again;
- when no server has answered for ``give_up_after`` seconds, the jobs left fail with that message;
- an interrupted run resumes as the in-process one does: a job whose images are all there is skipped.

Before any job, every server is checked: it answers (no login in front of it), it has the workflow's nodes (the
pack installed) and every file and choice the graph names (its ``/object_info``). A server that fails a check
stops the run with one message naming it; the manifest records which, and nothing else is written. A batch the
graph cannot take is refused before that, as in this process (:func:`.jobs.prepare`).

Same ComfyUI, pack and models: an image made through a server equals the in-process runner's, pixel for pixel.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .client import (
    Client,
    JobRefused,
    ServerDown,
    ServerError,
    failure,
    missing,
    node_definitions,
    object_info,
)
from .jobs import (
    Job,
    JobRecord,
    Plan,
    Subject,
    failed_entry,
    image_path,
    job_entries,
    open_manifest,
    prepare,
    progress,
    reason,
    reference_name,
    saved_images,
    write_manifest,
)

logger = logging.getLogger(__name__)

LOST_CHECK = 2.0  # seconds between checks that a server still holds a prompt it has not finished


class OutputError(RuntimeError):
    """An image could not be written into the output folder: the message names the file and the fix."""


@dataclass
class ServerCounts:
    done: int = 0
    failed: int = 0
    retried: int = 0
    seconds: float = 0.0
    down: bool = field(default=False, repr=False)  # stopped answering; asked again before it takes a job


class _Dispatch:
    """The shared state of one run: the queue of groups, the groups in flight, the retries, the plan (its manifest);
    one lock. Every group a slot takes leaves the flight through :meth:`put_back` or :meth:`finish`, whatever
    happens in them, so the other slots never wait for it in vain."""

    def __init__(self, plan: Plan, bar, max_retries: int) -> None:
        self.pending = collections.deque(plan.groups)
        self.in_flight = 0
        self.plan = plan
        self.bar = bar
        self.max_retries = max_retries
        self.lock = threading.Condition()
        self.retries: dict[str, list[dict]] = collections.defaultdict(list)
        self.last_answer = time.monotonic()

    @property
    def finished(self) -> bool:
        with self.lock:
            return not self.pending and self.in_flight == 0

    def take(self) -> list[Job] | None:
        """The next group, or None when every group is done (waits while others are in flight)."""
        with self.lock:
            while not self.pending:
                if self.in_flight == 0:
                    return None
                self.lock.wait(0.5)
            self.in_flight += 1
            return self.pending.popleft()

    def put_back(self, group: list[Job], server: str, why: str) -> bool:
        """Queue ``group`` again for the other servers; False when it has been retried ``max_retries`` times
        (then it failed)."""
        with self.lock:
            for job in group:
                self.retries[job.key].append({"server": server, "error": why})
            if len(self.retries[group[0].key]) <= self.max_retries:
                self.pending.appendleft(group)
                self.in_flight -= 1
                self.lock.notify_all()
                return True
        self.fail(group, f"retried {self.max_retries} times; last: {why}", server)
        return False

    def finish(self, group: list[Job], entries: list[dict], records: list[JobRecord]) -> None:
        with self.lock:
            try:
                for job, entry in zip(group, entries, strict=True):
                    if self.retries.get(job.key):
                        entry["retries"] = self.retries[job.key]
                self.plan.finish(group, entries, records)
                self.bar.update(len(group))
            finally:
                self.in_flight -= 1
                self.lock.notify_all()

    def fail(self, group: list[Job], why: str, server: str) -> None:
        self.finish(group, [failed_entry(job, why, server=server) for job in group], [])

    def give_up(self, why: str) -> None:
        """Fail every group left in the queue."""
        with self.lock:
            groups = list(self.pending)
            self.pending.clear()
            for group in groups:
                self.plan.finish(group, [failed_entry(job, why, retries=self.retries.get(job.key, []))
                                         for job in group], [])
            self.lock.notify_all()


def run_on_servers(workflow: dict, jobs: list[Job], subject: Subject, output: Path, urls: list[str],
                   reference: Path | None = None, workflow_name: str = "workflow", batch: int = 1,
                   in_flight: int = 1, poll: float = 0.2, retry_after: float = 2.0,
                   give_up_after: float = 300.0, max_retries: int = 3) -> Plan:
    """Run every job not already done through the ComfyUI servers at ``urls``; return the run's :class:`.jobs.Plan`
    (its records, and why jobs failed). Raises, before any job, :class:`.client.ServerError` for a server that cannot
    take them and :class:`.jobs.BatchError` for a batch the workflow cannot take."""
    from .ui_format import WorkflowError, ui_to_prompt

    manifest = open_manifest(output, workflow_name, subject, reference)
    clients = [Client(url) for url in dict.fromkeys(urls)]
    ref_name = reference_name(reference) if reference is not None else None
    try:
        infos = {c.url: object_info(c) for c in clients}
        converted = []
        for client in clients:  # a UI workflow is read with each server's node definitions, as its frontend would
            try:
                converted.append(workflow if "nodes" not in workflow else ui_to_prompt(
                    workflow, node_definitions(infos[client.url])))
            except WorkflowError as error:
                raise ServerError(f"server {client.url} cannot read the workflow: {error} Fix: install the same "
                                  "custom nodes (this pack) and model files on every server, or leave this one "
                                  "out.") from None
        plan = prepare(manifest, output, converted[0], node_definitions(infos[clients[0].url]), jobs, subject,
                       ref_name, batch)
        for client in clients:
            if lacks := missing(plan.preflight, infos[client.url]):
                raise ServerError(f"server {client.url} lacks {', '.join(lacks[:5])}"
                                  f"{f' and {len(lacks) - 5} more' if len(lacks) > 5 else ''}. Fix: put the same "
                                  "model files (and custom nodes) on every server, or leave this one out.")
        for client in clients if reference is not None else ():
            try:
                client.upload_image(reference, ref_name)
            except ServerDown as error:
                raise ServerError(f"server {client.url} stopped answering ({error}). Fix: start it again, or leave "
                                  "it out.") from None
    except ServerError as error:
        manifest["servers"] = {"refused": str(error)}
        write_manifest(output, manifest)
        raise
    logger.info("%d servers, %d job(s) in flight each", len(clients), in_flight)
    counts = {c.url: ServerCounts() for c in clients}
    with progress(plan.pending) as bar:
        state = _Dispatch(plan, bar, max_retries)
        settings = dict(poll=poll, retry_after=retry_after, give_up_after=give_up_after)
        threads = [threading.Thread(target=_serve, args=(client, state, counts[client.url], settings), daemon=True,
                                    name=f"{client.url}#{k}") for client in clients for k in range(max(1, in_flight))]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)  # (short joins: Ctrl-C reaches the main thread)
        state.give_up("no server slot was left to run it")  # (none left unless a slot's bookkeeping failed)
    manifest["servers"] = {url: {k: v for k, v in asdict(c).items() if k != "down"} for url, c in counts.items()}
    write_manifest(output, manifest)
    for url, c in counts.items():
        logger.info("%s: %d done, %d failed, %d retried elsewhere", url, c.done, c.failed, c.retried)
    return plan


def _serve(client: Client, state: _Dispatch, counts: ServerCounts, settings: dict) -> None:
    """One of a server's job slots: take groups until none is left. A group leaves the slot done, failed (with
    why) or put back for the others; no exception leaves it in flight."""
    while True:
        if not _wait_until_up(client, state, counts, settings):
            state.give_up(f"no server answered for {settings['give_up_after']:.0f} s")
            return
        if (group := state.take()) is None:
            return
        start = time.perf_counter()
        try:
            entries, records = run_group(client, group, state.plan, settings["poll"])
        except ServerDown as error:
            logger.warning("%s stopped answering (%s): its job goes to the other servers", client.url, error)
            counts.down = True
            if state.put_back(group, client.url, str(error)):
                counts.retried += len(group)
            else:
                counts.failed += len(group)
            continue
        except Exception as error:  # any other fault fails this group, never the slot (issue 35)
            if isinstance(error, JobRefused):
                logger.error("%s refused a job: %s", client.url, error)
            else:
                logger.error("%s: a job failed: %s", client.url, reason(error), exc_info=not isinstance(
                    error, (ServerError, OutputError)))
            counts.failed += len(group)
            state.fail(group, reason(error), client.url)
            continue
        state.last_answer = time.monotonic()
        counts.done += len(group)
        counts.seconds = round(counts.seconds + time.perf_counter() - start, 2)
        state.finish(group, entries, records)


def _wait_until_up(client: Client, state: _Dispatch, counts: ServerCounts, settings: dict) -> bool:
    """After a fault, ask the server again until it answers (or the other servers finish the run); False when
    no server has answered for ``give_up_after`` seconds."""
    while counts.down and not state.finished:
        try:
            client.json("/system_stats")
            logger.info("%s answers again: it takes jobs again", client.url)
            counts.down = False
            state.last_answer = time.monotonic()
        except (ServerDown, ServerError):
            if time.monotonic() - state.last_answer > settings["give_up_after"]:
                return False
            time.sleep(settings["retry_after"])
    return True


def run_group(client: Client, group: list[Job], plan: Plan, poll: float) -> tuple[list[dict], list[JobRecord]]:
    """Run ``group`` on one server; fetch its images into the plan's output folder; return the manifest entries and
    records."""
    prompt, texts = plan.prompt(group)
    start = time.perf_counter()
    prompt_id = client.queue(prompt, f"layout-retouch-{uuid.uuid4().hex[:8]}")
    entry = wait_for(client, prompt_id, poll)
    if entry.get("status", {}).get("status_str") == "error":
        raise JobRefused(failure(entry))
    saved = saved_images(entry.get("outputs", {}))
    for image in (i for files in saved for i in files):
        fetch(client, image, plan.output)
    seconds = round((time.perf_counter() - start) / len(group), 2)
    paths = [[image_path(i) for i in files] for files in saved]
    return job_entries(group, texts, paths, seconds, prompt, server=client.url)


def wait_for(client: Client, prompt_id: str, poll: float) -> dict:
    """The history entry of a prompt the server took, once it has run. A server that holds it neither in its queue
    nor in its history (restarted since) has lost it: :class:`.client.ServerDown`, so it runs elsewhere."""
    next_check = time.monotonic() + LOST_CHECK
    while (entry := client.history(prompt_id)) is None:
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + LOST_CHECK
            if not client.queued(prompt_id) and (entry := client.history(prompt_id)) is None:
                raise ServerDown(f"{client.url} holds prompt {prompt_id} neither queued nor done (restarted?)")
            if entry is not None:
                return entry
        time.sleep(poll)
    return entry


def fetch(client: Client, image: dict, output: Path) -> Path:
    """Download one saved image into ``output`` at its subfolder and name: a temporary name, then renamed."""
    target = output / client.image_path(image)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    data = client.view(image)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_bytes(data)
        os.replace(temporary, target)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise OutputError(f"cannot write {target} ({error.strerror or error}). Fix: make the output folder "
                          "writable (and give it space), then run again: the run resumes.") from None
    return target
