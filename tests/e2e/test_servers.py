"""Issue 27: the runner over real ComfyUI servers (``run --server URL``), two of them started here on loopback
ports with the pack and the tiny models, each stopped by its process id.

One of them is killed mid-run (4 jobs): every job still completes, each once in the manifest, no image half-written, and
the images equal the in-process runner's pixel for pixel; a resumed run makes nothing twice. A server that refuses
prompts fails its jobs with its message and stops no other; a server that cannot take the run (not answering, a
login in front of it, no pack) stops it before any job, in one line naming it. (Stub servers stand in for the
last three: a small HTTP server answering as such a server would.) The faults of a server slot (malformed answers, a
failing ``/view``, an image that cannot be written, a batch the graph cannot take) are tested with stand-in servers
alone, in tests/unit/test_headless_faults.py.
"""

from __future__ import annotations

import http.server
import json
import logging
import re
import threading
import time
import urllib.request
from pathlib import Path

import comfy_servers
import numpy as np
import pytest
from PIL import Image

# This module starts interpreters or servers that load models of their own: the session's tiny models are
# dropped first (memory_budget.py: a worker and what it starts share 7 GiB).
pytestmark = pytest.mark.usefixtures("session_models_released")

PACK_ROOT = Path(__file__).resolve().parents[2]
FLAGS = ("--fp16-unet", "--fp8_e4m3fn-text-enc")  # the servers' weights' storage (the fixture servers says why)
WORKFLOW = PACK_ROOT / "workflows" / "layout_retouch_stage1_layout.json"
SMALL = ["Vanilla model (plain SD 1.5).ckpt_name=tiny_vanilla.safetensors",
         "Personalized model (DreamBooth).ckpt_name=tiny_personalized.safetensors",
         "EmptyLatentImage.width=64", "EmptyLatentImage.height=64",
         "LR_StepBlendedKSampler.steps=4", "LR_StepBlendedKSampler.lambda1=1"]


def arguments(output: Path, urls: list[str], seeds: str = "3,4", prompts=("a {} on a beach", "a {} in the snow"),
              extra: tuple[str, ...] = ()) -> list[str]:
    args = ["run", str(WORKFLOW), "--seeds", seeds, "--subject", "sks vase", "--output", str(output), "--cpu", *extra]
    for url in urls:
        args += ["--server", url]
    for prompt in prompts:
        args += ["--prompt", prompt]
    for item in SMALL:
        args += ["--set", item]
    return args


@pytest.fixture(scope="module")
def servers(tiny_files, tmp_path_factory):
    """Two ComfyUI servers with the tiny SD1.x checkpoints, started together, with ``--fp16-unet
    --fp8_e4m3fn-text-enc`` (weights stored in fp16 and fp8, computed in float32): 0.7 GB less each, so that both
    with this worker stay within the suite's memory budget (7 GiB; tests/memory_budget.py). The in-process runs
    they are compared with set the same."""
    import torch

    started = []
    try:
        for k in range(2):
            base = tmp_path_factory.mktemp(f"comfyui_{k}")
            comfy_servers.link_models(base, [("checkpoints", tiny_files["tiny_vanilla"]),
                                             ("checkpoints", tiny_files["tiny_personalized"])])
            started.append(comfy_servers.Server(base, threads=torch.get_num_threads(), flags=FLAGS))
        for server in started:
            server.wait()
        yield started
    finally:
        for server in started:
            server.stop()


def jobs_done(output: Path) -> int:
    try:
        manifest = json.loads((output / "manifest.json").read_text())
    except (OSError, ValueError):
        return 0
    return sum(1 for job in manifest["jobs"].values() if job.get("images"))


def pixels(output: Path, job: dict) -> np.ndarray:
    (path,) = job["images"]
    return np.asarray(Image.open(output / path))


def test_a_server_killed_mid_run_loses_nothing(servers, run_here, tiny_files, tmp_path, caplog, measured,
                                              monkeypatch):
    from comfy.cli_args import args

    from comfyui_layout_retouch.headless import cli

    monkeypatch.setattr(args, "fp16_unet", True)  # as the servers run (the fixture says why)
    monkeypatch.setattr(args, "fp8_e4m3fn_text_enc", True)

    alive, doomed = servers
    output = tmp_path / "servers"
    codes = []
    runner = threading.Thread(target=lambda: codes.append(cli.main(arguments(output, [alive.url, doomed.url]))))
    start = time.monotonic()
    runner.start()
    while jobs_done(output) == 0 and runner.is_alive() and time.monotonic() - start < 300:
        time.sleep(0.1)
    doomed.kill()  # mid-run: 1 of 4 jobs written
    runner.join(600)
    assert not runner.is_alive() and codes == [0]
    seconds = time.monotonic() - start
    manifest = json.loads((output / "manifest.json").read_text())
    jobs = manifest["jobs"]
    assert len(jobs) == 4 and all(len(job["images"]) == 1 and (output / job["images"][0]).is_file()
                                  for job in jobs.values())
    assert len({job["images"][0] for job in jobs.values()}) == 4  # no image twice
    assert not list(output.rglob("*.part"))  # nothing half-written
    counts = manifest["servers"]
    assert counts[doomed.url]["retried"] >= 1 and counts[alive.url]["done"] + counts[doomed.url]["done"] == 4
    retried = [job for job in jobs.values() if job.get("retries")]
    assert retried and all(job["server"] == alive.url and job["retries"][0]["server"] == doomed.url
                           for job in retried)

    # The same jobs in this process: the same pixels.
    here = tmp_path / "here"
    models = ["--models", str(tiny_files["tiny_vanilla"].parent.parent)]
    assert run_here([a for a in arguments(here, [], seeds="3,4", prompts=("a {} in the snow",))] + models) == 0
    ours = json.loads((here / "manifest.json").read_text())["jobs"]
    assert len(ours) == 2
    for key, job in ours.items():
        assert np.array_equal(pixels(here, job), pixels(output, jobs[key])), key

    # Resumed with the server left: nothing runs again, nothing is rewritten.
    stamps = {p: (output / p).stat().st_mtime_ns for job in jobs.values() for p in job["images"]}
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert cli.main(arguments(output, [alive.url])) == 0
    assert "4 jobs, 4 already done" in caplog.text
    assert stamps == {p: (output / p).stat().st_mtime_ns for p in stamps}
    measured(f"runner over 2 ComfyUI servers, one killed after the first image: 4 of 4 jobs, "
             f"{counts[alive.url]['done']} on the live one, {counts[doomed.url]['done']} on the killed one, "
             f"{counts[doomed.url]['retried']} retried, {seconds:.0f} s; images equal the in-process runner's")


class Stub(http.server.ThreadingHTTPServer):
    """A small HTTP server answering ``routes`` (path -> (status, JSON body)); any other path: 404. POSTs are
    answered after ``delay`` seconds (a server at work)."""

    def __init__(self, routes: dict[str, tuple[int, object]], delay: float = 0.0) -> None:
        routes_ = routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self) -> None:
                status, body = routes_.get(self.path.split("?")[0], (404, {"error": "no such path"}))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802  (http.server's name)
                self.answer()

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(delay)
                self.answer()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


REFUSAL = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                     "details": ""},
           "node_errors": {"8": {"errors": [{"message": "Value not in list", "details": "sampler_name: 'x' not in "
                                             "[...]"}], "class_type": "LR_StepBlendedKSampler"}}}


def test_a_refusing_server_fails_only_its_jobs(servers, tmp_path):
    """A stub that lists the same nodes and files as the live server but refuses every prompt: the jobs it takes
    fail with its message in the manifest; the live server runs the others."""
    from comfyui_layout_retouch.headless import cli

    alive = servers[0]
    info = json.loads(urllib_get(alive.url + "/object_info"))
    # (its answers take a second, so that each server takes a job)
    stub = Stub({"/object_info": (200, info), "/prompt": (400, REFUSAL), "/system_stats": (200, {})}, delay=1.0)
    output = tmp_path / "out"
    try:
        assert cli.main(arguments(output, [stub.url, alive.url], seeds="7,8", prompts=("a {} on a beach",))) == 1
    finally:
        stub.shutdown()
    jobs = json.loads((output / "manifest.json").read_text())["jobs"]
    failed = [job for job in jobs.values() if job.get("error")]
    done = [job for job in jobs.values() if job.get("images")]
    assert len(jobs) == 2 and len(failed) == len(done) == 1
    for job in failed:
        assert job["server"] == stub.url and "sampler_name: 'x' not in" in job["error"]


def urllib_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return answer.read()


@pytest.mark.parametrize("kind, says", [
    ("unreachable", r"server http://127\.0\.0\.1:\d+ does not answer .*Fix: start it, or check the URL"),
    ("login", r"server http://127\.0\.0\.1:\d+ answers 401 .*authenticating proxy.*Fix: give the URL of the ComfyUI "
              r"server itself"),
    ("no pack", r"server http://127\.0\.0\.1:\d+ cannot read the workflow: node #\d+ is of type "
                r"'LR_StepBlendedKSampler', which this ComfyUI does not have.*Fix: install the same custom nodes "
                r"\(this pack\)"),
])
def test_a_server_that_cannot_take_the_run_stops_it_first(servers, tmp_path, capsys, kind, says):
    from comfyui_layout_retouch.headless import cli

    stub = None
    if kind == "unreachable":
        url = f"http://127.0.0.1:{comfy_servers.free_port()}"
    else:  # a login in front, or ComfyUI's own nodes without the pack's
        info = json.loads(urllib_get(servers[0].url + "/object_info"))
        stub = Stub({"/object_info": (401, {}) if kind == "login" else
                     (200, {k: v for k, v in info.items() if not k.startswith("LR_")})})
        url = stub.url
    output = tmp_path / "out"
    try:
        assert cli.main(arguments(output, [url])) == 2
    finally:
        if stub is not None:
            stub.shutdown()
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and re.search(says, said[0]), said
    assert [p.name for p in output.iterdir()] == ["manifest.json"]
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["jobs"] == {} and url in manifest["servers"]["refused"]
