"""The benchmark's pipelines: the models, prompts and latents of one family, and each part of the graph as a
callable (:class:`Pipeline`: SD1.x and SDXL; the DiT families' in :mod:`.dits`)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..nodes.labels import CACHE_OFF, HALF, RECORD_LAYOUT, RECORDED
from .measure import key

UNETS = {"sd1": "SD1.5", "sdxl": "SDXL"}  # bench --family: the base model (full size on a GPU)
TINY = {"sd1": "SD1.x", "sdxl": "SDXL"}  # the tiny models' (SD1.x's block layout, not SD1.5's sizes)
# The reference path of Pick-and-Draw's palette: the shipped workflows' first (docs/pick-and-draw.md), then
# the other; palette_sources() compares them.
PD_SOURCES = ("ddim", "null_text")
PD_SOURCE_NAMES = {"ddim": "DDIM", "null_text": "null-text"}


class SeededText:
    """SDXL's CLIP for the benchmark: ComfyUI's own SDXL tokenizer (what the nodes read the subject's tokens with), and
    each prompt's conditioning of SDXL's shapes (CLIP-L and CLIP-G's 77 tokens, 2048 wide; the pooled CLIP-G, 1280)
    seeded by its tokens: the same prompt, the same conditioning."""

    def __init__(self) -> None:
        from comfy.sdxl_clip import SDXLTokenizer

        self.tokenizer = SDXLTokenizer()

    def tokenize(self, text: str, return_word_ids: bool = False, **kwargs):
        return self.tokenizer.tokenize_with_weights(text, return_word_ids, **kwargs)

    def encode_from_tokens_scheduled(self, tokens, **kwargs) -> list:
        import zlib

        chunks = tokens["g"]
        seed = zlib.crc32(repr([t[0] if isinstance(t[0], int) else -1 for chunk in chunks for t in chunk]).encode())
        gen = torch.Generator().manual_seed(seed)
        cond = torch.randn(1, 77 * len(chunks), 2048, generator=gen)
        return [[cond, {"pooled_output": torch.randn(1, 1280, generator=gen)}]]


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
        unet = (SDXL_UNET if self.full else SDXL_TINY_UNET) if family == "sdxl" else \
            (SD15_UNET if self.full else SD1_TINY_UNET)
        self.label = f"random {UNETS[family]} (fp16)" if self.full else f"tiny random {TINY[family]}"
        # The tiny SDXL keeps SDXL's 70 transformer blocks: on the CPU its UNets are stored as ComfyUI stores them
        # with --fp16-unet (computed in float32), so that the GPU check's dry run stays within the test suite's
        # memory (tests/memory_budget.py: 4.5 GiB a subprocess). SDXL's text encoders (CLIP-G alone is 694M
        # weights, 4 s a prompt on a CPU core) are not timed by any part: prompts are conditioning of their shapes
        # seeded by their tokens, with SDXL's real tokenizer for the subject's tokens (:class:`SeededText`).
        lean = family == "sdxl" and not self.full
        stored = dict(model_options={"dtype": torch.float16})
        sdxl = family == "sdxl"
        vanilla_sd = checkpoint(unet, 1, with_text_and_vae=not sdxl)
        self.vanilla, self.clip = comfy.sd.load_state_dict_guess_config(
            vanilla_sd, output_vae=False, output_clip=not sdxl, embedding_directory=None,
            **(stored if lean else {}))[:2]
        if sdxl:
            self.clip = SeededText()
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
        """Count latent rows through the diffusion model with a forward pre-hook on the benchmark's own models (every
        call of the module, whoever makes it: the swap's rows included; also a DiT whose forward runs no ComfyUI
        wrapper, as SD3's): the work of each part, whatever the hardware."""
        def count(module, args, kwargs):
            x = args[0] if args else kwargs["x"]
            self.rows[0] += x.shape[0]
            self.rows[1] += x.shape[0] if torch.is_grad_enabled() else 0  # samplers run without autograd

        for module in {id(m.model.diffusion_model): m.model.diffusion_model
                       for m in (self.vanilla, self.personalized)}.values():
            module.register_forward_pre_hook(count, with_kwargs=True)

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
            self.state[key("stage1", batch)] = self.mapping["LR_StepBlendedKSampler"].execute(
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
        return self.state[key("stage1", batch)][1] if layout == "stage 1" else self.state[layout][1]

    def mask(self, layout: str, batch: int = 1) -> Callable[[], None]:
        def fn():
            self.state[key("mask", batch)] = self.mapping["LR_CrossAttentionMask"].execute(
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
                reference_cache=cache, mask=self.state[key("mask", batch)]).result[0]
            start = self.state[key("stage1", batch)][2] if layout == "stage 1" else self.state[layout][0]
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
