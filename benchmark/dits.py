"""The DiT families the benchmark runs, one row each (``bench --family NAME``), and their pipeline.

Each row holds what the benchmark and the tests need of a family beside its ``attention/`` module: its full-size
config (a random model on a GPU) and a tiny one (the CPU, the tests), both as ComfyUI's detection would make them;
its text encoder's shapes (these encoders cannot be tiny: prompts are conditioning tensors of their real shapes);
and the sampling its workflows use. Adding a family to the benchmark is one row here.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import random_models as rm
from .measure import key
from .pipeline import Pipeline


@dataclass(frozen=True)
class DiT:
    """One DiT family's benchmark settings.

    Attributes:
        label: the full-size model it stands for.
        full, tiny: configs (``image_model`` and sizes) that ComfyUI's model-config matching takes.
        text: the text embedding's width; tokens: its length in the family's workflows (the tiny runs: 256).
        pooled: the pooled text's width (CLIP-L's, CLIP-G's), or None (a T5-only or LLM encoder: None in the
            conditioning, as ComfyUI's encoder leaves it).
        guidance: the guidance the conditioning carries (FluxGuidance's), or None.
        size: the native image size; steps, cfg: the workflow's; sampler, scheduler: retracing ones (euler).
    """

    label: str
    full: dict
    tiny: dict
    text: int
    tokens: int
    pooled: int | None
    guidance: float | None
    size: int
    steps: int
    cfg: float
    sampler: str = "euler"
    scheduler: str = "simple"

    def encode(self, text: str, tokens: int | None = None) -> list:
        """A conditioning of the family's real shapes, seeded by ``text``."""
        gen = torch.Generator().manual_seed(zlib.crc32(text.encode()))
        cond = torch.randn(1, tokens or self.tokens, self.text, generator=gen)
        extra = {"pooled_output": None if self.pooled is None else torch.randn(1, self.pooled, generator=gen)}
        if self.guidance is not None:
            extra["guidance"] = self.guidance
        return [[cond, extra]]


DITS = {
    "flux": DiT("Flux.1-dev", rm.FLUX_DEV, rm.FLUX_TINY, 4096, 512, 768, 3.5, 1024, 28, 1.0),
    "chroma": DiT("Chroma1-HD", rm.CHROMA_FULL, rm.CHROMA_TINY, 4096, 512, None, 0.0, 1024, 40, 4.0),
    "qwen_image": DiT("Qwen-Image", rm.QWEN_IMAGE_FULL, rm.QWEN_IMAGE_TINY, 3584, 64, None, None, 1328, 30, 2.5),
    "sd3": DiT("SD3.5 Large", rm.SD35_LARGE, rm.SD3_TINY, 4096, 154, 2048, None, 1024, 28, 4.5),
    # Klein 4B (distilled): 4 steps at cfg 1, no guidance embedding; ComfyUI pads its text to 512 tokens.
    "flux2": DiT("Flux.2 Klein 4B", rm.FLUX2_KLEIN_4B, rm.FLUX2_TINY, 7680, 512, None, None, 1024, 4, 1.0),
}


class DitPipeline(Pipeline):
    """The Layout-and-Retouch nodes on a DiT family as its workflows run it (:data:`DITS`): on a GPU (unless
    ``cpu``) a random full-size model in bf16, else the tiny one. The swap runs without the adaptive mask (no
    CLIP to find the subject's tokens: the prompts are tensors) and its sources in the recorded mode, the
    reference cache on."""

    def __init__(self, size: int, steps: int, cpu: bool, family: str = "flux") -> None:
        import comfy.model_management as mm

        import nodes

        spec = DITS[family]
        self.nodes, self.mapping = nodes, nodes.NODE_CLASS_MAPPINGS
        self.device = mm.get_torch_device()
        self.full = self.device.type == "cuda" and not cpu
        self.family = family
        self.label = f"random {spec.label} (bf16)" if self.full else f"tiny random {spec.label}"
        config, dtype = (spec.full, torch.bfloat16) if self.full else (spec.tiny, torch.float32)
        weights_on = self.device if self.full else "cpu"
        self.vanilla, self.personalized = (rm.dit_patcher(config, rm.dit_state_dict(config, seed, weights_on, dtype),
                                                          dtype) for seed in (1, 2))
        self.clip = None
        tokens = spec.tokens if self.full else 256
        self.vp, self.pp, self.yr, self.empty, self.neg = (spec.encode(text, tokens) for text in (
            "a red vase on a beach", "a sks vase on a beach", "a photo of sks vase", "", "blurry"))
        if spec.cfg == 1.0:
            self.neg = self.pp  # unused at cfg 1
        latent_format = self.personalized.get_model_object("latent_format")
        channels, side = latent_format.latent_channels, size // getattr(latent_format, "spacial_downscale_ratio", 8)
        self.latent = {"samples": torch.zeros(1, channels, side, side)}  # Flux.2: 128 channels at 1/16
        self.reference = {"samples": torch.randn(1, channels, side, side, generator=torch.Generator().manual_seed(0))}
        self.size, self.steps, self.cfg = size, steps, spec.cfg
        self.sampler, self.scheduler = spec.sampler, spec.scheduler
        # The paper's 5 and 10 of 50 steps scaled, as the Flux workflow has them (3 and 6 of 28); no mask.
        self.lambda1, self.lambda2, self.mask_start = max(1, round(steps / 10)), round(steps / 5), steps
        self.state: dict = {}
        self.rows = [0, 0]

    def mask(self, layout: str, batch: int = 1) -> Callable[[], None]:
        def fn():
            self.state[key("mask", batch)] = None  # no mask in the timed DiT graph (mask_start = steps)
        return fn
