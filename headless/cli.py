"""Command line: ``python -m comfyui_layout_retouch run WORKFLOW.json [options]``.

(``python path/to/comfyui-layout-retouch run ...`` works the same where the folder's name is
not importable.) ``... eval RUN_DIR [RUN_DIR ...] --references DIR --dino DIR --clip DIR``: the
papers' metrics over runner outputs (``evaluation/``), without ComfyUI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from ..benchmark import FAMILIES as BENCH_FAMILIES
from ..host import PACK_ROOT, describe_search, find_comfyui

logger = logging.getLogger(__name__)


MODEL_FOLDERS = ("checkpoints", "loras", "embeddings", "sams", "diffusion_models", "vae")


def start_host(cpu: bool, models: Path | None = None) -> None:
    """Import ComfyUI as its server would, with its extra nodes, custom nodes and this pack.

    ``models``: an extra models folder (with ``checkpoints/``, ``loras/``, ... inside), searched
    before ComfyUI's own.
    """
    comfy_root = find_comfyui()
    if comfy_root is None:
        sys.exit(describe_search())
    if str(comfy_root) not in sys.path:
        sys.path.insert(0, str(comfy_root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu or comfy.cli_args.args.cpu
    import folder_paths
    import utils.extra_config  # noqa: F401  (as main.py: before nodes.py puts comfy/ first on sys.path)

    import nodes

    if models is not None:
        for name in MODEL_FOLDERS:
            folder_paths.add_model_folder_path(name, str(models / name), is_default=True)

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    if "LR_StepBlendedKSampler" not in nodes.NODE_CLASS_MAPPINGS:  # the pack is not in custom_nodes/
        asyncio.run(nodes.load_custom_node(str(PACK_ROOT)))


def usage(flag: str, problem: str, fix: str):
    """A bad ``run`` argument: one line naming the flag, the problem and the fix, and exit status 2 (as argparse
    does), before ComfyUI starts."""
    print(f"run: {flag}: {problem} Fix: {fix}", file=sys.stderr)  # noqa: T201  (the command's own message)
    raise SystemExit(2)


def workflow_titles(workflow: dict) -> set[str]:
    """The titles and types of a workflow's nodes (UI format, subgraphs' nodes included; or API format)."""
    if "nodes" not in workflow:
        return {t for n in workflow.values() if isinstance(n, dict)
                for t in (n.get("_meta", {}).get("title"), n.get("class_type")) if t}
    graphs = [workflow["nodes"], *(d.get("nodes", []) for d in (workflow.get("definitions") or {}).get("subgraphs", []))]
    return {t for nodes in graphs for n in nodes for t in (n.get("title"), n.get("type")) if t}


def check_run(args) -> None:
    """Refuse, in one line each, what would fail only after ComfyUI has loaded (or run on empty prompts)."""
    for flag, path in (("workflow", args.workflow), *(("--prompts-file", Path(f)) for f in args.prompts_file or []),
                       ("--reference", args.reference)):
        if path is not None and not Path(path).is_file():
            usage(flag, f"{path} does not exist.", "give the path of an existing file.")
    if getattr(args, "servers_file", None) is not None and not Path(args.servers_file).is_file():
        usage("--servers-file", f"{args.servers_file} does not exist.", "give a file of server URLs, one a line.")
    for url in getattr(args, "server", []):
        if not url.startswith(("http://", "https://")):
            usage("--server", f"'{url}' is not an http(s) URL.", "write e.g. http://127.0.0.1:8188.")
    if getattr(args, "in_flight", 1) < 1:
        usage("--in-flight", f"{args.in_flight} runs no job.", "give 1 or more.")
    try:
        chosen = seeds(args.seeds)
    except ValueError:
        chosen = []
    if not chosen:
        usage("--seeds", f"'{args.seeds}' is not a seed list.", "write e.g. '0-7' (a range) or '0,3,5'.")
    if not read_prompts(args):
        usage("--prompt", "no prompt is given, so the workflow's prompts would run empty.",
              "give --prompt 'a {} on a beach' (repeatable; {} is the subject) or --prompts-file FILE.")
    try:
        workflow = json.loads(Path(args.workflow).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        usage("workflow", f"{args.workflow} is not a workflow file ({error}).", "give a workflow saved by ComfyUI.")
    titles = workflow_titles(workflow)
    for title, name, _ in parse_set(args.set):
        if title not in titles:
            usage("--set", f"'{title}.{name}': the workflow has no node titled '{title}'.",
                  "use a node's title as shown in ComfyUI, or its type (e.g. KSamplerAdvanced.steps=30).")


def servers(args) -> list[str]:
    """The ``--server`` URLs and those of ``--servers-file`` (one a line; blank lines and # comments skipped)."""
    urls = list(args.server)
    if args.servers_file is not None:
        urls += [line.strip() for line in args.servers_file.read_text().splitlines()
                 if line.strip() and not line.strip().startswith("#")]
    return urls


def run_jobs(args, workflow: dict, jobs: list, subject) -> int:
    """``run``: the jobs in this process, or through the servers' HTTP API (``--server``). Exit status 0 when every
    job ran; 1 when one failed (the manifest says why) or the workflow cannot take ``--batch`` (refused before any
    job); 2 when a server cannot take the jobs (refused before any job)."""
    from .client import ServerError
    from .jobs import BatchError

    urls = servers(args)
    try:
        if urls:
            from .servers import run_on_servers

            plan = run_on_servers(workflow, jobs, subject, args.output.resolve(), urls, args.reference,
                                  args.workflow.name, batch=args.batch, in_flight=args.in_flight)
        else:
            start_host(args.cpu, args.models)
            from .local import run_local

            plan = run_local(workflow, jobs, subject, args.output.resolve(), args.reference, args.workflow.name,
                             batch=args.batch)
    except BatchError as error:
        print(f"run: {error}", file=sys.stderr)  # noqa: T201  (the command's own message)
        return 1
    except ServerError as error:
        print(f"run: --server: {error}", file=sys.stderr)  # noqa: T201
        return 2
    where = f" on {len(urls)} servers" if urls else ""
    logger.info("ran %d of %d jobs%s, %d failed; manifest: %s", len(plan.records), len(jobs), where, len(plan.failed),
                args.output / "manifest.json")
    return 1 if plan.failed else 0


def parse_set(items: list[str]) -> tuple[tuple[str, str, object], ...]:
    """``TITLE.input=value`` (value read as JSON when it parses, else as text)."""
    out = []
    for item in items:
        target, _, value = item.partition("=")
        title, _, name = target.rpartition(".")
        if not title or not name or not _:
            raise SystemExit(f"--set {item!r}: write TITLE.input=value, e.g. 'KSampler (Advanced): retouch.steps=30'")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.append((title, name, parsed))
    return tuple(out)


def read_prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    for path in args.prompts_file or []:
        prompts += [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    return prompts


def seeds(text: str) -> list[int]:
    """``'0-7'`` or ``'0,3,5'``; raises ValueError on anything else."""
    if "-" in text and "," not in text:
        first, last = (int(v) for v in text.split("-"))
        return list(range(first, last + 1))
    return [int(v) for v in text.split(",")]


# ``run --method``: the shipped workflow of each method of a Table 1-style comparison, and what it sets
# (before the user's --set, which win). "plain" is the personalized model alone: stage 1 at lambda1 = 0 is,
# bit for bit, one KSampler on the personalized model (docs/nodes.md, Step-Blended KSampler).
METHODS = {
    "plain": ("layout_retouch_stage1_layout.json", ["LR_StepBlendedKSampler.lambda1=0"]),
    "layout-retouch": ("layout_retouch_full_dreambooth.json", []),
    "pick-and-draw": ("pick_and_draw_dreambooth.json", []),
}


def add_eval_parser(sub) -> None:
    ev = sub.add_parser("eval", help="the papers' metrics (I_DINO, I_CLIP, T_CLIP, IS, subject centres, "
                        "ImageReward) over runner outputs, one folder per method")
    ev.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                    help="a runner --output folder (with manifest.json); one per method, named by the folder")
    ev.add_argument("--references", type=Path, required=True, help="the folder of your subject's photos")
    ev.add_argument("--dino", type=Path, required=True, help="a local facebook/dino-vits16 folder")
    ev.add_argument("--clip", type=Path, required=True, help="a local openai/clip-vit-base-patch32 folder")
    ev.add_argument("--inception", type=Path, help="torchvision's inception_v3 weights (inception_v3_google-"
                    "0cc3c7bd.pth), for the Inception Score")
    ev.add_argument("--sam", type=Path, help="a Segment Anything checkpoint, for the subject centres (L&R Fig. 1)")
    ev.add_argument("--image-reward", type=Path, help="ImageReward.pt (with the image-reward package)")
    ev.add_argument("--image", default=None, help="which of a job's images: its SaveImage prefix, e.g. layout "
                    "(default: the last it saved, the final image)")
    ev.add_argument("--is-min-images", type=int, default=8, help="the Inception Score of a prompt needs this many "
                    "images (default 8)")
    ev.add_argument("--device", default=None, help="torch device (default: cuda where available, else cpu)")
    ev.add_argument("--output", type=Path, default=Path("output/eval"), help="where eval.json, eval.md and the "
                    "pictures go")


def run_eval(args) -> int:
    from ..evaluation.evaluate import evaluate
    from ..evaluation.runs import EvalInputError

    try:
        evaluate(args.runs, args.references, args.dino, args.clip, args.output, inception=args.inception,
                 sam=args.sam, image_reward=args.image_reward, image=args.image, is_min_images=args.is_min_images,
                 device=args.device)
    except EvalInputError as error:
        raise SystemExit(f"eval: {error}") from None
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="comfyui_layout_retouch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a workflow over prompts and seeds, without the web server")
    run.add_argument("workflow", type=Path, nargs="?", help="a workflow file (UI or API format), e.g. "
                     "workflows/....json (or --method)")
    run.add_argument("--method", choices=sorted(METHODS), help="instead of a workflow: the shipped one of a method "
                     "(plain: layout_retouch_stage1_layout at lambda1 0, the personalized model alone; "
                     "layout-retouch: layout_retouch_full_dreambooth; pick-and-draw: pick_and_draw_dreambooth)")
    run.add_argument("--prompt", action="append", help="a prompt template; {} is the subject (repeatable)")
    run.add_argument("--prompts-file", action="append", help="a file of prompt templates, one a line (repeatable)")
    run.add_argument("--seeds", default="0", help="seeds: '0-7' or '0,3,5' (default 0)")
    run.add_argument("--subject", default="sks vase", help="fills {} in the personalized prompt")
    run.add_argument("--class-name", default=None, help="fills {} in the vanilla prompt (default: the subject's "
                     "last word)")
    run.add_argument("--subject-word", default=None, help="the word the cross-attention mask looks for (default: "
                     "the subject's last word)")
    run.add_argument("--reference", type=Path, help="the reference photo")
    run.add_argument("--output", type=Path, default=Path("output/layout_retouch"), help="output folder")
    run.add_argument("--batch", type=int, default=1, help="run up to N seeds of one prompt as one batch (one graph "
                     "execution, for throughput on a GPU); each image equals its single run (default 1)")
    run.add_argument("--set", action="append", default=[], help="TITLE.input=value: any other input")
    run.add_argument("--models", type=Path, help="an extra models folder (checkpoints/, loras/, embeddings/, sams/)")
    run.add_argument("--cpu", action="store_true", help="run on the CPU")
    run.add_argument("--server", action="append", default=[], metavar="URL", help="send the jobs to this ComfyUI "
                     "server through its HTTP API instead of running here (repeatable: the jobs are spread over "
                     "the servers, each with the same models and this pack; e.g. http://127.0.0.1:8188)")
    run.add_argument("--servers-file", type=Path, help="a file of server URLs, one a line (with --server or alone)")
    run.add_argument("--in-flight", type=int, default=1, help="jobs each server runs at a time (default 1; 2 keeps "
                     "a GPU busy while the runner fetches images)")
    bench = sub.add_parser("bench", help="time each part of the pipeline against a plain generation")
    bench.add_argument("--size", type=int, default=None, help="image size (default: 512 on a GPU, 64 on the CPU)")
    bench.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    bench.add_argument("--repeats", type=int, default=None, help="runs per part, median kept (default 3 GPU, 1 CPU)")
    bench.add_argument("--cpu", action="store_true", help="run on the CPU with the tiny model")
    bench.add_argument("--family", choices=BENCH_FAMILIES, default="sd1", help="sd1 (every part), sdxl (the "
                       "headline's Layout-and-Retouch rows) or a DiT family: flux, chroma, qwen_image, sd3, flux2 (Layout-and-"
                       "Retouch: plain, shipped default, new reference, the paper's graph); on a GPU at the family's "
                       "native size by default")
    bench.add_argument("--parts", choices=["all", "headline"], default="all", help="all (SD1.x: every part; SDXL: "
                       "the headline's Layout-and-Retouch rows) or headline (the headline's rows with "
                       "Pick-and-Draw's, for either family)")
    bench.add_argument("--output", type=Path, default=Path("bench.json"), help="the JSON report")
    masks = sub.add_parser("bench-masks", help="time Segment Anything and the adaptive mask at 512x512")
    masks.add_argument("--sam", nargs="+", default=["vit_b", "vit_h"], choices=["vit_b", "vit_l", "vit_h"],
                       help="SAM sizes to time (random weights)")
    masks.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    add_eval_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "eval":
        return run_eval(args)
    if args.command == "bench-masks":
        from ..benchmark.masks import time_masks

        time_masks(args.sam, device=args.device)
        return 0
    if args.command == "bench":
        start_host(args.cpu)
        import torch

        from ..benchmark.run import main as bench_main
        from ..benchmark.run import native_size

        gpu = torch.cuda.is_available() and not args.cpu
        bench_main(args.size or (native_size(args.family) if gpu else 64), args.steps, args.repeats or (3 if gpu else 1),
                   args.cpu, args.output, args.family, args.parts)
        return 0

    from .jobs import Job, Subject

    if args.batch < 1:
        raise SystemExit(f"--batch {args.batch}: give 1 (no batching) or more seeds per batch")
    if (args.workflow is None) == (args.method is None):
        raise SystemExit("run: give a workflow file or --method (plain, layout-retouch, pick-and-draw), not both")
    if args.method is not None:
        name, sets = METHODS[args.method]
        args.workflow, args.set = PACK_ROOT / "workflows" / name, sets + args.set

    check_run(args)
    workflow = json.loads(args.workflow.read_text())
    templates = read_prompts(args)
    last = args.subject.split()[-1]
    subject = Subject(args.subject, args.class_name or last, args.subject_word or last)
    overrides = parse_set(args.set)
    jobs = [Job(t, s, overrides) for t in templates for s in seeds(args.seeds)]
    return run_jobs(args, workflow, jobs, subject)
