"""Timing each part of the pipeline against a plain generation, on one machine and one model.

On a GPU: a randomly initialised full-size SD1.5 in fp16 (speed does not depend on the
weights), peak memory as CUDA's max allocated per part. On the CPU: the tiny SD1.x, peak memory
as the process's peak RSS during the part (reset before each part through Linux's
``/proc/self/clear_refs``; elsewhere the peak so far, which only grows).
Every ratio is to the plain generation measured in the same run. Segment Anything is not part
of the timed pipeline (its cost does not depend on the method; see docs/benchmark.md).
"""

from __future__ import annotations

import json
import logging
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..guidance.losses import uremd
from ..nodes.labels import CACHE_OFF, FAST, HALF, RECORD_LAYOUT, RECORD_REFERENCE, RECORDED, REDENOISED
from ..nodes.labels import CACHE_RAM as CACHED
from .record_sizes import flux_sizes
from .record_sizes import sizes as record_sizes

logger = logging.getLogger(__name__)


@dataclass
class Part:
    name: str
    seconds: float
    peak_mib: float
    unet_rows: int = 0  # latent rows through the UNet (one row: one image, one CFG half, one step)
    backward_rows: int = 0  # of those, rows whose pass was differentiated (one backward each)
    time_ratio: float = 0.0
    memory_ratio: float = 0.0
    rows_ratio: float = 0.0


def _reset_cpu_peak() -> bool:
    """Reset the process's peak RSS (Linux: ``/proc/self/clear_refs`` 5); False where it cannot be.

    Memory freed by earlier parts is first handed back to the system (glibc's ``malloc_trim``),
    or the allocator's retained pages would count as this part's."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure(name: str, fn: Callable[[], object], device: torch.device, repeats: int,
             rows: list[int] | None = None) -> Part:
    times, peaks = [], []
    first_rows, first_backward = (rows[0], rows[1]) if rows else (0, 0)
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            _reset_cpu_peak()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        peaks.append(_peak_mib(device))
    part = Part(name, statistics.median(times), max(peaks), (rows[0] - first_rows) // repeats if rows else 0,
                (rows[1] - first_backward) // repeats if rows else 0)
    logger.info("%-34s %8.2f s %10.0f MiB %8d rows %6d backward", name, part.seconds, part.peak_mib,
                part.unet_rows, part.backward_rows)
    return part


BATCH = 4  # the throughput rows' batch


class Pipeline:
    """The benchmark's models, prompts and latents; each part of the pipeline as a callable.

    On a GPU (unless ``cpu``): full-size random SD1.5 (or SDXL); else the tiny SD1.x (or SDXL).
    Vanilla and personalized are two UNets, as with a DreamBooth checkpoint (one text encoder and VAE).
    The nodes' outputs are kept in ``state`` so later parts use earlier ones, as in a graph.
    """

    def __init__(self, size: int, steps: int, cpu: bool, family: str = "sd1") -> None:
        import comfy.model_management as mm
        import comfy.sd

        import nodes

        from .random_models import SD1_TINY_UNET, SD15_UNET, SDXL_TINY_UNET, SDXL_UNET, sd1_checkpoint, sdxl_checkpoint

        self.nodes, self.mapping = nodes, nodes.NODE_CLASS_MAPPINGS
        self.device = mm.get_torch_device()
        self.full = self.device.type == "cuda" and not cpu
        self.family = family
        checkpoint = sdxl_checkpoint if family == "sdxl" else sd1_checkpoint
        unet = {("sd1", True): SD15_UNET, ("sd1", False): SD1_TINY_UNET, ("sdxl", True): SDXL_UNET,
                ("sdxl", False): SDXL_TINY_UNET}[family, self.full]
        # The tiny SDXL keeps SDXL's 70 transformer blocks and full-size text encoders: on the CPU its weights are
        # stored as ComfyUI stores them with --fp16-unet --fp8_e4m3fn-text-enc (computed in float32), so that the
        # GPU check's dry run stays within the test suite's memory (tests/memory_budget.py: 4 GiB a subprocess).
        lean = family == "sdxl" and not self.full
        stored = dict(model_options={"dtype": torch.float16}, te_model_options={"dtype": torch.float8_e4m3fn})
        vanilla_sd = checkpoint(unet, 1, **({"text_dtype": torch.float8_e4m3fn} if lean else {}))
        self.vanilla, self.clip = comfy.sd.load_state_dict_guess_config(
            vanilla_sd, output_vae=False, embedding_directory=None, **(stored if lean else {}))[:2]
        del vanilla_sd
        personalized_sd = checkpoint(unet, 2, with_text_and_vae=False)
        self.personalized = comfy.sd.load_state_dict_guess_config(
            personalized_sd, output_vae=False, output_clip=False, **(stored if lean else {}))[0]
        del personalized_sd
        encode = lambda text: nodes.CLIPTextEncode().encode(self.clip, text)[0]  # noqa: E731
        self.vp, self.pp, self.yr, self.neg, self.empty = (encode(t) for t in (
            "a red vase on a beach", "a sks vase on a beach", "a photo of sks vase", "blurry", ""))
        self.latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
        self.reference = {"samples": torch.randn(1, 4, size // 8, size // 8,
                                                 generator=torch.Generator().manual_seed(0))}
        self.size, self.steps, self.cfg = size, steps, 7.5
        self.sampler, self.scheduler = "ddim", "ddim_uniform"
        # The paper's 5, 10 and 30 of 50 steps, scaled to other step counts.
        self.lambda1, self.lambda2, self.mask_start = max(1, steps // 10), steps // 5, 3 * steps // 5
        self.state: dict = {}
        self.rows = [0, 0]  # forward rows, differentiated rows

    def count_rows(self) -> None:
        """Count latent rows through the UNet with a keyed DIFFUSION_MODEL wrapper on the benchmark's
        own models (clones, the swap's included, carry it): the work of each part, whatever the hardware."""
        import comfy.patcher_extension as ext

        def count(executor, x, *args, **kwargs):
            self.rows[0] += x.shape[0]
            self.rows[1] += x.shape[0] if torch.is_grad_enabled() else 0  # samplers run without autograd
            return executor(x, *args, **kwargs)

        for model in (self.vanilla, self.personalized):
            ext.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "lr_benchmark_rows", count,
                                     model.model_options, is_model_options=True)

    def warm_up(self) -> None:
        """Load the models with a plain generation; on a GPU a second one, once its clocks are up."""
        for _ in range(2 if self.device.type == "cuda" else 1):
            self.plain()

    def latents(self, batch: int) -> dict:
        return {"samples": self.latent["samples"].expand(batch, -1, -1, -1).contiguous()}

    def plain(self, batch: int = 1):
        return self.nodes.KSampler().sample(self.personalized, 0, self.steps, self.cfg, self.sampler, self.scheduler,
                                            self.pp, self.neg, self.latents(batch))[0]

    def stage1(self, record: bool = False, batch: int = 1) -> Callable[[], None]:
        """``batch`` > 1: that many seeds through one execution, as the runner's ``--batch`` does."""
        def fn():
            self.state[_key("stage1", batch)] = self.mapping["LR_StepBlendedKSampler"].execute(
                vanilla_model=self.vanilla, personalized_model=self.personalized, vanilla_positive=self.vp,
                vanilla_negative=self.neg, personalized_positive=self.pp, personalized_negative=self.neg,
                latent_image=self.latents(batch), seed=0, steps=self.steps, lambda1=self.lambda1, cfg=self.cfg,
                sampler_name=self.sampler, scheduler=self.scheduler, denoise=1.0, record_attention=record,
                attention_layers="auto", batch_seeds=",".join(map(str, range(batch))) if batch > 1 else ""
            ).result
        return fn

    def invert(self, name: str, source: Callable[[], dict], prompt=None, negative=None,
               record: str = "") -> Callable[[], None]:
        """``record``: the DDIM Inversion's ``record_for`` ('reference', 'layout'), or '' (no record)."""
        def fn():
            self.state[name] = self.mapping["LR_DDIMInversion"].execute(
                model=self.personalized, positive=self.empty if prompt is None else prompt, latent=source(),
                steps=self.steps, scheduler=self.scheduler, sampler_name=self.sampler, cfg=1.0, negative=negative,
                record_attention=bool(record), attention_layers="auto", record_for=record or RECORD_LAYOUT).result
        return fn

    def layout_path(self, layout: str, batch: int = 1):
        return self.state[_key("stage1", batch)][1] if layout == "stage 1" else self.state[layout][1]

    def mask(self, layout: str, batch: int = 1) -> Callable[[], None]:
        def fn():
            self.state[_key("mask", batch)] = self.mapping["LR_CrossAttentionMask"].execute(
                model=self.personalized, layout_inversion=self.layout_path(layout, batch), clip=self.clip,
                prompt="a sks vase on a beach", subject="vase", resolution=HALF,
                steps_to_average=10, threshold=0.1).result[1]
        return fn

    def stage2(self, reference_inv: str, layout: str, mode: str = RECORDED,
               cache: str = CACHE_OFF, batch: int = 1) -> Callable[[], None]:
        def fn():
            patched = self.mapping["LR_MultiSourceAttentionSwap"].execute(
                model=self.personalized, reference_inversion=self.state[reference_inv][1],
                layout_inversion=self.layout_path(layout, batch), reference_positive=self.yr,
                reference_negative=self.neg,
                layout_positive=self.pp, layout_negative=self.neg, lambda2=self.lambda2, mask_start=self.mask_start,
                layout_layers="auto", reference_layers="auto", source_paths=mode,
                reference_cache=cache, mask=self.state[_key("mask", batch)]).result[0]
            start = self.state[_key("stage1", batch)][2] if layout == "stage 1" else self.state[layout][0]
            self.state["out", reference_inv, layout, mode, cache, batch] = self.nodes.KSamplerAdvanced().sample(
                patched, "disable", 0, self.steps, self.cfg, self.sampler, self.scheduler, self.yr, self.neg, start, 0,
                10000, "disable")[0]
        return fn


    def pick_and_draw(self) -> dict[str, Callable[[], None]]:
        """Pick-and-Draw's parts as its shipped workflows wire them: the paper's settings (eta 10,
        alpha 10, beta 100, 3 iterations, tau 0.1; layout steps 0-9 and appearance 10-19 of 50,
        scaled to other step counts), in ComfyUI's custom-sampling graph. The reference's palette is
        read on its DDIM Inversion's path (the shipped default) or its null-text inversion's (the
        paper's): ``palette_<source>`` and ``guided_<source>`` for each."""
        m, clip = self.mapping, self.clip
        tenth = max(1, self.steps // 5)
        noise = m["RandomNoise"]().get_noise(0)[0]
        sigmas = m["BasicScheduler"]().get_sigmas(self.personalized, "ddim_uniform", self.steps, 1.0)[0]
        ddim = m["KSamplerSelect"]().get_sampler("ddim")[0]
        guider = m["CFGGuider"]().get_guider(self.personalized, self.pp, self.neg, self.cfg)[0]
        vanilla = m["CFGGuider"]().get_guider(self.vanilla, self.vp, self.neg, self.cfg)[0]

        def null_text():
            self.state["null_text"] = m["LR_NullTextInversion"].execute(
                model=self.personalized, positive=self.yr, negative=self.empty, latent=self.reference,
                steps=self.steps, scheduler="ddim_uniform", sampler_name="ddim", cfg=self.cfg, iterations=10,
                learning_rate=0.01, early_stop=1e-5).result

        def ddim_inversion():
            self.state["ddim"] = m["LR_DDIMInversion"].execute(
                model=self.personalized, positive=self.yr, latent=self.reference, steps=self.steps,
                scheduler="ddim_uniform", sampler_name="ddim", cfg=1.0).result

        def palette(source: str) -> Callable[[], None]:
            def fn():
                self.state["palette", source] = m["LR_ReferencePalette"].execute(
                    model=self.personalized, reference_inversion=self.state[source][1], clip=clip,
                    prompt="a photo of sks vase", subject="vase", appearance_start=tenth,
                    appearance_end=2 * tenth - 1, layers="auto", threshold=0.1, sigmas=sigmas).result[0]
            return fn

        def template():
            self.state["template"] = m["LR_LayoutTemplate"].execute(
                noise=noise, guider=vanilla, sampler=ddim, sigmas=sigmas, latent_image=self.latent, clip=clip,
                prompt="a red vase on a beach", subject="vase", last_step=tenth - 1).result[0]

        def guided(source: str) -> Callable[[], None]:
            def fn():
                sampler = m["LR_PickAndDrawSampler"].execute(
                    sampler=ddim, clip=clip, prompt="a sks vase on a beach", subject="vase", eta=10.0, alpha=10.0,
                    beta=100.0, layout_start=0, layout_end=tenth - 1, appearance_start=tenth,
                    appearance_end=2 * tenth - 1, iterations=3, threshold=0.1,
                    palette=self.state["palette", source], template=self.state["template"]).result[0]
                self.state["pick_and_draw", source] = m["SamplerCustomAdvanced"]().sample(
                    noise, guider, sampler, sigmas, self.latent)[0]
            return fn

        return {"null_text": null_text, "ddim": ddim_inversion, "template": template,
                **{f"palette_{s}": palette(s) for s in PD_SOURCES}, **{f"guided_{s}": guided(s) for s in PD_SOURCES}}


# The reference path of Pick-and-Draw's palette: the shipped workflows' first (docs/pick-and-draw.md), then
# the other; palette_sources() compares them.
PD_SOURCES = ("ddim", "null_text")
PD_SOURCE_NAMES = {"ddim": "DDIM", "null_text": "null-text"}



class FluxPipeline(Pipeline):
    """The Layout-and-Retouch nodes on Flux.1-dev as its workflows run it: euler/simple at cfg 1 with FluxGuidance
    3.5, one row per step (no CFG halves). On a GPU (unless ``cpu``): a random full-size Flux.1-dev in bf16 (19
    double, 38 single blocks, 3072 wide); else the tiny one (64 wide, 2 + 2 blocks). T5-XXL and CLIP-L are not run:
    the prompts are conditioning tensors of their real shapes (``[1, 512, 4096]`` and ``[1, 768]``). Flux has no
    subject map yet, so the swap runs without the adaptive mask, and its sources in the recorded mode (the fast
    mode needs records of the inversions, not yet made on Flux); the reference cache is on."""

    def __init__(self, size: int, steps: int, cpu: bool, family: str = "flux") -> None:
        import comfy.model_management as mm

        import nodes

        from .random_models import FLUX_DEV, FLUX_TINY, flux_patcher, flux_state_dict

        self.nodes, self.mapping = nodes, nodes.NODE_CLASS_MAPPINGS
        self.device = mm.get_torch_device()
        self.full = self.device.type == "cuda" and not cpu
        self.family = family
        config, dtype = (FLUX_DEV, torch.bfloat16) if self.full else (FLUX_TINY, torch.float32)
        weights_on = self.device if self.full else "cpu"
        self.vanilla, self.personalized = (flux_patcher(config, flux_state_dict(config, seed, weights_on, dtype), dtype)
                                           for seed in (1, 2))
        self.clip = None
        tokens = 512 if self.full else 256  # Flux.1-dev's T5 length; the tiny one's shorter

        def encode(seed: int):
            gen = torch.Generator().manual_seed(seed)
            return [[torch.randn(1, tokens, 4096, generator=gen),
                     {"pooled_output": torch.randn(1, 768, generator=gen), "guidance": 3.5}]]

        self.vp, self.pp, self.yr, self.empty = (encode(seed) for seed in (1, 2, 3, 4))
        self.neg = self.pp  # unused at cfg 1
        self.latent = {"samples": torch.zeros(1, 16, size // 8, size // 8)}
        self.reference = {"samples": torch.randn(1, 16, size // 8, size // 8,
                                                 generator=torch.Generator().manual_seed(0))}
        self.size, self.steps, self.cfg = size, steps, 1.0
        self.sampler, self.scheduler = "euler", "simple"
        # The paper's 5 and 10 of 50 steps scaled, as the Flux workflow has them (3 and 6 of 28); no mask.
        self.lambda1, self.lambda2, self.mask_start = max(1, round(steps / 10)), round(steps / 5), steps
        self.state: dict = {}
        self.rows = [0, 0]

    def mask(self, layout: str, batch: int = 1) -> Callable[[], None]:
        def fn():
            self.state[_key("mask", batch)] = None  # no mask in the timed Flux graph (mask_start = steps)
        return fn


FLUX_PARTS = ("plain KSampler", "shipped default", "shipped default, reference cache off",
              "shipped default, new reference", "full pipeline")


def measure_flux_parts(p: FluxPipeline, repeats: int) -> list[Part]:
    """Flux's rows: plain; the shipped default per image (stage 1's path as the layout, the swap's sources live in
    the recorded mode, the reference's inversion reused and its attention read from the reference cache), the same
    with the cache off (the reference rows run every image) and with a new reference (its inversion, and the cache
    filled again); the paper's graph (both inversions, the sources re-denoised)."""
    record_reference = p.invert("reference_rec", lambda: p.reference, p.yr)
    shipped = (p.stage1(), p.mask("stage 1"), p.stage2("reference_rec", "stage 1", RECORDED, CACHED))
    uncached = (p.stage1(), p.mask("stage 1"), p.stage2("reference_rec", "stage 1", RECORDED, CACHE_OFF))
    paper = (p.stage1(), p.invert("reference_inv", lambda: p.reference),
             p.invert("layout_inv", lambda: p.state["stage1"][0]), p.mask("layout_inv"),
             p.stage2("reference_inv", "layout_inv", REDENOISED))
    p.count_rows()
    p.warm_up()
    record_reference()
    _chain(*shipped)()  # the reference cache filled, as by the artist's first image
    measure = lambda name, fn: _measure(name, fn, p.device, repeats, p.rows)  # noqa: E731
    return with_ratios([measure(FLUX_PARTS[0], p.plain), measure(FLUX_PARTS[1], _chain(*shipped)),
                        measure(FLUX_PARTS[2], _chain(*uncached)),
                        measure(FLUX_PARTS[3], _chain(record_reference, *shipped)),  # a new inversion: the cache misses
                        measure(FLUX_PARTS[4], _chain(*paper))])


def _key(name: str, batch: int) -> str | tuple[str, int]:
    return name if batch == 1 else (name, batch)


def _chain(*parts: Callable[[], None]) -> Callable[[], None]:
    def fn():
        for part in parts:
            part()
    return fn


def measure_parts(p: Pipeline, repeats: int) -> list[Part]:
    """Every part, in an order where each finds what it needs (inversions, caches) as a graph would."""
    invert_reference = p.invert("reference_inv", lambda: p.reference)
    invert_layout = p.invert("layout_inv", lambda: p.state["stage1"][0])
    # The fast mode's inversions use the sources' own prompts and the negative: then it is exact.
    record_reference = p.invert("reference_rec", lambda: p.reference, p.yr, p.neg, RECORD_REFERENCE)
    record_layout = p.invert("layout_rec", lambda: p.state["stage1"][0], p.pp, p.neg, "layout")
    fill_cache = p.stage2("reference_inv", "layout_inv", cache=CACHED)
    p.count_rows()
    p.warm_up()  # through the counting wrapper too: the first part measured is not its first call
    measure = lambda name, fn: _measure(name, fn, p.device, repeats, p.rows)  # noqa: E731
    parts = [
        measure("plain KSampler", p.plain),
        measure("stage 1 (step-blended)", p.stage1()),
        measure("inversion (reference)", invert_reference),
        measure("inversion (layout)", invert_layout),
        measure("cross-attention mask (10 steps)", p.mask("layout_inv")),
        measure("stage 2 (swap + KSampler)", p.stage2("reference_inv", "layout_inv")),
    ]
    fill_cache()  # an earlier generation with this reference (ComfyUI also keeps its inversion)
    parts += [
        measure("stage 2, reference cached", p.stage2("reference_inv", "layout_inv", cache=CACHED)),
        measure("stage 2 on stage 1's path, cached", p.stage2("reference_inv", "stage 1", cache=CACHED)),
        measure("stage 1 recording attention", p.stage1(record=True)),
        measure("stage 2, fast mode, cached", p.stage2("reference_inv", "stage 1", FAST, CACHED)),
        measure("inversion recording attention", record_layout),
    ]
    record_reference()  # once per reference, kept by ComfyUI's cache
    parts += [
        measure("stage 2, fast mode from inversions", p.stage2("reference_rec", "layout_rec", FAST)),
        measure("full pipeline", _chain(p.stage1(), invert_reference, invert_layout, p.mask("layout_inv"),
                                        p.stage2("reference_inv", "layout_inv"))),
    ]
    fill_cache()  # the full pipeline inverted the reference anew: an earlier generation with it
    parts += [
        measure("full, reference cached", _chain(p.stage1(), invert_layout, p.mask("layout_inv"),
                                                 p.stage2("reference_inv", "layout_inv", cache=CACHED))),
        measure("full, stage 1's path, cached", _chain(p.stage1(), p.mask("stage 1"),
                                                       p.stage2("reference_inv", "stage 1", cache=CACHED))),
        measure("full, fast mode, cached", _chain(p.stage1(record=True), p.mask("stage 1"),
                                                  p.stage2("reference_inv", "stage 1", FAST, CACHED))),
    ]
    # The shipped full workflows: stage 1 records and is the layout path; the reference's inversion records at
    # the swap's reference prompts, once per photo (ComfyUI's cache); the swap in the fast mode, cache on.
    shipped = (p.stage1(record=True), p.mask("stage 1"), p.stage2("reference_rec", "stage 1", FAST, CACHED))
    parts += [
        measure("shipped default", _chain(*shipped)),
        measure("shipped default, new reference", _chain(record_reference, *shipped)),
    ]
    parts += pick_and_draw_parts(p, measure)
    # Throughput: BATCH seeds of one prompt through one execution (the runner's --batch), reference reused.
    parts += [
        measure(f"plain KSampler, batch of {BATCH}", lambda: p.plain(BATCH)),
        measure(f"shipped default, batch of {BATCH}", _chain(
            p.stage1(record=True, batch=BATCH), p.mask("stage 1", BATCH),
            p.stage2("reference_rec", "stage 1", FAST, CACHED, BATCH))),
    ]
    return with_ratios(parts)


def pick_and_draw_parts(p: Pipeline, measure: Callable[[str, Callable[[], None]], Part]) -> list[Part]:
    """Pick-and-Draw's parts: each inversion of the reference, the palette, template and guided sampling, per
    image and with a new reference (the shipped palette path, then the other)."""
    pd = p.pick_and_draw()
    shipped, other = PD_SOURCES
    return [
        measure("P&D DDIM inversion (reference)", pd["ddim"]),
        measure("P&D null-text inversion (reference)", pd["null_text"]),
        measure("P&D palette (reference)", pd[f"palette_{shipped}"]),
        measure("P&D layout template", pd["template"]),
        measure("P&D guided sampling", pd[f"guided_{shipped}"]),
        measure("P&D per image (palette reused)", _chain(pd["template"], pd[f"guided_{shipped}"])),
        measure("P&D, new reference", _chain(pd[shipped], pd[f"palette_{shipped}"], pd["template"],
                                             pd[f"guided_{shipped}"])),
        measure(f"P&D, new reference ({PD_SOURCE_NAMES[other]} palette)",
                _chain(pd[other], pd[f"palette_{other}"], pd["template"], pd[f"guided_{other}"])),
    ]


def with_ratios(parts: list[Part]) -> list[Part]:
    """Each part's ratios to the first, the plain generation."""
    for part in parts:
        part.time_ratio = round(part.seconds / parts[0].seconds, 2)
        part.memory_ratio = round(part.peak_mib / parts[0].peak_mib, 2)
        part.rows_ratio = round(part.unet_rows / parts[0].unet_rows, 2)
    return parts


def measure_core_parts(p: Pipeline, repeats: int, pick_and_draw: bool = False) -> list[Part]:
    """The headline's Layout-and-Retouch rows (SDXL's, and any family's with ``--parts headline``): plain,
    the shipped default in steady state and with a new reference, and the paper's graph; with
    ``pick_and_draw``, Pick-and-Draw's parts too."""
    record_reference = p.invert("reference_rec", lambda: p.reference, p.yr, p.neg, RECORD_REFERENCE)
    shipped = (p.stage1(record=True), p.mask("stage 1"), p.stage2("reference_rec", "stage 1", FAST, CACHED))
    paper = (p.stage1(), p.invert("reference_inv", lambda: p.reference),
             p.invert("layout_inv", lambda: p.state["stage1"][0]), p.mask("layout_inv"),
             p.stage2("reference_inv", "layout_inv"))
    p.count_rows()
    p.warm_up()  # through the counting wrapper too: the first part measured is not its first call
    record_reference()  # once per reference, kept by ComfyUI's cache
    measure = lambda name, fn: _measure(name, fn, p.device, repeats, p.rows)  # noqa: E731
    return with_ratios([
        measure("plain KSampler", p.plain),
        measure("shipped default", _chain(*shipped)),
        measure("shipped default, new reference", _chain(record_reference, *shipped)),
        measure("full pipeline", _chain(*paper)),
        *(pick_and_draw_parts(p, measure) if pick_and_draw else []),
    ])


def fast_mode_fidelity(p: Pipeline) -> dict:
    """The same layout and mask retouched in the fast and the recorded mode: final latents compared."""
    fidelity = {}
    for name, ref, lay, cache in (("stage 1's path", "reference_inv", "stage 1", CACHED),
                                  ("inversions at the source prompts", "reference_rec", "layout_rec", CACHE_OFF)):
        p.stage2(ref, lay, FAST, cache)()
        p.stage2(ref, lay, RECORDED, cache)()
        got = p.state["out", ref, lay, FAST, cache, 1]["samples"].float()
        want = p.state["out", ref, lay, RECORDED, cache, 1]["samples"].float()
        diff = (got - want).abs()
        fidelity[name] = {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
                          "max_relative": float(diff.max() / want.abs().max())}
    return fidelity


def _set_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Eq. 6-7's cost between two palettes, both ways: UREMD of each against the other (the mean over its
    features of the cosine distance to the other's nearest), averaged; 0 when they hold the same directions."""
    return float((uremd(a.float(), b) + uremd(b.float(), a)) / 2)


def palette_sources(p: Pipeline) -> dict:
    """The palette on the DDIM Inversion's path against the null-text inversion's (the paper's), from the same
    reference photo: per appearance step and layer, the features each holds, the distance between the two
    sets (:func:`_set_distance`) and between their means; the two paths' latents at those steps; and the
    final latents of the same generation guided by each."""
    rows = []
    ddim, null = p.state["palette", "ddim"], p.state["palette", "null_text"]
    for (step, layer), features in sorted(ddim.features.items()):
        other = null.features[(step, layer)]
        mean_a, mean_b = features.float().mean(0), other.float().mean(0)
        rows.append({"step": step, "layer": " ".join(map(str, layer)), "ddim_features": features.shape[0],
                     "null_text_features": other.shape[0], "set_distance": round(_set_distance(features, other), 6),
                     "mean_relative": round(float((mean_a - mean_b).norm() / mean_b.norm()), 6)})
    paths = p.state["ddim"][1].latents, p.state["null_text"][1].latents
    path = [round(float((a - b).norm() / b.norm()), 6) for a, b in zip(*paths, strict=True)]
    finals = [p.state["pick_and_draw", s]["samples"].float() for s in PD_SOURCES]
    return {"per_step_and_layer": rows, "path_relative_max": max(path),
            "final_relative": float((finals[0] - finals[1]).norm() / finals[1].norm())}


def palette_table(report: dict) -> str:
    lines = ["| step | layer | DDIM features | null-text features | set distance | means, relative |",
             "|---|---|---|---|---|---|"]
    for r in report["palette_sources"]["per_step_and_layer"]:
        lines.append(f"| {r['step']} | {r['layer']} | {r['ddim_features']} | {r['null_text_features']} | "
                     f"{r['set_distance']:.2e} | {r['mean_relative']:.2e} |")
    return "\n".join(lines)


def run(size: int, steps: int, repeats: int, cpu: bool, family: str = "sd1", parts: str = "all") -> dict:
    """Measure every part (SDXL, or ``parts="headline"``: the headline's); return the report (parts with
    ratios, the fast mode's fidelity and the throughput for SD1.x's every part, the palettes' comparison
    where Pick-and-Draw ran, the setting, the records' sizes)."""
    p = (FluxPipeline if family == "flux" else Pipeline)(size, steps, cpu, family)
    device = p.device
    model = {("sd1", True): "random SD1.5 (fp16)", ("sd1", False): "tiny random SD1.x",
             ("sdxl", True): "random SDXL (fp16)", ("sdxl", False): "tiny random SDXL",
             ("flux", True): "random Flux.1-dev (bf16)", ("flux", False): "tiny random Flux.1-dev"}[family, p.full]
    if family == "flux":
        measured, extra = measure_flux_parts(p, repeats), {"flux_record_sizes_gib": flux_sizes()}
    elif family == "sdxl" or parts == "headline":
        measured = measure_core_parts(p, repeats, pick_and_draw=parts == "headline")
        extra = {"palette_sources": palette_sources(p)} if parts == "headline" else {}
    else:
        measured = measure_parts(p, repeats)
        extra = {"throughput": throughput(measured), "fast_mode_vs_recorded": fast_mode_fidelity(p),
                 "palette_sources": palette_sources(p)}
    return {
        "setting": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
                    or "cpu", "model": model,
                    "size": size, "steps": steps, "lambda1": p.lambda1, "lambda2": p.lambda2,
                    "mask_start": p.mask_start, "cfg": p.cfg, "sampler": f"{p.sampler}/{p.scheduler}", "repeats": repeats,
                    "torch": torch.__version__, "memory": "CUDA max allocated" if device.type == "cuda" else
                    "process peak RSS during the part" if _reset_cpu_peak() else "process peak RSS so far",
                    "date": time.strftime("%Y-%m-%d")},
        "parts": [asdict(part) for part in measured],
        **extra,
        "record_sizes_gib": record_sizes(),
    }


def throughput(parts: list[Part]) -> dict:
    """Images per minute at batch 1 and BATCH, plain and shipped default (the reference's inversion reused)."""
    by_name = {part.name: part for part in parts}
    return {name: {str(batch): round(60 * batch / by_name[part].seconds, 2)
                   for batch, part in ((1, name), (BATCH, f"{name}, batch of {BATCH}"))}
            for name in ("plain KSampler", "shipped default")}


def throughput_table(report: dict) -> str:
    lines = [f"| images per minute | batch 1 | batch {BATCH} | gain |", "|---|---|---|---|"]
    for name, rates in report["throughput"].items():
        lines.append(f"| {name} | {rates['1']:.2f} | {rates[str(BATCH)]:.2f} | "
                     f"{rates[str(BATCH)] / rates['1']:.2f}x |")
    return "\n".join(lines)


def sizes_table(report: dict) -> str:
    """The records' RAM at each family's native size (real shapes, fp16, 50 steps, ``auto`` layers)."""
    families = list(report["record_sizes_gib"])
    lines = ["| record (GiB) | " + " | ".join(families) + " |", "|---" * (len(families) + 1) + "|"]
    for name in report["record_sizes_gib"][families[0]]:
        values = [report["record_sizes_gib"][f][name] for f in families]
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in values) + " |")
    return "\n".join(lines)


# The headline: what a user of the shipped full workflows pays per image, then the paper's graph.
HEADLINE = (("shipped default, per image (the reference's inversion reused)", "shipped default"),
            ("shipped default, first image with a new reference", "shipped default, new reference"),
            ("the paper's graph (stage 1, both inversions, mask, stage 2)", "full pipeline"),
            ("Pick-and-Draw per image (the reference's palette reused)", "P&D per image (palette reused)"),
            ("Pick-and-Draw, first image with a new reference (DDIM inversion, palette)", "P&D, new reference"),
            ("Pick-and-Draw, first image with a new reference, the paper's null-text palette",
             "P&D, new reference (null-text palette)"))


def headline(report: dict) -> str:
    parts = {p["name"]: p for p in report["parts"]}
    lines = ["| per image | seconds | x plain | UNet rows (backward) | x plain | peak MiB | x plain |",
             "|---|---|---|---|---|---|---|"]
    for label, name in HEADLINE:
        if name not in parts:  # SDXL measures Layout-and-Retouch's rows only
            continue
        p = parts[name]
        lines.append(f"| {label} | {p['seconds']:.2f} | {p['time_ratio']:.2f} | {_rows(p)} | "
                     f"{p['rows_ratio']:.2f} | {p['peak_mib']:.0f} | {p['memory_ratio']:.2f} |")
    return "\n".join(lines)


def table(report: dict) -> str:
    lines = ["| part | seconds | x plain | peak MiB | x plain | UNet rows (backward) | x plain |",
             "|---|---|---|---|---|---|---|"]
    for p in report["parts"]:
        lines.append(f"| {p['name']} | {p['seconds']:.2f} | {p['time_ratio']:.2f} | {p['peak_mib']:.0f} | "
                     f"{p['memory_ratio']:.2f} | {_rows(p)} | {p['rows_ratio']:.2f} |")
    return "\n".join(lines)


def _rows(part: dict) -> str:
    """Forward rows, with the differentiated ones (each also run backward) in brackets."""
    return f"{part['unet_rows']} ({part['backward_rows']})" if part.get("backward_rows") else str(part["unet_rows"])


def main(size: int, steps: int, repeats: int, cpu: bool, output: Path, family: str = "sd1",
         parts: str = "all") -> dict:
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        report = run(size, steps, repeats, cpu, family, parts)
    output.write_text(json.dumps(report, indent=1))
    print(json.dumps(report["setting"]))  # noqa: T201  (the command's output)
    print(headline(report))  # noqa: T201
    print()  # noqa: T201
    if "throughput" in report:
        print(throughput_table(report))  # noqa: T201
        print()  # noqa: T201
    print(sizes_table(report))  # noqa: T201
    if "flux_record_sizes_gib" in report:
        flux = report["flux_record_sizes_gib"]
        print(f"Flux.1-dev at 1024x1024, {flux['blocks']} auto blocks, {flux['steps']} steps, lambda2 {flux['lambda2']}, "  # noqa: T201
              "bf16, GiB: " + "; ".join(f"{name} {gib:.2f}" for name, gib in flux.items()
                                       if name not in ("blocks", "steps", "lambda2")))
    print()  # noqa: T201
    print(table(report))  # noqa: T201
    if "palette_sources" in report:
        sources = report["palette_sources"]
        print(palette_table(report))  # noqa: T201
        print(f"paths (DDIM vs null-text), max relative latent difference {sources['path_relative_max']:.3g}; "  # noqa: T201
              f"guided final latent, DDIM palette vs null-text palette: {sources['final_relative']:.3g} relative")
    for name, f in report.get("fast_mode_vs_recorded", {}).items():
        print(f"fast mode vs recorded ({name}), final latent: max abs difference {f['max_abs']:.3g}, "  # noqa: T201
              f"mean {f['mean_abs']:.3g}, max relative {f['max_relative']:.3g}")
    return report
