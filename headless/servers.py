"""The runner over several ComfyUI servers: the jobs of :mod:`.runner`, sent through each server's own HTTP API.

Each server gets the API-format graph through ``POST /prompt`` (the reference photo uploaded once through
``/upload/image``), completion is read from ``/history/<id>``, and the images are fetched through ``/view`` into
the output folder (written to a temporary name, then renamed: no half-written image). Jobs (or ``--batch``
groups) wait in one queue; each server takes up to ``in_flight`` of them at a time.

Faults:

- a server that refuses a prompt (validation) or fails executing it fails that job, with the server's message in
  the manifest; no other job stops;
- a server that dies or stops answering mid-job has the job put back for the others (the manifest lists the retry);
  the server is asked again every ``retry_after`` seconds and, when it answers, takes jobs again;
- when no server has answered for ``give_up_after`` seconds, the jobs left fail with that message;
- an interrupted run resumes as the in-process one does: a job whose images are all there is skipped.

Before any job, every server is checked: it answers (no login in front of it), it has the workflow's nodes (the
pack installed) and every file and choice the graph names (its ``/object_info``). A server that fails a check
stops the run with one message naming it; the manifest records which, and nothing else is written.

Same ComfyUI, pack and models: an image made through a server equals the in-process runner's, pixel for pixel.
"""

from __future__ import annotations

import collections
import copy
import http.client
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .runner import (
    Job,
    JobRecord,
    Subject,
    _finished,
    _node_order,
    apply_job,
    batches,
    group_prompt,
    job_entries,
    load_manifest,
    reference_name,
    write_manifest,
)

logger = logging.getLogger(__name__)


class ServerError(RuntimeError):
    """A server that cannot take the run's jobs: the message names it, the problem and the fix."""


class ServerDown(ConnectionError):
    """A server stopped answering (refused, reset, timed out)."""


class JobRefused(RuntimeError):
    """The server refused the prompt or failed executing it: the job fails, with the server's message."""


class Client:
    """The few calls of ComfyUI's HTTP API the runner makes, on one server."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def __repr__(self) -> str:
        return self.url

    def request(self, path: str, body: bytes | None = None, headers: dict | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=body, headers=headers or {},
                                     method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as answer:
                return answer.read()
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            if error.code in (401, 403):
                raise ServerError(f"server {self.url} answers {error.code} ({error.reason}): a login (an "
                                  "authenticating proxy) stands in front of it. Fix: give the URL of the ComfyUI "
                                  "server itself, reachable without a login.") from None
            if error.code == 400 and path == "/prompt":
                raise JobRefused(refusal(text)) from None
            raise ServerDown(f"{self.url}{path} answered {error.code}: {text[:300]}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as error:
            raise ServerDown(f"{self.url}: {getattr(error, 'reason', error)}") from None

    def json(self, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        return json.loads(self.request(path, data, {"Content-Type": "application/json"} if data else None))

    def upload_image(self, path: Path, name: str) -> str:
        """Upload ``path`` to the server's input folder as ``name``; return the name LoadImage takes."""
        boundary = uuid.uuid4().hex
        parts = [(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                  "Content-Type: application/octet-stream\r\n\r\n").encode(), path.read_bytes(), b"\r\n"]
        for key, value in (("overwrite", "true"), ("type", "input")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f"--{boundary}--\r\n".encode())
        answer = json.loads(self.request("/upload/image", b"".join(parts),
                                         {"Content-Type": f"multipart/form-data; boundary={boundary}"}))
        return answer["name"] if not answer.get("subfolder") else f"{answer['subfolder']}/{answer['name']}"

    def queue(self, prompt: dict, client_id: str) -> str:
        return self.json("/prompt", {"prompt": prompt, "client_id": client_id})["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.json(f"/history/{prompt_id}").get(prompt_id)

    def view(self, image: dict) -> bytes:
        query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
        return self.request(f"/view?{query}")


def refusal(text: str) -> str:
    """ComfyUI's answer to a refused prompt, as one message (its node errors' details)."""
    try:
        answer = json.loads(text)
    except ValueError:
        return text[:500]
    details = [f"{e.get('message', '')}: {e.get('details', '')}" for node in answer.get("node_errors", {}).values()
               for e in node.get("errors", [])]
    error = answer.get("error", {})
    return "; ".join(details) or f"{error.get('message', '')}: {error.get('details', '')}".strip(": ")


def failure(entry: dict) -> str:
    """The execution error of a history entry, as one message."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('node_type')} (node {data.get('node_id')}): {data.get('exception_message', '').strip()}"
    return f"the server reports status {entry.get('status', {}).get('status_str')}"


class _Shim:
    """A node definition read from a server's ``/object_info``, for the UI-to-API conversion."""

    def __init__(self, info: dict) -> None:
        self.info = info

    def INPUT_TYPES(self) -> dict:  # noqa: N802  (ComfyUI's name)
        return self.info["input"]


def missing(prompt: dict, info: dict) -> list[str]:
    """What a server lacks for ``prompt``, by its ``/object_info``: node types, and files or choices of combo inputs."""
    out = []
    for node in prompt.values():
        kind, title = node["class_type"], node.get("_meta", {}).get("title", node["class_type"])
        if kind not in info:
            out.append(f"node type {kind} ('{title}'; is the pack installed there?)")
            continue
        specs = {**info[kind]["input"].get("required", {}), **info[kind]["input"].get("optional", {})}
        for name, value in node["inputs"].items():
            spec = specs.get(name)
            if not spec or not isinstance(value, str):
                continue
            options = spec[0] if isinstance(spec[0], list) else (spec[1].get("options") if spec[0] == "COMBO" and
                                                                   len(spec) > 1 else None)
            if options is not None and value not in options:
                out.append(f"'{value}' ({title}: {name})")
    return out


@dataclass
class ServerCounts:
    done: int = 0
    failed: int = 0
    retried: int = 0
    seconds: float = 0.0
    down: bool = field(default=False, repr=False)  # stopped answering; asked again before it takes a job


class _Dispatch:
    """The shared state of one run: the queue of groups, the manifest, the counts; one lock."""

    def __init__(self, groups: list[list[Job]], manifest: dict, output: Path, bar) -> None:
        self.pending = collections.deque(groups)
        self.in_flight = 0
        self.manifest = manifest
        self.output = output
        self.bar = bar
        self.lock = threading.Condition()
        self.retries: dict[str, list[dict]] = collections.defaultdict(list)
        self.last_answer = time.monotonic()
        self.records: list[JobRecord] = []

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

    def put_back(self, group: list[Job], server: str, reason: str) -> None:
        with self.lock:
            for job in group:
                self.retries[job.key].append({"server": server, "error": reason})
            self.pending.appendleft(group)
            self.in_flight -= 1
            self.lock.notify_all()

    def finish(self, group: list[Job], entries: list[dict], records: list[JobRecord]) -> None:
        with self.lock:
            for job, entry in zip(group, entries, strict=True):
                if self.retries.get(job.key):
                    entry["retries"] = self.retries[job.key]
                self.manifest["jobs"][job.key] = entry
            self.records += records
            self.in_flight -= 1
            write_manifest(self.output, self.manifest)
            self.bar.update(len(group))
            self.lock.notify_all()

    def give_up(self, reason: str) -> None:
        """Fail every group left in the queue."""
        with self.lock:
            while self.pending:
                for job in self.pending.popleft():
                    self.manifest["jobs"][job.key] = {**failed_entry(job, reason),
                                                      "retries": self.retries.get(job.key, [])}
            write_manifest(self.output, self.manifest)
            self.lock.notify_all()


def failed_entry(job: Job, error: str) -> dict:
    """A job's manifest entry when it failed: no images (a resumed run runs it again), and why."""
    return {"key": job.key, "template": job.template, "seed": job.seed, "images": [], "error": error}


def run_on_servers(workflow: dict, jobs: list[Job], subject: Subject, output: Path, urls: list[str],
                   reference: Path | None = None, workflow_name: str = "workflow", batch: int = 1,
                   in_flight: int = 1, poll: float = 0.2, retry_after: float = 2.0,
                   give_up_after: float = 300.0) -> list[JobRecord]:
    """Run every job not already done through the ComfyUI servers at ``urls``; return the records of the jobs
    run now. Raises :class:`ServerError` (before any job) for a server that cannot take them."""
    from tqdm import tqdm

    from .ui_format import WorkflowError, ui_to_prompt

    output.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(output)
    manifest.update(workflow=workflow_name, subject=asdict(subject), reference=str(reference) if reference else None)
    clients = [Client(url) for url in dict.fromkeys(urls)]
    ref_name = reference_name(reference) if reference is not None else None
    try:
        infos = {c.url: object_info(c) for c in clients}
        first = next(iter(infos.values()))
        converted = []
        for client in clients:  # a UI workflow is read with each server's node definitions, as its frontend would
            try:
                converted.append(workflow if "nodes" not in workflow else ui_to_prompt(
                    workflow, {k: _Shim(v) for k, v in infos[client.url].items()}))
            except WorkflowError as error:
                raise ServerError(f"server {client.url} cannot read the workflow: {error} Fix: install the same "
                                  "custom nodes (this pack) and model files on every server, or leave this one "
                                  "out.") from None
        base = converted[0]
        probe = copy.deepcopy(base)
        if jobs:
            apply_job(probe, jobs[0], subject, ref_name, jobs[0].key)
        for client in clients:
            if lacks := missing(probe, infos[client.url]):
                raise ServerError(f"server {client.url} lacks {', '.join(lacks[:5])}"
                                  f"{f' and {len(lacks) - 5} more' if len(lacks) > 5 else ''}. Fix: put the same "
                                  "model files (and custom nodes) on every server, or leave this one out.")
        if reference is not None:
            for client in clients:
                client.upload_image(reference, ref_name)
    except ServerError as error:
        manifest["servers"] = {"refused": str(error)}
        write_manifest(output, manifest)
        raise
    per_image_seeds = {kind for kind, info in first.items() if "batch_seeds" in info["input"].get("optional", {})}
    pending = [j for j in jobs if not _finished(manifest["jobs"].get(j.key), output)]
    logger.info("%d jobs, %d already done; %d servers, %d job(s) in flight each", len(jobs),
                len(jobs) - len(pending), len(clients), in_flight)
    counts = {c.url: ServerCounts() for c in clients}
    with tqdm(total=len(pending), desc="layout-retouch", unit="image") as bar:
        state = _Dispatch(batches(pending, max(1, batch)), manifest, output, bar)
        settings = dict(base=base, subject=subject, ref_name=ref_name, per_image_seeds=per_image_seeds, poll=poll,
                        retry_after=retry_after, give_up_after=give_up_after)
        threads = [threading.Thread(target=_serve, args=(client, state, counts[client.url], settings), daemon=True,
                                    name=f"{client.url}#{k}") for client in clients for k in range(max(1, in_flight))]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)  # (short joins: Ctrl-C reaches the main thread)
    manifest["servers"] = {url: {k: v for k, v in asdict(c).items() if k != "down"} for url, c in counts.items()}
    write_manifest(output, manifest)
    for url, c in counts.items():
        logger.info("%s: %d done, %d failed, %d retried elsewhere", url, c.done, c.failed, c.retried)
    return state.records


def object_info(client: Client) -> dict:
    try:
        return client.json("/object_info")
    except ServerDown as error:
        raise ServerError(f"server {client.url} does not answer ({error}). Fix: start it, or check the URL "
                          "(e.g. http://127.0.0.1:8188).") from None


def _serve(client: Client, state: _Dispatch, counts: ServerCounts, settings: dict) -> None:
    """One of a server's job slots: take groups until none is left."""
    while True:
        if not _wait_until_up(client, state, counts, settings):
            state.give_up(f"no server answered for {settings['give_up_after']:.0f} s")
            return
        if (group := state.take()) is None:
            return
        start = time.perf_counter()
        try:
            entries, records = _run_group(client, group, state.output, **{k: settings[k] for k in (
                "base", "subject", "ref_name", "per_image_seeds", "poll")})
        except ServerDown as error:
            logger.warning("%s stopped answering (%s): its job goes to the other servers", client.url, error)
            counts.retried += len(group)
            counts.down = True
            state.put_back(group, client.url, str(error))
            continue
        except JobRefused as error:
            logger.error("%s refused a job: %s", client.url, error)
            counts.failed += len(group)
            entries = [{**failed_entry(job, str(error)), "server": client.url} for job in group]
            state.finish(group, entries, [])
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


def _run_group(client: Client, group: list[Job], output: Path, base: dict, subject: Subject, ref_name: str | None,
               per_image_seeds: set[str], poll: float) -> tuple[list[dict], list[JobRecord]]:
    """Run ``group`` on one server; fetch its images into ``output``; return the manifest entries and records."""
    prompt, texts = group_prompt(base, group, subject, ref_name, per_image_seeds)
    start = time.perf_counter()
    prompt_id = client.queue(prompt, f"layout-retouch-{uuid.uuid4().hex[:8]}")
    while (entry := client.history(prompt_id)) is None:
        time.sleep(poll)
    if entry.get("status", {}).get("status_str") == "error":
        raise JobRefused(failure(entry))
    outputs = entry["outputs"]
    saved = [[image for image in outputs[node_id].get("images", []) if image.get("type") == "output"]
             for node_id in sorted(outputs, key=_node_order)]
    for image in (i for files in saved for i in files):
        fetch(client, image, output)
    seconds = round((time.perf_counter() - start) / len(group), 2)
    paths = [[str(Path(i["subfolder"]) / i["filename"]) for i in files] for files in saved]
    return job_entries(group, texts, paths, seconds, prompt, server=client.url)


def fetch(client: Client, image: dict, output: Path) -> Path:
    """Download one saved image into ``output`` at its subfolder and name: a temporary name, then renamed."""
    target = output / image.get("subfolder", "") / image["filename"]
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    temporary.write_bytes(client.view(image))
    os.replace(temporary, target)
    return target
