"""Images per minute of the runner over 1, 2 and 3 local ComfyUI servers (``run --server``) against the in-process
runner, on the tiny SD1.x models of the test suite (stage 1's workflow at 64x64 px, 4 steps), on this machine's CPU.

    .venv/bin/python tools/server_throughput.py [--jobs 12] [--servers 1,2,3]

Each server gets an equal share of the cores (OMP_NUM_THREADS), as one server per GPU would get its GPU; each is
warmed with one job (models loaded) before the timed run. The in-process runner is timed as a fresh ``run``
command (ComfyUI's start included) and by its jobs' own seconds (the manifest's, steady state).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PACK / "tests"))
WORKFLOW = PACK / "workflows" / "layout_retouch_stage1_layout.json"
SMALL = ["Vanilla model (plain SD 1.5).ckpt_name=tiny_vanilla.safetensors",
         "Personalized model (DreamBooth).ckpt_name=tiny_personalized.safetensors",
         "EmptyLatentImage.width=64", "EmptyLatentImage.height=64",
         "LR_StepBlendedKSampler.steps=4", "LR_StepBlendedKSampler.lambda1=1"]


def command(output: Path, seeds: str, extra: list[str]) -> list[str]:
    args = [sys.executable, str(PACK), "run", str(WORKFLOW), "--seeds", seeds, "--subject", "sks vase",
            "--prompt", "a {} on a beach", "--prompt", "a {} in the snow", "--output", str(output), "--cpu", *extra]
    for item in SMALL:
        args += ["--set", item]
    return args


def timed(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    import comfy_servers

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=12, help="images per timed run (2 prompts x jobs/2 seeds)")
    parser.add_argument("--servers", default="1,2,3")
    parser.add_argument("--models", type=Path, default=None, help="a models folder with checkpoints/ (default: the "
                        "test suite's tiny SD1.x set under .venv/tiny-models)")
    args = parser.parse_args()
    models = args.models or next((PACK / ".venv" / "tiny-models").glob("sd1-*"))
    seeds = f"100-{100 + args.jobs // 2 - 1}"
    cores = os.cpu_count() or 1
    env = dict(os.environ)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        wall = timed(command(root / "here", seeds, ["--models", str(models)]), env)
        manifest = json.loads((root / "here" / "manifest.json").read_text())
        steady = sum(job["seconds"] for job in manifest["jobs"].values())
        rows.append(("in-process (fresh command, ComfyUI's start included)", args.jobs / wall * 60))
        rows.append(("in-process, its jobs' own seconds (steady state)", args.jobs / steady * 60))
        for count in (int(n) for n in args.servers.split(",")):
            started = []
            try:
                for k in range(count):
                    base = root / f"servers{count}_{k}"
                    base.mkdir()
                    comfy_servers.link_models(base, [("checkpoints", models / "checkpoints" / name) for name in
                                                     ("tiny_vanilla.safetensors", "tiny_personalized.safetensors")])
                    started.append(comfy_servers.Server(base, threads=max(1, cores // count)))
                for server in started:
                    server.wait()
                urls = [arg for s in started for arg in ("--server", s.url)]
                for server in started:  # warm: each loads the models once
                    timed(command(root / f"warm{count}_{server.port}", "0", ["--server", server.url]), env)
                wall = timed(command(root / f"timed{count}", seeds, urls), env)
                rows.append((f"{count} server(s), {max(1, cores // count)} thread(s) each", args.jobs / wall * 60))
            finally:
                for server in started:
                    server.stop()
    print(f"| runner ({args.jobs} images, stage 1 at 64 px, 4 steps, {cores} cores) | images per minute |")  # noqa: T201
    print("|---|---|")  # noqa: T201
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} |")  # noqa: T201


if __name__ == "__main__":
    main()
