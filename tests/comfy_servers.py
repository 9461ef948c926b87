"""Real ComfyUI servers on loopback ports, for the browser test and the runner's ``--server`` tests: each
``main.py --cpu`` with the pack, the tiny models, its own input and output folders, stopped by its process id."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import comfy_host

PACK_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(base: Path, port: int) -> list[str]:
    """ComfyUI's ``main.py`` with the tiny models, input and output in ``base``.

    Where the pack is installed in the host's ``custom_nodes/`` (CI's second pass), the server loads it
    from there, as the README's main command does (models, input and output moved by flags that leave
    ``custom_nodes/`` alone); else from a temporary ``custom_nodes/`` (``--base-directory``) holding a link
    to the checkout.
    """
    command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--disable-auto-launch"]
    if not comfy_host.installed():
        (base / "custom_nodes").mkdir(exist_ok=True)
        link = base / "custom_nodes" / "comfyui-layout-retouch"
        if not link.exists():
            link.symlink_to(PACK_ROOT)
        return [*command, "--base-directory", str(base)]
    folders = sorted(p.name for p in (base / "models").iterdir())
    config = base / "extra_model_paths.yaml"
    config.write_text(f"tests:\n  base_path: {base / 'models'}\n" + "".join(f"  {f}: {f}\n" for f in folders))
    for name in ("output", "temp", "user"):
        (base / name).mkdir(exist_ok=True)
    return [*command, "--extra-model-paths-config", str(config), "--input-directory", str(base / "input"),
            "--output-directory", str(base / "output"), "--temp-directory", str(base / "temp"),
            "--user-directory", str(base / "user")]


def link_models(base: Path, files: list[tuple[str, Path]]) -> None:
    """``base/models/<folder>/<name>`` links to the tiny model files, and an empty ``base/input``."""
    for folder, path in files:
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
        target = base / "models" / folder / path.name
        if not target.exists():
            target.symlink_to(path)
    (base / "input").mkdir(exist_ok=True)


class Server:
    """A ComfyUI server process: ``url``, its folder ``base``, stopped (or killed) by its process id; ``flags`` are
    more of ``main.py``'s options."""

    def __init__(self, base: Path, threads: int | None = None, flags: tuple[str, ...] = ()) -> None:
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        if threads is not None:  # the test worker's share of the cores, as its in-process runs use
            env["OMP_NUM_THREADS"] = str(threads)
        self.log = open(base / f"server-{self.port}.log", "w")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen([*server_command(base, self.port), *flags], cwd=comfy_host.COMFYUI,
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait(self, limit: float = 180) -> None:
        """Until the server lists the pack's nodes; raise with its log when it exits or takes too long."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited: {self.log_text()[-3000:]}")
            try:
                urllib.request.urlopen(self.url + "/object_info/LR_StepBlendedKSampler", timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not start in {limit:.0f} s: {self.log_text()[-3000:]}")

    def log_text(self) -> str:
        self.log.flush()
        return (self.base / f"server-{self.port}.log").read_text()

    def kill(self) -> None:
        """Kill the process (SIGKILL): the server dies mid-job, as a crashed machine would."""
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()
