"""What an evaluation reads: runner output folders (one per method) and the reference photos, checked.

A runner output folder holds ``manifest.json`` (``headless/jobs.py`` writes it): ``workflow``,
``subject`` (``personalized``, ``vanilla``: the class name, ``word``) and ``jobs``, each with its
``template``, ``seed``, the ``texts`` it set and the ``images`` it saved (paths relative to the
folder, in the workflow's node order). One job gives one evaluated image: by default the last it
saved (the final image of the full workflows, which save the layout first), or the one whose
SaveImage prefix is ``image`` (e.g. ``layout``). T_CLIP's prompt is the template with ``{}``
replaced by the class name (the paper's practice: the placeholder token means nothing to CLIP).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

MANIFEST = "manifest.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class EvalInputError(ValueError):
    """An input of ``eval`` is missing or wrong; the message names the flag or file and the fix."""


@dataclass(frozen=True)
class Sample:
    """One evaluated image of a method."""

    template: str  # the prompt template, {} the subject: the key that pairs the methods' images
    seed: int
    prompt: str  # T_CLIP's text
    path: Path


@dataclass(frozen=True)
class Method:
    """One runner output folder."""

    name: str
    folder: Path
    workflow: str
    samples: tuple[Sample, ...]


def prefix_of(path: str) -> str:
    """The SaveImage prefix of a saved file's name: ``final`` for ``final_00001_.png``."""
    return Path(path).name.rsplit("_", 2)[0]


def fill(template: str, value: str) -> str:
    return template.replace("{}", value) if "{}" in template else template


def read_run(folder: Path, image: str | None = None) -> Method:
    """One method from a runner output folder; ``image``: the SaveImage prefix to evaluate (default:
    each job's last image).

    Raises:
        EvalInputError: no manifest, no jobs, an image missing, or no image with that prefix.
    """
    path = folder / MANIFEST
    if not path.is_file():
        raise EvalInputError(f"RUN_DIR {folder}: no {MANIFEST} in it. Give the --output folder of a "
                             "`run` (the runner writes the manifest there).")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise EvalInputError(f"RUN_DIR {folder}: {path} is not valid JSON ({e}); rerun the runner into it.") from e
    jobs = manifest.get("jobs") or {}
    if not jobs:
        raise EvalInputError(f"RUN_DIR {folder}: {path} lists no jobs; the run wrote no image yet.")
    noun = (manifest.get("subject") or {}).get("vanilla") or ""
    samples = []
    for key, job in sorted(jobs.items(), key=lambda kv: (kv[1]["template"], kv[1]["seed"], kv[0])):
        images = list(job.get("images") or [])
        if image is not None:
            images = [p for p in images if prefix_of(p) == image]
            if not images:
                found = sorted({prefix_of(p) for p in job.get("images") or []})
                raise EvalInputError(f"--image {image}: job {key} of {folder} saved no image with that prefix "
                                     f"(it saved {found}); give one of those.")
        if not images:
            raise EvalInputError(f"RUN_DIR {folder}: job {key} lists no image; rerun the runner to finish it.")
        chosen = folder / images[-1]
        if not chosen.is_file():
            raise EvalInputError(f"RUN_DIR {folder}: {chosen} is listed in the manifest but missing; rerun the "
                                 "runner into the folder (it redoes jobs whose images are gone).")
        template = job["template"]
        prompt = fill(template, noun) if template else next(
            (t for title, t in (job.get("texts") or {}).items() if title.startswith("Personalized prompt")), "")
        samples.append(Sample(template, int(job["seed"]), prompt, chosen))
    return Method(folder.name, folder, str(manifest.get("workflow", "")), tuple(samples))


def read_runs(folders: list[Path], image: str | None = None) -> list[Method]:
    """The methods, named by their folders (with the workflow where two folders share a name), all
    of one image size.

    Raises:
        EvalInputError: as :func:`read_run`; two methods of one name; images of mixed sizes.
    """
    methods = [read_run(f, image) for f in folders]
    names = [m.name for m in methods]
    if len(set(names)) < len(names):
        methods = [Method(f"{m.name} ({m.workflow})", m.folder, m.workflow, m.samples) for m in methods]
        names = [m.name for m in methods]
        if len(set(names)) < len(names):
            raise EvalInputError("RUN_DIR: two folders give one method name; give each method's run its own "
                                 "folder name (the name is the table's row).")
    check_one_size([s.path for m in methods for s in m.samples])
    return methods


def image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as picture:
        return picture.size


def check_one_size(paths: list[Path]) -> tuple[int, int]:
    """The one ``(width, height)`` of the generated images.

    Raises:
        EvalInputError: two sizes (the methods are not comparable and the contact sheets cannot
            pair them).
    """
    first = image_size(paths[0])
    for path in paths[1:]:
        size = image_size(path)
        if size != first:
            raise EvalInputError(f"RUN_DIR: images of mixed sizes: {paths[0]} is {first[0]}x{first[1]} but {path} "
                                 f"is {size[0]}x{size[1]}. Run every method at one width and height.")
    return first


def read_references(folder: Path) -> list[Path]:
    """The reference photos in ``folder`` (``.png``, ``.jpg``, ``.jpeg``, ``.webp``, ``.bmp``), sorted.

    Raises:
        EvalInputError: no such folder, or no photo in it.
    """
    if not folder.is_dir():
        raise EvalInputError(f"--references {folder}: no such folder. Give the folder of your subject's photos "
                             "(the {I_r^m} the identity metrics compare with).")
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        raise EvalInputError(f"--references {folder}: no image ({', '.join(IMAGE_SUFFIXES)}) in it. Put your "
                             "subject's photos there.")
    return photos


def load_pixels(path: Path) -> torch.Tensor:
    """An image file as RGB ``uint8 [H, W, 3]``."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as picture:
        return torch.from_numpy(np.array(picture.convert("RGB")))
