"""Issue 35: a fault in one of the server runner's slots fails that job, with why in the manifest, and never the run.

Stand-ins for ComfyUI servers (``FakeComfy``: python's http.server in a thread, answering as ComfyUI's API does, each
answer replaceable by a fault) take the runner's jobs: a malformed ``/history``, a ``/view`` answering 500, an
image that cannot be written, a batch the graph cannot take, a server that forgets a prompt. Each run must end
within seconds (each is run in a thread with a timeout, so that a hang fails the test instead of the suite), with
exit status 1 where a job failed, the cause in the manifest, and the jobs on the other servers done.
"""

from __future__ import annotations

import http.server
import itertools
import json
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from comfyui_layout_retouch.headless import cli, servers
from comfyui_layout_retouch.headless.jobs import BatchError, Job, Subject, open_manifest, prepare

ENDS_WITHIN = 20.0  # seconds: each run here takes one or two; a hang fails at this limit

INFO = {  # the /object_info of the graph's nodes
    "EmptyLatentImage": {"input": {"required": {"width": ["INT", {}], "batch_size": ["INT", {}]}}},
    "CLIPTextEncode": {"input": {"required": {"text": ["STRING", {}]}}},
    "LR_StepBlendedKSampler": {"input": {"required": {"seed": ["INT", {}], "sampler_name": [["euler", "ddim"]]},
                                         "optional": {"batch_seeds": ["STRING", {}]}}},
    "KSampler": {"input": {"required": {"seed": ["INT", {}]}}},
    "KSamplerAdvanced": {"input": {"required": {"noise_seed": ["INT", {}], "add_noise": [["enable", "disable"]]}}},
    "SaveImage": {"input": {"required": {"filename_prefix": ["STRING", {}]}}},
}


def node(kind: str, title: str, **inputs) -> dict:
    return {"class_type": kind, "inputs": inputs, "_meta": {"title": title}}


def workflow(sampler: str = "LR_StepBlendedKSampler") -> dict:
    """An API-format graph: a latent, a prompt, a sampler (``KSampler``: one that cannot take a batch), a refiner
    that adds no noise, a SaveImage."""
    seed = {"seed": 0, "sampler_name": "euler"} if sampler == "LR_StepBlendedKSampler" else {"seed": 0}
    return {"1": node("EmptyLatentImage", "Empty Latent Image", width=64, batch_size=1),
            "2": node("CLIPTextEncode", "Personalized prompt", text=""),
            "3": node(sampler, sampler, **seed),
            "4": node("KSamplerAdvanced", "Refine", noise_seed=0, add_noise="disable"),
            "5": node("SaveImage", "Save", filename_prefix="layout")}


class FakeComfy(http.server.ThreadingHTTPServer):
    """A ComfyUI stand-in on a loopback port. ``POST /prompt`` (answered after ``delay`` seconds, a server at work)
    queues a prompt whose SaveImage nodes "save" one image per latent of the batch, listed by ``/history/<id>``
    and served by ``/view``. ``faults``: path prefix -> (status, body bytes), answered instead."""

    def __init__(self, faults: dict[str, tuple[int, bytes]] | None = None, delay: float = 0.3) -> None:
        self.faults, self.delay = faults or {}, delay
        self.history: dict[str, dict] = {}
        self.prompts: list[dict] = []
        self.ids = itertools.count()
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def queue(self, prompt: dict) -> dict:
        prompt_id = f"p{next(self.ids)}"
        size = next(n["inputs"]["batch_size"] for n in prompt.values() if n["class_type"] == "EmptyLatentImage")
        outputs = {}
        for node_id, saver in prompt.items():
            if saver["class_type"] == "SaveImage":
                folder, _, name = saver["inputs"]["filename_prefix"].rpartition("/")
                outputs[node_id] = {"images": [{"filename": f"{name}_{k + 1:05}_.png", "subfolder": folder,
                                                "type": "output"} for k in range(size)]}
        self.prompts.append(prompt)
        self.history[prompt_id] = {"outputs": outputs, "status": {"status_str": "success", "messages": []}}
        return {"prompt_id": prompt_id, "number": len(self.prompts), "node_errors": {}}


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeComfy

    def send(self, status: int, body: bytes | object) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def fault(self) -> bool:
        for prefix, (status, body) in self.server.faults.items():
            if self.path.startswith(prefix):
                self.send(status, body)
                return True
        return False

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        path, _, query = self.path.partition("?")
        if self.fault():
            return
        if path == "/object_info":
            self.send(200, INFO)
        elif path in ("/system_stats", "/queue"):
            self.send(200, {"queue_running": [], "queue_pending": []} if path == "/queue" else {})
        elif path.startswith("/history/"):
            prompt_id = path.rsplit("/", 1)[1]
            self.send(200, {prompt_id: self.server.history[prompt_id]} if prompt_id in self.server.history else {})
        elif path == "/view":
            self.send(200, b"\x89PNG " + urllib.parse.parse_qs(query)["filename"][0].encode())
        else:
            self.send(404, {"error": "no such path"})

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(self.server.delay)
        if self.fault():
            return
        if self.path == "/prompt":
            self.send(200, self.server.queue(json.loads(body)["prompt"]))
        else:
            self.send(404, {"error": "no such path"})

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake():
    """``fake(faults=..., delay=...)``: a started :class:`FakeComfy`, shut down after the test."""
    started = []

    def start(faults: dict[str, tuple[int, bytes]] | None = None, delay: float = 0.3) -> FakeComfy:
        started.append(FakeComfy(faults, delay))
        return started[-1]

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def ends(call, limit: float = ENDS_WITHIN):
    """``call()``'s result; fails when it has not returned within ``limit`` seconds (the run hangs)."""
    result: list = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(call())
        except BaseException as error:  # (SystemExit included: handed to the test)
            errors.append(error)

    thread = threading.Thread(target=target, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"the run did not end within {limit:.0f} s"
    if errors:
        raise errors[0]
    return result[0], time.monotonic() - start


def run_command(tmp_path: Path, urls: list[str], graph: dict | None = None, seeds: str = "1,2",
                extra: tuple[str, ...] = ()) -> tuple[int, dict]:
    """``run WORKFLOW --server ...`` through the command line; its exit status and the manifest."""
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(graph or workflow()))
    output = tmp_path / "out"
    argv = ["run", str(path), "--prompt", "a {} on a beach", "--seeds", seeds, "--output", str(output), *extra]
    for url in urls:
        argv += ["--server", url]
    code, _ = ends(lambda: cli.main(argv))
    return code, json.loads((output / "manifest.json").read_text())


def split(manifest: dict) -> tuple[list[dict], list[dict]]:
    jobs = manifest["jobs"].values()
    return [j for j in jobs if j.get("error")], [j for j in jobs if j.get("images") and not j.get("error")]


@pytest.mark.parametrize("path, answer, says", [
    ("/history", (200, b'{"p0": {"outputs": '), r"/history/p\d+ answered malformed JSON"),
    ("/view", (500, b"Internal Server Error"), r"/view\?\S+ answered 500"),
])
def test_a_bad_answer_fails_that_servers_job_and_the_run_ends(fake, tmp_path, path, answer, says):
    """Before issue 35 the slot's thread died with the job counted in flight: the other slots waited forever."""
    import re

    bad, good = fake({path: answer}), fake()
    code, manifest = run_command(tmp_path, [bad.url, good.url])
    assert code == 1
    failed, done = split(manifest)
    assert len(failed) == len(done) == 1
    assert failed[0]["server"] == bad.url and re.search(says, failed[0]["error"]), failed[0]["error"]
    assert bad.url in failed[0]["error"] and failed[0]["images"] == []
    assert done[0]["server"] == good.url and (tmp_path / "out" / done[0]["images"][0]).is_file()
    assert manifest["servers"][bad.url]["failed"] == 1 and manifest["servers"][good.url]["done"] == 1
    assert not list((tmp_path / "out").rglob("*.part"))


def test_an_image_that_cannot_be_written_fails_its_job_only(fake, tmp_path):
    """The folder of one job's images is taken by a file: that job fails naming the file and the fix; the other
    job, on the other server, is written."""
    blocked = Job("a {} on a beach", 1).key
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / blocked).write_text("not a folder")
    code, manifest = run_command(tmp_path, [fake().url, fake().url])
    assert code == 1
    failed, done = split(manifest)
    assert [j["key"] for j in failed] == [blocked] and len(done) == 1
    assert f"cannot write {tmp_path / 'out' / blocked}" in failed[0]["error"]
    assert "Fix: make the output folder writable" in failed[0]["error"]
    assert (tmp_path / "out" / done[0]["images"][0]).is_file()


def test_a_batch_the_graph_cannot_take_is_refused_before_any_job(fake, tmp_path, capsys):
    """A stock KSampler draws one noise for the whole batch: ``--batch 2`` is refused, exit status 1, the manifest
    says why, and no server is sent a prompt (before issue 35, every slot's thread died on it and the run hung)."""
    first, second = fake(), fake()
    code, manifest = run_command(tmp_path, [first.url, second.url], workflow("KSampler"), "1,2,3",
                                 ("--batch", "2"))
    assert code == 1
    assert "--batch: node 'KSampler' (KSampler) draws one noise for the whole batch" in manifest["refused"]
    assert manifest["jobs"] == {} and first.prompts == second.prompts == []
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("run: --batch: node 'KSampler'")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["manifest.json"]


def test_the_preflight_is_the_one_both_runners_call(tmp_path):
    """``prepare`` (which the in-process runner calls with ComfyUI's node classes, the server runner with a server's
    definitions) builds the largest group's prompt: the refusal above, before anything runs, in both."""
    class Definition:
        def __init__(self, info: dict) -> None:
            self.info = info

        def INPUT_TYPES(self) -> dict:  # noqa: N802  (ComfyUI's name)
            return self.info["input"]

    definitions = {kind: Definition(info) for kind, info in INFO.items()}
    jobs = [Job("a {}", seed) for seed in (1, 2, 3)]
    manifest = open_manifest(tmp_path, "graph.json", Subject(), None)
    plan = prepare(manifest, tmp_path, workflow(), definitions, jobs, Subject(), None, 2)
    assert [[j.seed for j in group] for group in plan.groups] == [[1, 2], [3]]
    assert plan.per_image_seeds == {"LR_StepBlendedKSampler"}
    assert plan.preflight["3"]["inputs"]["batch_seeds"] == "1,2" and plan.preflight["1"]["inputs"]["batch_size"] == 2
    with pytest.raises(BatchError, match="draws one noise"):
        prepare(manifest, tmp_path, workflow("KSampler"), definitions, jobs, Subject(), None, 2)
    assert "draws one noise" in json.loads((tmp_path / "manifest.json").read_text())["refused"]


def test_a_batch_that_fails_in_a_slot_fails_alone(fake, tmp_path):
    """A group the preflight does not build (other overrides than the largest group's: noise added to the refiner)
    fails in its slot with the reason; the other group runs on the other server."""
    noisy = (("Refine", "add_noise", "enable"),)
    jobs = [Job("a {}", 1), Job("a {}", 2), Job("b {}", 3, noisy), Job("b {}", 4, noisy)]
    first, second = fake(), fake()
    output = tmp_path / "out"
    plan, seconds = ends(lambda: servers.run_on_servers(workflow(), jobs, Subject(), output, [first.url, second.url],
                                                        batch=2, poll=0.05))
    assert set(plan.failed) == {jobs[2].key, jobs[3].key}
    assert all("--batch: node 'Refine' (KSamplerAdvanced) draws one noise" in why for why in plan.failed.values())
    assert [r.seed for r in plan.records] == [1, 2]
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["jobs"][jobs[2].key]["error"] == plan.failed[jobs[2].key]
    assert len(first.prompts) + len(second.prompts) == 1  # the failed batch was never sent


def test_a_server_that_forgets_a_prompt_has_it_run_elsewhere(fake, tmp_path, monkeypatch):
    """A server that took a prompt and then holds it neither queued nor done (restarted) loses the job to the others;
    a server that only ever forgets has each job fail after ``max_retries`` retries: the run ends."""
    monkeypatch.setattr(servers, "LOST_CHECK", 0.2)
    forgetful, good = fake({"/history": (200, b"{}")}), fake()
    jobs = [Job("a {}", 1), Job("a {}", 2)]
    plan, _ = ends(lambda: servers.run_on_servers(workflow(), jobs, Subject(), tmp_path / "a",
                                                  [forgetful.url, good.url], poll=0.05, retry_after=0.05))
    assert plan.failed == {} and len(plan.records) == 2
    entries = json.loads((tmp_path / "a" / "manifest.json").read_text())["jobs"].values()
    retried = [e for e in entries if e.get("retries")]
    assert len(retried) == 1 and retried[0]["server"] == good.url
    assert retried[0]["retries"][0]["server"] == forgetful.url and "neither queued nor done" in \
        retried[0]["retries"][0]["error"]

    plan, _ = ends(lambda: servers.run_on_servers(workflow(), jobs[:1], Subject(), tmp_path / "b", [forgetful.url],
                                                  poll=0.05, retry_after=0.05, max_retries=2))
    assert list(plan.failed.values()) == [plan.failed[jobs[0].key]]
    assert plan.failed[jobs[0].key].startswith("retried 2 times; last: ")
    entry = json.loads((tmp_path / "b" / "manifest.json").read_text())["jobs"][jobs[0].key]
    assert len(entry["retries"]) == 3 and entry["images"] == []


def test_an_image_outside_the_output_folder_is_refused(fake, tmp_path):
    """A server naming an image path that climbs out of the output folder fails that job; nothing is written there."""
    server = fake()
    original = server.queue

    def climbing(prompt: dict) -> dict:
        answer = original(prompt)
        for output in server.history[answer["prompt_id"]]["outputs"].values():
            for image in output["images"]:
                image["subfolder"] = "../../escaped"
        return answer

    server.queue = climbing
    plan, _ = ends(lambda: servers.run_on_servers(workflow(), [Job("a {}", 1)], Subject(), tmp_path / "out",
                                                  [server.url], poll=0.05))
    (why,) = plan.failed.values()
    assert "names an image outside the output folder" in why
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
