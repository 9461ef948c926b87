"""One retouch run: the source paths added as extra rows of the target's UNet calls.

The patched model carries three hooks, all registered with ComfyUI's keyed extension points:

- an ``OUTER_SAMPLE`` wrapper that checks the sampler's schedule against the inversions' and
  creates the run's state (:class:`RunState`) in the run's own ``transformer_options``,
  removing it in ``finally``;
- an ``APPLY_MODEL`` wrapper that adds to each CFG half's rows the layout and reference rows
  (their latents at the current sigma and their own prompts; :mod:`.rows`), and takes them out again,
  so all paths run in one UNet call per step. A path runs only at steps where the target reads
  its attention and no record (:mod:`.sources`: reference cache, fast mode) holds it already;
- in the paper's mode only, a post-CFG function that advances the re-denoised source latents
  with the same Euler (DDIM) step and CFG scale as the target's sampler.

The step comes from the sigma's place in the inversions' schedule, never from a call count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import torch

from ..errors import Problem
from ..records import AttentionRecord, InversionTrajectory, sigma_position
from .attend import ROWS_KEY, SOURCES_KEY
from .families import family_of_diffusion_model
from .prompts import PathPrompts
from .rows import RowLayout
from .sources import StepSources
from .swap import SourceNeeds

# (input name, problem) -> the exception raised: the node that made the patch words it for the artist.
ErrorFor = Callable[[str, Problem], Exception]
KEY = "lr_multi_source_swap"
RUN_KEY = "lr_swap_run"
PATHS = ("layout", "reference")


class SourceMode(Enum):
    """How the source paths run beside the target."""

    RECORDED = "recorded"  # along their recorded inversions, as rows of the target's calls
    FAST = "fast"  # as recorded, their attention read from what their inversions recorded
    REDENOISE = "re-denoised"  # the paper's: denoised again from their inverted noise


class CacheMode(Enum):
    """Where the reference cache keeps its tensors (:class:`~..records.KeyedRecord`)."""

    OFFLOADED = "cpu"  # in RAM
    DEVICE = "device"  # where they were computed
    OFF = "off"  # no cache


@dataclass(frozen=True)
class SourcePaths:
    """The two source paths: their recorded inversions and their prompts (:class:`~.prompts.PathPrompts`).

    Attributes:
        mode: how the sources run (:class:`SourceMode`).
        reference_cache: where the reference cache keeps its tensors (off in the paper's mode).
        cache_key: what the reference rows' attention depends on besides the reference inversion.
    """

    layout: InversionTrajectory
    reference: InversionTrajectory
    layout_prompts: PathPrompts
    reference_prompts: PathPrompts
    mode: SourceMode = SourceMode.RECORDED
    reference_cache: CacheMode = CacheMode.OFF
    cache_key: tuple = ()

    def __deepcopy__(self, memo) -> SourcePaths:
        return self  # immutable; ModelPatcher.clone() deep-copies model_options, where it lives

    @property
    def redenoise(self) -> bool:
        return self.mode is SourceMode.REDENOISE

    @property
    def fast(self) -> bool:
        return self.mode is SourceMode.FAST

    def trajectory(self, path: str) -> InversionTrajectory:
        return self.layout if path == "layout" else self.reference

    def prompts(self, path: str) -> PathPrompts:
        return self.layout_prompts if path == "layout" else self.reference_prompts


@dataclass
class RunState:
    """Mutable state of one sampling run; lives only inside the OUTER_SAMPLE wrapper."""

    paths: SourcePaths
    needs: SourceNeeds
    error_for: ErrorFor
    sigma: float | None = None
    latents: dict[str, torch.Tensor] = field(default_factory=dict)
    pending: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    read: dict[str, AttentionRecord] = field(default_factory=dict)
    write: dict[str, AttentionRecord] = field(default_factory=dict)

    def __post_init__(self) -> None:
        paths = self.paths
        if paths.redenoise:
            return  # the sources' latents advance with their own outputs: every row runs
        if paths.fast:
            self.read = {p: paths.trajectory(p).attention for p in PATHS if paths.trajectory(p).attention is not None}
        cache = paths.reference_cache
        if cache is not CacheMode.OFF and "reference" not in self.read:
            record = paths.reference.cache.for_key(paths.cache_key, "cpu" if cache is CacheMode.OFFLOADED else None)
            self.read["reference"] = self.write["reference"] = record

    def runs(self, path: str, step: int, halves: tuple[int, ...]) -> bool:
        """Whether ``path`` needs rows in a call at ``step``: always in the paper's mode; else when
        the target reads its attention there and no record covers it."""
        if self.paths.redenoise:
            return True
        needs = self.needs.of(path, step)
        return bool(needs) and not (path in self.read and self.read[path].covers(step, halves, needs))

    def step_of(self, sigma: torch.Tensor) -> int:
        traj = self.paths.layout
        return len(traj) - 1 - traj.index_of(sigma)

    def source_latent(self, path: str, sigma: torch.Tensor) -> torch.Tensor:
        """The source path's latent ``[n, C, H, W]`` at ``sigma`` (sampler space)."""
        if not self.paths.redenoise:
            return self.paths.trajectory(path).latent_at(sigma)
        if self.sigma is None:  # first call of the run: start from the recorded latent there
            self.sigma = float(sigma)
            self.latents = {p: self.paths.trajectory(p).latent_at(sigma) for p in PATHS}
        if not math.isclose(self.sigma, float(sigma), rel_tol=1e-5):
            raise self.error_for("source_paths", (
                f"is re-denoised (paper) but the sampler evaluated sigma {float(sigma):.5g} where the sources are at "
                f"{self.sigma:.5g}.", "use sampler ddim or euler in the KSampler, or another source_paths mode."))
        return self.latents[path]

    def keep_outputs(self, rows: RowLayout, denoised: torch.Tensor) -> None:
        """Keep the source rows' denoised outputs per CFG half, for :meth:`advance`."""
        if not self.paths.redenoise:
            return
        layout = denoised[rows.layout_index().to(denoised.device, non_blocking=True)]
        reference = denoised[rows.reference_index().to(denoised.device, non_blocking=True)]
        for h, half in enumerate(rows.halves):
            self.pending[half] = {
                "layout": layout[h * rows.n_layout:(h + 1) * rows.n_layout],
                "reference": reference[h * rows.n_reference:(h + 1) * rows.n_reference],
            }

    def advance(self, sigma: torch.Tensor, sigma_next: torch.Tensor, cond_scale: float) -> None:
        """One Euler step of the sources, with CFG combined as the sampler does (cfg 1: cond only)."""
        if not self.paths.redenoise or 0 not in self.pending:
            return
        for path in PATHS:
            cond = self.pending[0][path]
            uncond = self.pending.get(1, {}).get(path)
            denoised = cond if uncond is None else uncond + (cond - uncond) * cond_scale
            x = self.latents[path].to(denoised)
            d = (x - denoised) / sigma  # k-diffusion's to_d, as sample_euler
            self.latents[path] = x + d * (sigma_next - sigma)
        self.sigma = float(sigma_next)
        self.pending.clear()


def _row_inputs(kwargs: dict, rows: int) -> list[str]:
    """The names of the model call's inputs that hold one row per latent row (y, guidance, ...)."""
    return [name for name, value in kwargs.items() if isinstance(value, torch.Tensor) and value.ndim >= 1
            and value.shape[0] == rows]


def apply_model_wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                        **kwargs):
    """APPLY_MODEL wrapper: add the source rows to the call, return the target rows only."""
    transformer_options = transformer_options or {}
    run: RunState | None = transformer_options.get(RUN_KEY)
    if run is None:
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()
    if c_concat is not None or control is not None:
        raise run.error_for("model", ("is sampled with a ControlNet or an inpainting model's extra input, which the "
                                      "swap does not support.", "remove the ControlNet, or use a plain model."))
    if kwargs.get("ref_latents") is not None:
        raise run.error_for("model", ("is sampled with reference latents (Flux Kontext's ReferenceLatent): their "
                                      "tokens would join the swapped image tokens.",
                                      "remove the ReferenceLatent node from the conditioning of the retouch sampler."))
    if kwargs.get("attention_mask") is not None:
        raise run.error_for("model", ("is sampled with an attention mask in the conditioning, which the swap's joined "
                                      "keys do not fit.", "remove the attention mask from the retouch conditioning."))
    family = family_of_diffusion_model(executor.class_obj.diffusion_model)
    halves = tuple(transformer_options["cond_or_uncond"])
    batch = x.shape[0] // len(halves)
    sigma = t[0]
    step = run.step_of(sigma)
    latents = {p: run.source_latent(p, sigma).to(x) for p in PATHS if run.runs(p, step, halves)}
    n = {p: latents[p].shape[0] if p in latents else 0 for p in PATHS}
    rows = RowLayout(halves, batch, n["layout"], n["reference"], step)
    row_inputs = _row_inputs(kwargs, x.shape[0])  # SDXL's y, Flux's y and guidance: one row per latent row
    xs, contexts = [], []
    extra: dict[str, list[torch.Tensor]] = {name: [] for name in row_inputs}
    for h, half in enumerate(halves):  # per half: its targets, then its source rows (rows.py)
        xs.append(x[h * batch:(h + 1) * batch])
        contexts.append(c_crossattn[h * batch:(h + 1) * batch])
        for name in row_inputs:
            extra[name].append(kwargs[name][h * batch:(h + 1) * batch])
        for path in latents:
            xs.append(latents[path])
            prompts = run.paths.prompts(path)
            contexts.append(prompts.at(half, step).to(c_crossattn).expand(n[path], -1, -1))
            own = prompts.extras[half]
            for name in row_inputs:
                if name not in own:
                    raise run.error_for("model", (f"takes an input '{name}' that the sources' prompts lack.",
                                                  "give the swap the sources' CONDITIONING from this model's text "
                                                  "encoder (and, on Flux, through the same FluxGuidance)."))
                value = own[name].to(kwargs[name])
                extra[name].append(value.expand(n[path], *value.shape[1:]))
    if latents:
        kwargs = {**kwargs, **{name: torch.cat(values) for name, values in extra.items()}}
    context = family.join_texts(contexts, run.error_for)
    options = dict(transformer_options)
    options[ROWS_KEY] = rows
    options[SOURCES_KEY] = StepSources(rows, {p: r for p, r in run.read.items() if p not in latents},
                                       {p: r for p, r in run.write.items() if p in latents},
                                       family.projection(executor.class_obj.diffusion_model))
    options.update(family.call_options(x, context))
    x_all = torch.cat(xs)
    t_all = t[:1].expand(x_all.shape[0])
    out = executor(x_all, t_all, None, context, None, options, **kwargs)
    run.keep_outputs(rows, out)
    return out[rows.target_index().to(out.device, non_blocking=True)]


def post_cfg_function(args):
    """Advance the re-denoised sources once per step, after CFG (paper mode only)."""
    options = args["model_options"].get("transformer_options", {})
    run: RunState | None = options.get(RUN_KEY)
    if run is not None and run.paths.redenoise:
        sigma = args["sigma"][0]
        sample_sigmas = options["sample_sigmas"]
        at = sigma_position(sample_sigmas, sigma)
        run.advance(sigma, sample_sigmas[at + 1].to(sigma), args["cond_scale"])
    return args["denoised"]


class OuterSample:
    """OUTER_SAMPLE wrapper: check the run (schedule, sampler, start latent), create the run's
    state, remove it afterwards.

    Args:
        error_for: makes the exception raised for a problem found while sampling (a schedule
            that is not the inversions', added noise, another sampler, another start, a ControlNet).
    """

    def __init__(self, paths: SourcePaths, needs: SourceNeeds, error_for: ErrorFor) -> None:
        self.paths = paths
        self.needs = needs
        self.error_for = error_for

    def __call__(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        patcher = executor.class_obj.model_patcher
        start = patcher.get_model_object("latent_format").process_in(latent_image.float().cpu())
        problem = schedule_problem(self.paths.layout, sigmas) or sampler_problem(noise, sampler) or \
            start_problem(self.paths.layout, start, sigmas)
        if problem is not None:
            raise self.error_for("model", problem)
        if flow_start(patcher.get_model_object("model_sampling"), sigmas):
            # A flow model at sigma 1: ComfyUI's sampler starts from sigma * noise + (1 - sigma) * latent, which
            # drops the latent there; the inverted latent is the run's noise (what a flow sampler starts from).
            noise = start.to(noise)
        options = executor.class_obj.model_options.setdefault("transformer_options", {})
        run = RunState(self.paths, self.needs, self.error_for)
        options[RUN_KEY] = run
        try:
            return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
        finally:
            options.pop(RUN_KEY, None)
            for record in run.write.values():  # the reference cache: its last step's copies moved
                record.settle()
            for record in run.read.values():  # the records' last step, loaded on the model's device
                record.release()
            run.latents.clear()
            run.pending.clear()


def flow_start(model_sampling, sigmas: torch.Tensor) -> bool:
    """Whether a run starts at a flow model's (CONST: x = (1 - sigma) x0 + sigma noise) top sigma 1, where
    ComfyUI's ``noise_scaling`` keeps nothing of the start latent."""
    import comfy.model_sampling

    return isinstance(model_sampling, comfy.model_sampling.CONST) and float(sigmas[0]) >= 1.0


def schedule_problem(traj: InversionTrajectory, sigmas: torch.Tensor) -> Problem | None:
    """Why a sampler's schedule ``sigmas`` does not walk the inversions' schedule, or None."""
    for sigma in sigmas[:-1].cpu():
        if traj.position(sigma) is None:
            return (f"is sampled on a schedule (sigma {float(sigma):.4g}) that is not the inversions' "
                    f"({len(traj) - 1} sampling steps of {traj.scheduler}, {traj.steps} asked, from sigma "
                    f"{float(traj.sigmas[-1]):.4g}).",
                    f"set the sampler's steps to {traj.steps} and scheduler to {traj.scheduler}, as in the DDIM "
                    "Inversion nodes, with denoise 1.0.")
    return None


# What retraces an inversion: Euler on eps with no added noise (ComfyUI's "ddim" is its Euler).
RETRACING_SAMPLERS = ("sample_euler",)


def sampler_problem(noise: torch.Tensor, sampler) -> Problem | None:
    """Why the sampler run does not retrace the inversions: noise added, or a sampler other than
    ddim/euler (read from ComfyUI's KSAMPLER; a sampler object without one is not judged)."""
    if bool(noise.ne(0).any()):
        return ("is sampled with fresh noise added (add_noise enabled, or a KSampler, which always adds it); the "
                "retouch must start from the layout's inverted latent alone.",
                "use KSampler (Advanced) with add_noise disabled, start_at_step 0 and end_at_step 10000.")
    function = getattr(getattr(sampler, "sampler_function", None), "__name__", None)
    if function is not None and function not in RETRACING_SAMPLERS:
        return (f"is sampled with {function.removeprefix('sample_')}, which does not retrace a DDIM inversion.",
                "set the KSampler's sampler_name to ddim or euler, as in the DDIM Inversion nodes.")
    return None


def start_problem(traj: InversionTrajectory, start: torch.Tensor, sigmas: torch.Tensor) -> Problem | None:
    """Why the sampler's start latent (sampler space) is not the layout path's latent at the
    sampler's first sigma (start_at_step above 0, denoise below 1, or another latent)."""
    expected = traj.latent_at(sigmas[0].cpu()).float()
    try:
        if bool((start - expected).abs().max() <= 1e-3 * expected.abs().max()):
            return None
    except RuntimeError:  # shapes that do not broadcast: another latent altogether
        pass
    step = len(traj) - 1 - traj.index_of(sigmas[0].cpu())  # on the schedule: checked before
    return (f"starts at step {step} of {len(traj) - 1} from a latent that is not the layout path's there (another "
            "latent, start_at_step above 0, or denoise below 1).",
            "connect the layout's DDIM Inversion inverted_latent (or the Step-Blended KSampler's start_latent) to "
            "the KSampler (Advanced) with start_at_step 0 and denoise 1.0.")
