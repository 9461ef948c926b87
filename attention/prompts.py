"""A source path's prompts, as the swap's rows take them: prepared here, once, from the CONDITIONINGs the swap
node receives, and read by the session at each step and call.

Per CFG half (positive, negative), a path has:

- its text embedding: ``[1, tokens, dim]``, or ``[steps, tokens, dim]`` (one per sampling step: the entry
  ComfyUI's sampler applies at that step by its ``start_percent``/``end_percent``, as a Null-Text Inversion's
  ``null_negative``);
- its row-wise model inputs besides the latent and the text, made by the model's own ``extra_conds`` as
  ComfyUI's ``encode_model_conds`` makes them: SDXL's ADM vector ``y``; Flux's pooled text ``y`` and its
  ``guidance``; none on SD1.x.

In a call, the model's family joins the rows' texts (``join_texts``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import host_api
from ..errors import Problem
from ..records import InversionTrajectory, base_model
from .families import family_of
from .family import UnsupportedModel

Extras = dict[str, torch.Tensor]


class PromptProblem(ValueError):
    """A CONDITIONING the swap cannot use: ``half`` 0 is the path's positive, 1 its negative."""

    def __init__(self, half: int, problem: Problem) -> None:
        super().__init__(" ".join(problem))
        self.half = half
        self.problem = problem


@dataclass(frozen=True)
class PathPrompts:
    """One source path's ``(positive, negative)`` text embeddings and row-wise model inputs."""

    text: tuple[torch.Tensor, torch.Tensor]
    extras: tuple[Extras, Extras] = ({}, {})

    def __deepcopy__(self, memo) -> PathPrompts:
        return self  # immutable; rides in a patched model's options, which ModelPatcher.clone() deep-copies

    def at(self, half: int, step: int) -> torch.Tensor:
        """The text embedding ``[1, tokens, dim]`` of CFG ``half`` at ``step``."""
        text = self.text[half]
        return text if text.shape[0] == 1 else text[step:step + 1]

    @property
    def key(self) -> tuple:
        """What the path's attention depends on in its prompts (tensors compared by value): the cache's key."""
        return (*self.text, *(item for half in self.extras for name in sorted(half) for item in (name, half[name])))


def conditioning_problem(conditioning, model) -> Problem | None:
    """Why ``model`` cannot read a CONDITIONING (empty, or text of another model's width: 768 for SD1.x, 1024
    for SD2.x, 2048 for SDXL, 4096 for Flux's T5), or None."""
    if not conditioning:
        return "is an empty CONDITIONING.", "connect a CLIP Text Encode output."
    try:
        width = family_of(model).text_width(model)
    except UnsupportedModel:  # refused at its model input, by the node
        width = None
    for entry in conditioning:
        if width is not None and entry[0].shape[-1] != width:
            return (f"has text width {entry[0].shape[-1]} but the {base_model(model)} model reads {width}: the "
                    "prompt was encoded with another family's CLIP.",
                    "encode the prompt with the CLIP of the checkpoint that gives this model.")
    return None


def step_text(conditioning, model, sampling_sigmas: torch.Tensor) -> torch.Tensor | Problem:
    """The text embedding a path's rows take at each sampling step of ``sampling_sigmas`` (descending, step
    ``s`` starting at ``sampling_sigmas[s]``), or the problem: at some step no entry or several apply (combined
    prompts, whose predictions ComfyUI averages, have no one embedding for the source rows)."""
    if len(conditioning) == 1:
        return conditioning[0][0][:1].detach()
    sampling = model.get_model_object("model_sampling")
    bounds = [(sampling.percent_to_sigma(entry[1].get("start_percent", 0.0)),
               sampling.percent_to_sigma(entry[1].get("end_percent", 1.0))) for entry in conditioning]
    chosen = []
    for step, sigma in enumerate(sampling_sigmas[:-1].tolist()):
        active = [i for i, (start, end) in enumerate(bounds) if end <= sigma <= start]  # as ComfyUI's sampler
        if len(active) != 1:
            return (f"has {len(conditioning)} entries, of which {len(active)} apply at step {step} (sigma "
                    f"{sigma:.4g}); the source rows take one prompt per step.",
                    "connect a single CLIP Text Encode, or a Null-Text Inversion's null_negative made on the same "
                    "steps and scheduler as the inversions.")
        chosen.append(conditioning[active[0]][0][:1].detach())
    tokens = math.lcm(*(t.shape[1] for t in chosen))  # as ComfyUI batches prompts of other lengths
    return torch.cat([t.repeat(1, tokens // t.shape[1], 1) for t in chosen])


def _model_conds(model, entry: dict, cross_attn: torch.Tensor, latent: torch.Tensor, prompt_type: str) -> dict:
    """What the model's own ``extra_conds`` makes of a CONDITIONING entry with text ``cross_attn`` on ``latent``, as
    ComfyUI's ``encode_model_conds`` calls it (sizes default to the latent's in pixels)."""
    h, w = latent.shape[-2:]
    scale = host_api.pixels_per_latent(model)
    params = {**entry, "cross_attn": cross_attn, "device": "cpu", "noise": latent[:1],
              "width": entry.get("width", w * scale), "height": entry.get("height", h * scale),
              "prompt_type": entry.get("prompt_type", prompt_type)}
    return model.model.extra_conds(**params)


def model_extras(model, conditioning, latent: torch.Tensor, prompt_type: str) -> Extras:
    """The row-wise model inputs ComfyUI's sampler gives ``model`` with a CONDITIONING's first entry on
    ``latent``, one row each."""
    import comfy.conds

    conds = _model_conds(model, conditioning[0][1], conditioning[0][0], latent, prompt_type)
    return {name: cond.cond[:1].detach() for name, cond in conds.items()
            if name not in ("c_crossattn", "c_concat") and type(cond) is comfy.conds.CONDRegular
            and isinstance(cond.cond, torch.Tensor)}


def model_text(model, conditioning, text: torch.Tensor, latent: torch.Tensor, prompt_type: str) -> torch.Tensor:
    """A path's text embedding (one row a step) as the model reads it in a call: its ``c_crossattn`` (Flux.2 pads
    the text to 512 tokens at the front), row by row; the text itself where the model makes no ``c_crossattn``."""
    import comfy.conds

    rows = []
    for row in text.split(1):
        made = _model_conds(model, conditioning[0][1], row, latent, prompt_type).get("c_crossattn")
        ok = type(made) is comfy.conds.CONDRegular and isinstance(made.cond, torch.Tensor)
        rows.append(made.cond.detach() if ok else row)
    return torch.cat(rows)


def path_prompts(model, positive, negative, path: InversionTrajectory) -> PathPrompts:
    """A source path's prompts from its positive and negative CONDITIONING, on the path's schedule and latent.

    Raises:
        PromptProblem: a CONDITIONING the model cannot read, or one with no single entry at some step; a
            Null-Text Inversion's path with a negative other than its ``null_negative``.
    """
    texts = []
    for half, conditioning in enumerate((positive, negative)):
        found = conditioning_problem(conditioning, model)
        text = step_text(conditioning, model, path.sampling_sigmas) if found is None else found
        if isinstance(text, tuple):
            raise PromptProblem(half, text)
        texts.append(text)
    if path.null_text is not None and not _same_text(texts[1], path.null_text):
        what = "a single prompt" if texts[1].shape[0] == 1 < path.null_text.shape[0] else "another negative"
        raise PromptProblem(1, (f"is {what}, but the inversion of this path is a Null-Text Inversion, whose path "
                                "CFG sampling walks only with its fitted negative (one embedding per step): the "
                                "source rows would leave that path.",
                                "connect the Null-Text Inversion's null_negative output here."))
    latent = path.latents[0]
    texts = [model_text(model, conditioning, text, latent, prompt_type) for conditioning, text, prompt_type in
             ((positive, texts[0], "positive"), (negative, texts[1], "negative"))]
    return PathPrompts((texts[0], texts[1]), (model_extras(model, positive, latent, "positive"),
                                              model_extras(model, negative, latent, "negative")))


def _same_text(text: torch.Tensor, fitted: torch.Tensor) -> bool:
    return text.shape == fitted.shape and torch.equal(text.to(fitted), fitted)
