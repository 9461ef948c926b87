"""Pick-and-Draw's guidance as a ComfyUI SAMPLER (P&D Sec. 3.4, eq. 9-10).

At each guided step, before the step is taken, the latent is moved down the gradient of the
step's loss ``alpha * l_app + beta * l_lay`` (appearance steps and layout steps, each a range of
the sampler's steps counted from the noise end), ``iterations`` times; the step itself is then
taken by the base SAMPLER (ddim, euler, ...) exactly as it would be. Each iteration is one UNet
pass of the conditional half, with gradients, stopped after the last layer the losses read, and
its backward (with respect to the latent only: the weights get no gradient).

The update is the paper's ``z_t <- z_t - eta * grad_{z_t} l`` on the variance-preserving latent
``z_t``. ComfyUI's samplers walk ``x = z_t * sqrt(1 + sigma^2)`` (eps and v models: sigma_data
= 1), so the same update reads ``x <- x - eta * (1 + sigma^2) * grad_x l`` here.

Its size is capped, per image, at Polyak's step ``l / ||grad_x l||^2``: the step that takes the loss's
linearisation to 0, its minimum (both losses are at least 0). Where the paper's step is shorter, it is
taken as it is; where it would carry the latent past the linearised minimum, it stops there. Without
the cap the guidance cannot stay at its minimum nor move continuously near it: eq. 8's norm has a
gradient of unit size however small the difference of the maps, so the paper's step, ``eta * beta *
(1 + sigma^2)`` (about 2e5 at the first of 50 steps) times a unit-size gradient, is as long for a
difference of float rounding, or of a template nudged by 1e-4, as for a wrong layout. With the cap the
step shrinks with the loss: 0 at the minimum (a template equal to the generation's own unguided run,
or a palette of its own features, leaves the image unchanged), continuous near it.

Each guided step logs its losses (weighted, as the update sees them, at each iteration before its
update) and the size of the step's latent update relative to the latent (ComfyUI's console), so a
user can see guidance working or running away.

Unguided stretches are handed to the base sampler in one call, so with no guided step (alpha =
beta = 0, no palette and no template, or empty step ranges) the run is the base sampler's, bit for
bit. A guided step is a call of its own: exact for first-order samplers (ddim, euler); a
multistep sampler restarts its history there, and an ancestral one its noise sequence.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import Problem
from ..records import LayoutTemplate, Palette
from ..sampling.gradients import gradients_enabled, normal_tensor
from .losses import appearance_loss, layout_loss, subject_mask
from .probe import Probe, conditional_pass

logger = logging.getLogger(__name__)

# How a problem found while sampling reaches the user: (input name, problem) -> raises.
Report = Callable[[str, Problem], None]


@dataclass(frozen=True)
class Guidance:
    """The paper's hyper-parameters (P&D Sec. 4.1)."""

    eta: float = 10.0  # guidance ratio eta_g
    alpha: float = 10.0  # appearance weight
    beta: float = 100.0  # layout weight
    layout_steps: range = range(0, 10)
    appearance_steps: range = range(10, 20)
    iterations: int = 3
    threshold: float = 0.1  # tau of the generation's subject mask

    def unreached(self, n_steps: int, palette: Palette | None, template: LayoutTemplate | None) -> tuple[str, Problem] | None:
        """A connected palette or template (its loss on) whose steps a schedule of ``n_steps`` never reaches, as
        ``(input, problem)``, or None: run so, the loss would silently never act."""
        if self.eta == 0 or self.iterations <= 0:
            return None
        for source, weight, steps, name, first in ((template, self.beta, self.layout_steps, "template", "layout"),
                                                   (palette, self.alpha, self.appearance_steps, "palette", "appearance")):
            if source is not None and weight != 0 and len(steps) and steps.start >= n_steps:
                return f"{first}_start", (
                    f"is {steps.start}, but this sampler's schedule has {n_steps} steps (0-{n_steps - 1}), so the "
                    f"connected {name} would never be used ({first} steps {steps.start}-{steps.stop - 1}).",
                    f"set {first}_start and {first}_end within the schedule's steps (the paper's 0-9 and 10-19 are "
                    f"of 50), or disconnect the {name}.")
        return None

    def plan(self, n_steps: int, palette: Palette | None, template: LayoutTemplate | None) -> dict[int, tuple[bool, bool]]:
        """Per guided step: ``(layout, appearance)``."""
        if self.eta == 0 or self.iterations <= 0:
            return {}
        plan = {}
        for i in range(n_steps):
            layout = template is not None and self.beta != 0 and i in self.layout_steps
            appearance = palette is not None and self.alpha != 0 and i in self.appearance_steps
            if layout or appearance:
                plan[i] = (layout, appearance)
        return plan


class GuidedStep:
    """The loss of one guided step and its gradient with respect to the latent."""

    def __init__(self, guidance: Guidance, positions: list[int], template: LayoutTemplate | None, template_step,
                 palette: Palette | None, palette_step) -> None:
        self.guidance = guidance
        self.template_layers = () if template is None else tuple(l for s, l in template.maps if s == template_step)
        self.template_maps = [template.maps[(template_step, l)] for l in self.template_layers] if template else []
        self.palette_layers = () if palette is None else palette.layers
        self.palette_sets = [palette.features[(palette_step, l)] for l in self.palette_layers] if palette else []
        self.probe = Probe(positions, map_layers=frozenset(self.template_layers) | frozenset(self.palette_layers),
                           feature_layers=frozenset(self.palette_layers), stop=True)

    def loss(self, guider, x: torch.Tensor, sigma: torch.Tensor, model_options: dict) -> dict[str, torch.Tensor]:
        """The weighted losses per image ``[B]`` at ``x`` (differentiable): ``beta * l_lay`` under
        ``layout`` and ``alpha * l_app`` under ``appearance``, those of this step."""
        g, probe = self.guidance, self.probe
        probe.clear()
        conditional_pass(guider, x, sigma, model_options, probe)
        losses = {}
        if self.template_layers:
            maps = [probe.maps[l] for l in self.template_layers]
            losses["layout"] = g.beta * layout_loss(maps, [t.to(x.device) for t in self.template_maps])
        if self.palette_layers:
            masks = [subject_mask(probe.maps[l], g.threshold) for l in self.palette_layers]
            features = [probe.features[l] for l in self.palette_layers]
            losses["appearance"] = g.alpha * appearance_loss(features, masks,
                                                            [p.to(x.device) for p in self.palette_sets])
        return losses

    def gradient(self, guider, x: torch.Tensor, sigma: torch.Tensor,
                 model_options: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The gradient of ``alpha * l_app + beta * l_lay`` with respect to ``x`` (each image's from its own
        loss), and the weighted losses per image (detached)."""
        with gradients_enabled():
            z = normal_tensor(x).requires_grad_()
            losses = self.loss(guider, z, sigma, model_options)
            grad = torch.autograd.grad(sum(v.sum() for v in losses.values()), z)[0].detach()
        return grad, {k: v.detach() for k, v in losses.items()}


def step_size(paper: float, loss: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Per image ``[B, 1, ...]``: the paper's step size ``eta * (1 + sigma^2)``, capped at Polyak's
    ``loss / ||grad||^2`` (module docstring); 0 where the loss or its gradient is 0.

    Args:
        paper: ``eta * (1 + sigma^2)``.
        loss: the weighted loss per image ``[B]`` (at least 0).
        grad: its gradient with respect to the latent ``[B, ...]``.
    """
    squared = grad.flatten(1).square().sum(1).to(loss.dtype)
    polyak = torch.where(squared > 0, loss / squared.clamp_min(torch.finfo(squared.dtype).tiny), 0.0)
    return torch.clamp(polyak, max=paper).view(-1, *[1] * (grad.ndim - 1))


def describe_step(i: int, sigma: float, losses: list[dict[str, torch.Tensor]], capped: list[float],
                  update: float) -> str:
    """One log line of a guided step: each weighted loss at each iteration (before its update; the batch's
    mean), the step taken as a fraction of the paper's (1: not capped), and the update's size relative to
    the latent."""
    parts = [f"{name} " + " -> ".join(f"{float(at[name].mean()):.4g}" for at in losses) for name in losses[0]]
    steps = " -> ".join(f"{c:.3g}" for c in capped)
    return (f"Pick-and-Draw step {i} (sigma {sigma:.4g}): {', '.join(parts)}; step {steps} of the paper's; "
            f"latent moved by {update:.3g} (relative)")


def check_sources(palette: Palette | None, template: LayoutTemplate | None, base_model: str,
                  latent_size: tuple[int, int], report: Report) -> None:
    """Refuse a palette or template made with another base model or for another latent size."""
    for name, made in (("palette", palette), ("template", template)):
        if made is None:
            continue
        if made.base_model != base_model:
            report(name, (f"was made with a {made.base_model} model, and this sampler runs a {base_model} model.",
                          f"make the {name} with the generation's base model."))
        if tuple(made.latent_size) != tuple(latent_size):
            (h, w), (gh, gw) = made.latent_size, latent_size
            report(name, (f"was made at {8 * w}x{8 * h} px (latent {w}x{h}), and this generation is {8 * gw}x{8 * gh}.",
                          f"make the {name} at the generation's size (scale the reference photo to it)."))


def guided_sampler(base, guidance: Guidance, positions: list[int], palette: Palette | None,
                   template: LayoutTemplate | None, base_model_of: Callable, report: Report,
                   model_problem: Callable | None = None):
    """A KSAMPLER that runs ``base`` (a KSAMPLER) with Pick-and-Draw's guidance.

    Args:
        base: the SAMPLER that takes the steps (ddim or euler for the paper's DDIM).
        guidance: hyper-parameters and step ranges.
        positions: the subject's token positions in the generation's positive prompt.
        palette, template: the appearance palette and layout template, or None (that loss off).
        base_model_of: ``ModelPatcher -> base model name``, to check the sources against the model.
        report: raises a problem with an input as the user-facing error.
        model_problem: ``ModelPatcher -> Problem | None``: why the guided model cannot be guided (reported at
            ``sampler``), checked before the first guided step.
    """
    import comfy.model_management
    import comfy.samplers

    def sampler_function(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = extra_args or {}
        n_steps = len(sigmas) - 1
        if (found := guidance.unreached(n_steps, palette, template)) is not None:
            report(*found)
        plan = guidance.plan(n_steps, palette, template)

        def run_base(x, first: int, last: int):
            shifted = None if callback is None else (lambda d: callback({**d, "i": d["i"] + first}))
            return base.sampler_function(model_k, x, sigmas[first:last + 1], extra_args=extra_args, callback=shifted,
                                         disable=disable, **base.extra_options)

        if not plan:
            return run_base(x, 0, n_steps)
        guider = model_k.inner_model
        if model_problem is not None and (problem := model_problem(guider.model_patcher)) is not None:
            report("sampler", problem)
        check_sources(palette, template, base_model_of(guider.model_patcher), tuple(x.shape[-2:]), report)
        options = extra_args["model_options"]
        s_in = x.new_ones([x.shape[0]])
        i = 0
        while i < n_steps:
            if i not in plan:
                following = min([j for j in plan if j > i], default=n_steps)
                x = run_base(x, i, following)
                i = following
                continue
            sigma = sigmas[i]
            step = GuidedStep(guidance, positions, *_sources(plan[i], sigma, i, palette, template, report))
            paper = guidance.eta * (1 + float(sigma) ** 2)
            start, seen, sizes = x, [], []
            for _ in range(guidance.iterations):
                comfy.model_management.throw_exception_if_processing_interrupted()
                grad, losses = step.gradient(guider, x, sigma * s_in, options)
                size = step_size(paper, sum(losses.values()), grad)
                x = x - (size * grad).to(x)
                seen.append(losses)
                sizes.append(size)
            if logger.isEnabledFor(logging.INFO):  # reading the values waits for a GPU: once per step
                update = float((x - start).norm() / start.norm().clamp_min(1e-12))
                logger.info(describe_step(i, float(sigma), seen, [float(t.mean()) / paper for t in sizes], update))
            x = run_base(x, i, i + 1)
            i += 1
        return x

    return comfy.samplers.KSAMPLER(sampler_function, inpaint_options=dict(base.inpaint_options))


def _sources(plan_entry: tuple[bool, bool], sigma, i: int, palette, template, report: Report):
    """``(template, template_step, palette, palette_step)`` for a guided step; a source that
    has no entry at this step's sigma is reported."""
    layout, appearance = plan_entry

    def step_of(source, name: str, what: str, fix: str):
        step = source.step_at(sigma)
        if step is None:
            report(name, (f"holds no {what} at step {i} (sigma {float(sigma):.4g}) of this sampler's schedule.", fix))
        return step

    t_step = step_of(template, "template", "map", "make the template with the generation's SIGMAS and a last step "
                     "at or after the last layout step.") if layout else None
    p_step = step_of(palette, "palette", "features", "make the palette with the generation's steps and scheduler "
                     "(connect its sigmas), and appearance steps covering the sampler's.") if appearance else None
    return (template if layout else None), t_step, (palette if appearance else None), p_step
