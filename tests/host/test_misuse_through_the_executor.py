"""Misuse as a server meets it: each case sent through ComfyUI's real executor (the nodes' own checks, called
directly: test_misuse_at_the_nodes.py).

A case edits an API prompt built from a shipped workflow (shrunk to the tiny models: 64x64 px,
6 steps) or a small graph built here, and goes through ``execution.validate_prompt`` and then one
``execution.PromptExecutor`` (classic cache, reused by every case as a server reuses it). It then
checks what the artist sees: the refusal, at validation or while executing, naming the node, the
input and the fix; or the behaviour (it runs and shows images; its final image equals, or differs
from, another run's). Each case runs after the one before it on the same executor, so a case
that broke the executor fails the next; the last test runs a node of the shipped graph once more.
Every prompt also carries the untouched base graphs, fed to no output (:func:`with_bases`), so
that the cache keeps their results between cases and only what a case changes runs.

``CASES`` is the single source of the catalogue, and grows with every new node or check. Its
``before`` (issue 14's words, or what the code did before 860de4c) and the observed ``after`` make
the issue's table: ``LR_CATALOGUE_TABLE=path`` writes it as markdown when the module ends.
"""

from __future__ import annotations

import asyncio
import copy
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from workflow_prompts import convert, shrink, write_input_images

from comfyui_layout_retouch import host_api
from comfyui_layout_retouch.headless.executor import _Server

STAGE1, STAGE2, FULL, CAPTURE, PICK = "stage 1", "stage 2", "full", "capture", "pick-and-draw"
WORKFLOW_OF = {STAGE1: "layout_retouch_stage1_layout.json", STAGE2: "layout_retouch_stage2_retouch.json",
               FULL: "layout_retouch_full_dreambooth.json", PICK: "pick_and_draw_dreambooth.json"}
SWAP, INVERSION, BLEND = "Multi-Source Attention Swap", "DDIM Inversion", "Step-Blended KSampler"
SAM_SEGMENT, ADAPTIVE, CAM = "SAM Segment from Mask", "Adaptive Mask", "Cross-Attention Mask"
SDXL_UNET = "tiny_sdxl_vega.safetensors"
NOT_A_SAM = "not_a_sam.pth"
CONCEPT = "catalogue_concept/pytorch_custom_diffusion_weights.safetensors"  # in models/custom_diffusion
SDXL_CONCEPT = "catalogue_sdxl/pytorch_custom_diffusion_weights.safetensors"
SDXL_LORA = "catalogue_sdxl_lora.safetensors"  # keys of an SDXL UNet only (in a loras folder of the catalogue's)
PD_SAMPLER = "Pick-and-Draw Sampler"


class Graph(dict):
    """An API prompt (node id -> node) with the few edits the cases make."""

    def find(self, class_type: str, title: str = "") -> str:
        ids = [i for i, n in self.items() if n["class_type"] == class_type and n["_meta"]["title"].startswith(title)]
        assert len(ids) == 1, f"{len(ids)} {class_type} nodes titled '{title}...'"
        return ids[0]

    def inputs(self, class_type: str, title: str = "") -> dict:
        return self[self.find(class_type, title)]["inputs"]

    def out(self, class_type: str, title: str = "", index: int = 0) -> list:
        return [self.find(class_type, title), index]

    def add(self, class_type: str, **inputs) -> list:
        """Add a node; return a link to its first output."""
        node_id = str(max(int(i) for i in self) + 1)
        self[node_id] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": class_type}}
        return [node_id, 0]

    def keep_outputs(self, *titles: str) -> None:
        """Drop the output nodes not titled ``titles``: the case needs only what feeds these."""
        for node_id in [i for i, n in self.items() if n["class_type"] in ("SaveImage", "PreviewImage")
                        and n["_meta"]["title"] not in titles]:
            del self[node_id]


# ----- What a case expects ----------------------------------------------------------------------

@dataclass(frozen=True)
class Refused:
    """The run is refused: ``node: input 'input': <problem> Fix: <fix>``, with ``says`` in it.

    ``at``: ``validation`` (execution.validate_prompt's node errors: the queue button refuses) or
    ``execution`` (PromptExecutor's execution_error, raised in the node of class ``raised_in``).
    ``input`` and ``says`` are regular expressions.
    """

    at: str
    node: str
    input: str
    says: str
    raised_in: str = ""


def as_shipped(g: Graph) -> None:
    """The base graph unchanged."""


@dataclass(frozen=True)
class Runs:
    """The run succeeds and shows images. With ``against`` (an edit, e.g. :func:`as_shipped`), its final
    image is compared with the final image of the base graph so edited: ``equal`` bit for bit, or not."""

    does: str
    against: Callable[[Graph], None] | None = None
    equal: bool = True


@dataclass(frozen=True)
class Case:
    id: str
    what: str
    before: str
    edit: Callable[[Graph], None]
    expect: Refused | Runs
    base: str = STAGE2
    after_shipped: bool = False  # the base graph as shipped ran in an earlier queue
    defect: str = ""  # a finding: the case fails (strict xfail) until the pack is fixed


@dataclass
class Outcome:
    """What ComfyUI reported for one prompt."""

    refusals: list[tuple[str, str]]  # validation: (class_type, what ComfyUI reports)
    ran: bool = False
    error: dict | None = None  # PromptExecutor's execution_error
    outputs: dict | None = None


# ----- Edits ------------------------------------------------------------------------------------

def setting(class_type: str, title: str = "", **values) -> Callable[[Graph], None]:
    def edit(g: Graph) -> None:
        g.inputs(class_type, title).update(values)
    return edit


def retouch(**values):
    return setting("KSamplerAdvanced", "KSampler (Advanced): retouch", **values)


def swap(**values):
    return setting("LR_MultiSourceAttentionSwap", **values)


def inversion(which: str, **values):
    return setting("LR_DDIMInversion", f"DDIM Inversion ({which})", **values)


def blend(**values):
    return setting("LR_StepBlendedKSampler", **values)


def mask(**values):
    return setting("LR_CrossAttentionMask", **values)


def sam_segment(**values):
    return setting("LR_SAMSegment", **values)


def adaptive(**values):
    return setting("LR_AdaptiveMask", **values)


def linked(class_type: str, title: str = "", **sources: Callable[[Graph], list]) -> Callable[[Graph], None]:
    """Connect inputs of a node to other nodes: ``sources`` maps an input to a function returning the link."""
    def edit(g: Graph) -> None:
        inputs = g.inputs(class_type, title)
        for name, source in sources.items():
            inputs[name] = source(g)
    return edit


def then(*edits: Callable[[Graph], None]) -> Callable[[Graph], None]:
    def edit(g: Graph) -> None:
        for e in edits:
            e(g)
    return edit


def keep(*titles: str) -> Callable[[Graph], None]:
    return lambda g: g.keep_outputs(*titles)


def encoded(g: Graph, which: str) -> list:
    """The VAE Encode link feeding the ``which`` inversion."""
    return g.inputs("LR_DDIMInversion", f"DDIM Inversion ({which})")["latent"]


def empty_latent(g: Graph, width: int = 64, height: int = 64) -> list:
    return g.add("EmptyLatentImage", width=width, height=height, batch_size=1)


def solid_mask(g: Graph, value: float, batch: int = 1) -> list:
    link = g.add("SolidMask", value=value, width=64, height=64)
    return link if batch == 1 else repeated_mask(g, link, batch)


def repeated_mask(g: Graph, link: list, batch: int) -> list:
    image = g.add("RepeatImageBatch", image=g.add("MaskToImage", mask=link), amount=batch)
    return g.add("ImageToMask", image=image, channel="red")


def retouch_from(source: Callable[[Graph], list]) -> Callable[[Graph], None]:
    return linked("KSamplerAdvanced", latent_image=source)


def swap_mask(source: Callable[[Graph], list]) -> Callable[[Graph], None]:
    return linked("LR_MultiSourceAttentionSwap", mask=source)


def sdxl_model(g: Graph) -> list:
    return g.add("UNETLoader", unet_name=SDXL_UNET, weight_dtype="default")


def plain_ksampler(denoise: float) -> Callable[[Graph], None]:
    """The retouch KSamplerAdvanced replaced by a KSampler with the same settings."""
    def edit(g: Graph) -> None:
        node = g[g.find("KSamplerAdvanced")]
        a = node["inputs"]
        node["class_type"] = "KSampler"
        node["inputs"] = dict(seed=a["noise_seed"], steps=a["steps"], cfg=a["cfg"], sampler_name=a["sampler_name"],
                              scheduler=a["scheduler"], denoise=denoise, model=a["model"], positive=a["positive"],
                              negative=a["negative"], latent_image=a["latent_image"])
    return edit


def reference_image_size(width: int, height: int):
    return setting("ImageScale", "Reference to", width=width, height=height)


def layout_size(pixels: int):
    """The layout image at ``pixels`` square (and the reference, so the swap gets one size)."""
    return then(setting("ImageScale", "Layout to", width=pixels, height=pixels), reference_image_size(pixels, pixels))


def two_references(g: Graph) -> None:
    """The reference inversion gets a batch of two photos: the reference and (as a second photo) the layout."""
    inputs = g.inputs("LR_DDIMInversion", "DDIM Inversion (reference)")
    photos = g.add("ImageBatch", image1=g.out("ImageScale", "Reference to"), image2=g.out("ImageScale", "Layout to"))
    inputs["latent"] = g.add("VAEEncode", pixels=photos, vae=g[inputs["latent"][0]]["inputs"]["vae"])


def sam_batches(g: Graph) -> None:
    """SAM Segment gets 3 images and 2 prompt masks."""
    segment = g.inputs("LR_SAMSegment")
    segment["image"] = g.add("RepeatImageBatch", image=segment["image"], amount=3)
    segment["prompt_mask"] = repeated_mask(g, segment["prompt_mask"], 2)


def adaptive_batches(g: Graph) -> None:
    """Adaptive Mask gets 2 cross-attention masks and 3 SAM masks."""
    inputs = g.inputs("LR_AdaptiveMask")
    inputs["cross_attention_mask"] = repeated_mask(g, inputs["cross_attention_mask"], 2)
    inputs["sam_mask"] = repeated_mask(g, inputs["sam_mask"], 3)


def speck(g: Graph) -> list:
    """A 64x64 mask with one 2x2 speck (0.1% of the image)."""
    dot = g.add("SolidMask", value=1.0, width=2, height=2)
    return g.add("MaskComposite", destination=solid_mask(g, 0.0), source=dot, x=30, y=30, operation="add")


def swap_twice(g: Graph) -> None:
    """A second swap on the first swap's model."""
    first = g.find("LR_MultiSourceAttentionSwap")
    second = g.add("LR_MultiSourceAttentionSwap", **{**g[first]["inputs"], "model": [first, 0]})
    g.inputs("KSamplerAdvanced")["model"] = second


def adaptive_empty(g: Graph) -> None:
    inputs = g.inputs("LR_AdaptiveMask")
    inputs["cross_attention_mask"], inputs["sam_mask"] = solid_mask(g, 0.0), solid_mask(g, 0.0)


def another_replace_patch(g: Graph) -> None:
    """Self-Attention Guidance (a stock node: an attn1 replace patch on middle 0) before the swap."""
    inputs = g.inputs("LR_MultiSourceAttentionSwap")
    inputs["model"] = g.add("SelfAttentionGuidance", model=inputs["model"], scale=0.5, blur_sigma=2.0)
    inputs.update(layout_layers="all", reference_layers="all")


def layout_inversion_latent(g: Graph) -> list:
    """A DDIM Inversion of stage 1's layout latent (as the paper's graph has), for the retouch to start from."""
    inputs = g.inputs("LR_DDIMInversion")  # the full graph's one inversion: the reference's
    return g.add("LR_DDIMInversion", **{**inputs, "latent": g.out("LR_StepBlendedKSampler"),
                                        "record_attention": False})


def capture_graph(comfy) -> Graph:
    """Attention Capture on a KSampler, then Attention Map to Mask (the experimenters' nodes)."""
    g = Graph({"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_personalized.safetensors"},
                     "_meta": {"title": "Model"}}})
    text = "a photo of a sks vase"
    capture = g.add("LR_AttentionCapture", model=["1", 0], layers="output 3-11", start_step=0, end_step=10000,
                    record_self_kv=False)
    positive = g.add("CLIPTextEncode", text=text, clip=["1", 1])
    negative = g.add("CLIPTextEncode", text="blurry", clip=["1", 1])
    sampled = g.add("KSampler", model=capture, seed=0, steps=6, cfg=7.5, sampler_name="ddim",
                    scheduler="ddim_uniform", positive=positive, negative=negative, latent_image=empty_latent(g),
                    denoise=1.0)
    to_mask = g.add("LR_AttentionMapToMask", store=[capture[0], 1], after=sampled, clip=["1", 1], prompt=text,
                    subject="vase", threshold=0.1)
    g.add("PreviewImage", images=g.add("MaskToImage", mask=[to_mask[0], 1]))
    return g


def custom_diffusion(weights: str = CONCEPT, token: str = "<new1>") -> Callable[[Graph], None]:
    """Stage 1's personalized model and prompt from a Custom Diffusion Loader on the vanilla model."""
    def edit(g: Graph) -> None:
        vanilla = g.find("CheckpointLoaderSimple", "Vanilla")
        loader = g.add("LR_CustomDiffusionLoader", model=[vanilla, 0], clip=[vanilla, 1], weights_name=weights,
                       modifier_token=token, strength=1.0)
        g.inputs("LR_StepBlendedKSampler")["personalized_model"] = loader
        prompt = g.inputs("CLIPTextEncode", "Personalized prompt")
        prompt.update(text=prompt["text"].replace("sks", "<new1>"), clip=[loader[0], 1])
    return edit


def write_custom_diffusion(folder: Path) -> None:
    """A concept as diffusers' train_custom_diffusion.py writes it (one layer's to_k/to_v and the token
    <new1>), and SDXL-shaped weights, in ``folder`` (a models/custom_diffusion)."""
    import safetensors.torch

    gen = torch.Generator().manual_seed(23)
    layer = "down_blocks.{}.attentions.0.transformer_blocks.0.attn2.processor.{}_custom_diffusion.weight"
    concept = folder / Path(CONCEPT).parent
    concept.mkdir(parents=True)
    weights = {layer.format(0, proj): torch.randn(320, 768, generator=gen) * 0.03 for proj in ("to_k", "to_v")}
    safetensors.torch.save_file(weights, str(folder / CONCEPT), metadata={"format": "pt"})
    token = {"<new1>": torch.randn(768, generator=gen) * 0.02}
    safetensors.torch.save_file(token, str(concept / "<new1>.safetensors"))
    (folder / Path(SDXL_CONCEPT).parent).mkdir()
    safetensors.torch.save_file({layer.format(1, "to_k"): torch.zeros(640, 2048)}, str(folder / SDXL_CONCEPT))


def map_before_sampling(g: Graph) -> None:
    g.inputs("LR_AttentionMapToMask")["after"] = empty_latent(g)


def write_sdxl_lora(folder: Path) -> None:
    """A LoRA of an SDXL UNet (its second transformer block at input 4, which SD1.x lacks): on SD1.x ComfyUI's
    loader drops every key ('lora key not loaded') and returns the model with nothing applied."""
    import safetensors.torch

    key = "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q"
    safetensors.torch.save_file({f"{key}.lora_up.weight": torch.zeros(640, 4), f"{key}.lora_down.weight":
                                 torch.zeros(4, 640), f"{key}.alpha": torch.tensor(4.0)}, str(folder / SDXL_LORA))


def personalized_from(source: Callable[[Graph], list]) -> Callable[[Graph], None]:
    return linked("LR_StepBlendedKSampler", personalized_model=source)


def other_family_lora(g: Graph) -> list:
    """The vanilla model through a LoRA Loader (model only) with an SDXL LoRA."""
    return g.add("LoraLoaderModelOnly", model=g.out("CheckpointLoaderSimple", "Vanilla"), lora_name=SDXL_LORA,
                 strength_model=1.0)


def vanilla_loaded_again(g: Graph) -> list:
    """A second Load Checkpoint of the vanilla model's file."""
    return g.add("CheckpointLoaderSimple", ckpt_name=g.inputs("CheckpointLoaderSimple", "Vanilla")["ckpt_name"])


def null_text_reference(g: Graph) -> None:
    """The reference inverted by a Null-Text Inversion (cfg 7.5, with the negative prompt) and its trajectory
    wired to the swap; the swap's reference_negative stays the plain negative."""
    inversion = g.inputs("LR_DDIMInversion", "DDIM Inversion (reference)")
    swap_inputs = g.inputs("LR_MultiSourceAttentionSwap")
    made = g.add("LR_NullTextInversion", model=inversion["model"], positive=swap_inputs["reference_positive"],
                 negative=swap_inputs["reference_negative"], latent=inversion["latent"], steps=inversion["steps"],
                 scheduler=inversion["scheduler"], sampler_name="ddim", cfg=7.5, iterations=2, learning_rate=0.01,
                 early_stop=1e-5)
    swap_inputs["reference_inversion"] = [made[0], 1]


# ----- The catalogue ----------------------------------------------------------------------------

SILENT_SAMPLER = "silent: ran and gave another image (68-72/255 mean pixel difference from the right run)"
CLEAR = "clear already: "
NEW_NODE = "no such node before 3bcc5ef"
RETOUCH_FIX = r"Fix: use KSampler \(Advanced\) with add_noise disabled"
START = r"starts at step {} of 7 from a latent that is not the layout path's there.*Fix: connect the layout's DDIM "
RETRACE = r"is sampled with {}, which does not retrace a DDIM inversion.*Fix: set the KSampler's sampler_name to ddim"
SCHEDULE = (r"is sampled on a schedule \(sigma \S+\) that is not the inversions' \(7 sampling steps of ddim_uniform, "
            r"6 asked, from sigma \S+\)")
LAYERS_FIX = r"Fix: write e.g. 'output 6-11'"


def at_run(node: str, input_name: str, says: str, raised_in: str = "") -> Refused:
    return Refused("execution", node, input_name, says, raised_in)


def at_queue(node: str, input_name: str, says: str) -> Refused:
    return Refused("validation", node, input_name, says)


def in_retouch(says: str) -> Refused:
    return at_run(SWAP, "model", says, raised_in="KSamplerAdvanced")


CASES = [
    Case("stage2-as-shipped", "the shipped stage-2 graph, shrunk", "runs", as_shipped,
         Runs("the retouched image, M^c, M^SAM and M")),
    # The retouch sampler: anything but KSampler (Advanced), no added noise, ddim/euler, from the layout path's start.
    Case("retouch-add-noise", "retouch KSampler (Advanced) with add_noise enabled", SILENT_SAMPLER,
         retouch(add_noise="enable"), in_retouch(r"is sampled with fresh noise added.*" + RETOUCH_FIX)),
    Case("retouch-start-at-step-2", "retouch KSampler (Advanced) with start_at_step 2", SILENT_SAMPLER,
         retouch(start_at_step=2), in_retouch(START.format(2))),
    Case("retouch-euler-ancestral", "retouch sampler euler_ancestral", SILENT_SAMPLER,
         retouch(sampler_name="euler_ancestral"), in_retouch(RETRACE.format("euler_ancestral"))),
    Case("retouch-dpmpp-2m", "retouch sampler dpmpp_2m", SILENT_SAMPLER, retouch(sampler_name="dpmpp_2m"),
         in_retouch(RETRACE.format("dpmpp_2m"))),
    Case("retouch-from-encoded-layout", "retouch started from the VAE-encoded (clean) layout", SILENT_SAMPLER,
         retouch_from(lambda g: encoded(g, "layout")), in_retouch(START.format(0))),
    Case("retouch-from-reference-inverted", "retouch started from the reference's inverted latent", SILENT_SAMPLER,
         retouch_from(lambda g: g.out("LR_DDIMInversion", "DDIM Inversion (reference)")), in_retouch(START.format(0))),
    Case("retouch-from-empty-latent", "retouch started from an Empty Latent Image", SILENT_SAMPLER,
         retouch_from(empty_latent), in_retouch(START.format(0))),
    Case("retouch-plain-ksampler", "a plain KSampler (denoise 1.0) as the retouch sampler", SILENT_SAMPLER,
         plain_ksampler(1.0), at_run(SWAP, "model", r"is sampled with fresh noise added.*" + RETOUCH_FIX, "KSampler")),
    Case("retouch-ksampler-denoise", "a plain KSampler at denoise 0.5 as the retouch sampler (the inversions ran "
         "the full schedule)", CLEAR + "'is sampled on a schedule ... not the inversions' (6 steps, ddim_uniform)'",
         plain_ksampler(0.5), at_run(SWAP, "model", SCHEDULE + r".*with denoise 1\.0", "KSampler")),
    Case("retouch-steps-differ", "retouch steps 8, inversions 6", CLEAR + "the same schedule message",
         retouch(steps=8), in_retouch(SCHEDULE + r".*Fix: set the sampler's steps to 6 and scheduler to ddim_uniform")),
    Case("retouch-scheduler-differs", "retouch scheduler normal, inversions ddim_uniform",
         CLEAR + "the same schedule message", retouch(scheduler="normal"), in_retouch(SCHEDULE)),
    Case("retouch-euler", "retouch sampler euler (legal: ComfyUI's ddim is its euler), reference cache off",
         "runs", then(retouch(sampler_name="euler"), swap(reference_cache="off")),
         Runs("the image of ddim, bit for bit", against=swap(reference_cache="off"))),
    Case("retouch-cfg-differs", "retouch cfg 3.0 while the inversions ran at cfg 1.0 (legal: the paper inverts "
         "at 1.0 and samples at 7.5)", "runs", retouch(cfg=3.0), Runs("an image")),
    # The swap's inputs.
    Case("swap-lambda2-above-steps", "lambda2 50 of 6 steps", "silent: ran as 'never the reference' (as lambda2 = 7)",
         swap(lambda2=50, mask_start=50), at_run(SWAP, "lambda2", r"is 50 but the inversions' schedule has 7 sampling "
                                                 r"steps \(6 asked of ddim_uniform\).*Fix: set lambda2 to at most 7")),
    Case("swap-mask-start-above-steps", "mask_start 50 of 6 steps", "silent: ran as 'no blend'",
         swap(mask_start=50), at_run(SWAP, "mask_start", r"is 50 but the inversions' schedule has 7 sampling steps.*"
                                     r"Fix: set mask_start to at most 7")),
    Case("swap-mask-start-below-lambda2", "mask_start 2 below lambda2 4", "silent: ran as mask_start = lambda2",
         swap(lambda2=4, mask_start=2), at_run(SWAP, "mask_start", r"is 2, before lambda2 = 4.*Fix: set mask_start "
                                               r"at or after lambda2")),
    Case("swap-lambda2-beyond-schedule", "lambda2 50 of 6 steps, mask_start left at 30 (issue 28)",
         "vague: refused as 'mask_start is 30, before lambda2 = 50' (the root cause is lambda2 beyond the schedule)",
         swap(lambda2=50, mask_start=30), at_run(SWAP, "lambda2", r"is 50 but the inversions' schedule has 7 sampling "
                                                 r"steps.*Fix: set lambda2 to at most 7")),
    Case("swap-null-text-plain-negative", "a Null-Text Inversion as the reference, reference_negative the plain "
         "negative instead of its null_negative (issue 28)", "silent: ran, off the inverted path",
         null_text_reference, at_run(SWAP, "reference_negative", r"is a single prompt, but the inversion of this path "
                                     r"is a Null-Text Inversion.*Fix: connect the Null-Text Inversion's null_negative")),
    Case("swap-lambda2-is-step-count", "lambda2 = mask_start = 7, the schedule's step count (legal: the layout "
         "in every step)", "runs", swap(lambda2=7, mask_start=7), Runs("an image")),
    Case("swap-all-zero-mask", "an all-zero mask into the swap", "silent: ran (Adaptive Mask refuses one)",
         swap_mask(lambda g: solid_mask(g, 0.0)), at_run(SWAP, "mask", r"is all zeros.*Fix: check the mask")),
    Case("swap-mask-batch-3", "a swap mask of batch 3 for a target of batch 1",
         "vague: failed late in KSamplerAdvanced with 'The size of tensor a (6) must match the size of tensor b (2)', "
         "after the inversions ran", swap_mask(lambda g: solid_mask(g, 1.0, batch=3)),
         at_run(SWAP, "mask", r"has shape \(3, 64, 64\): 3 masks for 1 image\(s\).*Fix: give one mask, or one per "
                              r"image \(1\)")),
    Case("swap-two-references", "a reference LATENT batch of 2 (two photos)", "silent: ran with the first "
         "reference image only", two_references,
         Runs("every reference read: the image differs from the first photo's alone", as_shipped, equal=False)),
    Case("swap-layers-output-99", "layout_layers 'output 99'", CLEAR + "'selects no attention block of this model'",
         swap(layout_layers="output 99"), at_run(SWAP, "layout_layers", r"selects no attention block of this model.*"
                                                 r"Fix: choose among: .*output 11")),
    Case("swap-layers-foo", "reference_layers 'foo'", CLEAR + "''foo' cannot be read'", swap(reference_layers="foo"),
         at_run(SWAP, "reference_layers", r"'foo' cannot be read: 'foo' is not a block range.*" + LAYERS_FIX)),
    Case("swap-layers-count-down", "layout_layers 'output 11-6'", CLEAR + "'counts down'",
         swap(layout_layers="output 11-6"), at_run(SWAP, "layout_layers", r"counts down.*" + LAYERS_FIX)),
    Case("swap-fast-without-record", "source_paths fast, no inversion recorded attention",
         CLEAR + "'is the fast mode but neither inversion recorded attention'",
         swap(source_paths="recorded, attention from the inversions (fast)"),
         at_run(SWAP, "source_paths", r"is the fast mode but neither inversion recorded attention.*Fix: turn "
                                      r"record_attention on")),
    Case("swap-fast-record-misses-layers", "fast mode; the layout inversion recorded only 'output 3'",
         CLEAR + "'recorded no attention at output 6, ...'",
         then(inversion("layout", record_attention=True, attention_layers="output 3"),
              swap(source_paths="recorded, attention from the inversions (fast)")),
         at_run(SWAP, "layout_inversion", r"recorded no attention at output 6, .*which the swap reads.*Fix: set "
                                          r"attention_layers")),
    Case("swap-inversion-steps-differ", "reference inverted with 3 steps, layout with 6",
         "vague: 'uses 3 steps of ddim_uniform but layout_inversion uses 6 steps' (ddim_uniform runs 7 for 6)",
         inversion("reference", steps=3),
         at_run(SWAP, "reference_inversion", r"walks \d+ sampling steps of ddim_uniform \(3 asked\) from sigma \S+ but "
                                             r"layout_inversion walks 7 sampling steps of ddim_uniform \(6 asked\)")),
    Case("swap-inversion-scheduler-differs", "reference inverted with scheduler normal, layout with ddim_uniform",
         CLEAR + "'uses 6 steps of normal but layout_inversion uses 6 steps of ddim_uniform'",
         inversion("reference", scheduler="normal"),
         at_run(SWAP, "reference_inversion", r"walks \d+ sampling steps of normal \(6 asked\).* but layout_inversion "
                                             r"walks 7 sampling steps of ddim_uniform")),
    Case("swap-sizes-differ", "reference image 64x80, layout 64x64", CLEAR + "'is 64x80 pixels but layout_inversion "
         "is 64x64'", reference_image_size(64, 80),
         at_run(SWAP, "reference_inversion", r"is 64x80 pixels but layout_inversion is 64x64.*Fix: resize both")),
    Case("swap-twice", "a second Multi-Source Attention Swap on the first one's model",
         CLEAR + "'already has a attn1 replace patch on ('output', 6, 0) from another node' (the first swap)",
         swap_twice, at_run(SWAP, "model", r"already carries a Multi-Source Attention Swap.*Fix: connect the swap to "
                                           r"the model before the first swap")),
    Case("swap-sdxl-model", "an SDXL-family model into the swap, with SD1.x inversions", CLEAR + "'was made with a "
         "SD15 model, not this Segmind_Vega model'", linked("LR_MultiSourceAttentionSwap", model=sdxl_model),
         at_run(SWAP, "reference_inversion", r"was made with a SD15 model, not this \w+ model.*Fix: invert with the "
                                             r"same personalized model")),
    # DDIM Inversion.
    Case("inversion-sampler-euler-ancestral", "DDIM Inversion sampler_name euler_ancestral",
         CLEAR + "''euler_ancestral' cannot be inverted'", inversion("layout", sampler_name="euler_ancestral"),
         at_queue(INVERSION, "sampler_name", r"'euler_ancestral' cannot be inverted.*Fix: use ddim or euler")),
    Case("inversion-cfg-without-negative", "DDIM Inversion cfg 3.0 with no negative", CLEAR + "'is not connected "
         "but cfg is 3.0'", inversion("layout", cfg=3.0),
         at_run(INVERSION, "negative", r"is not connected but cfg is 3.0.*Fix: connect a negative")),
    Case("inversion-sdxl-model", "an SDXL-family model with SD1.x latents and prompts in DDIM Inversion",
         "vague: 'mat1 and mat2 shapes cannot be multiplied'",
         linked("LR_DDIMInversion", "DDIM Inversion (layout)", model=sdxl_model),
         at_run(INVERSION, "positive", r"has text width 768 but the \w+ model reads 2048.*Fix: encode the prompt with "
                                       r"the CLIP of the checkpoint")),
    Case("inversion-16-channel-latent", "a 16-channel latent (Empty SD3 Latent) into DDIM Inversion",
         CLEAR + "'has 16 channels but the SD15 model takes 4'",
         linked("LR_DDIMInversion", "DDIM Inversion (layout)",
                latent=lambda g: g.add("EmptySD3LatentImage", width=64, height=64, batch_size=1)),
         at_run(INVERSION, "latent", r"has 16 channels but the \w+ model takes 4.*Fix: encode the image")),
    Case("inversion-kl-optimal-1-step", "DDIM Inversion with scheduler kl_optimal at 1 step (an infinite sigma)",
         CLEAR + "''kl_optimal' gives infinite sigmas'", inversion("layout", scheduler="kl_optimal", steps=1),
         at_run(INVERSION, "scheduler", r"'kl_optimal' gives infinite sigmas, which cannot be inverted.*Fix: use "
                                        r"ddim_uniform")),
    Case("inversion-record-layers-foo", "DDIM Inversion record_attention with attention_layers 'foo'",
         CLEAR + "''foo' cannot be read'", inversion("layout", record_attention=True, attention_layers="foo"),
         at_run(INVERSION, "attention_layers", r"'foo' cannot be read.*" + LAYERS_FIX)),
    # Masks.
    Case("mask-subject-not-in-prompt", "Cross-Attention Mask subject 'dog' not in the prompt",
         CLEAR + "''dog' is not in the prompt ...'", mask(subject="dog"),
         at_run(CAM, "subject", r"'dog' is not in the prompt 'a photo of a sks vase.*Fix: write the subject word")),
    Case("mask-missing-embedding", "Cross-Attention Mask with embedding:not_there, whose file is missing",
         "vague: the subject 'is not in the prompt' while the prompt shows it",
         mask(prompt="a photo of embedding:not_there vase", subject="embedding:not_there"),
         at_run(CAM, "subject", r"'embedding:not_there': ComfyUI finds no embedding file 'not_there'.*Fix: put "
                                r"not_there.safetensors")),
    Case("mask-empty-subject", "Cross-Attention Mask with an empty subject", CLEAR + "'is empty'", mask(subject=" "),
         at_run(CAM, "subject", r"is empty.*Fix: write the subject's word")),
    Case("mask-embedding-subject", "Cross-Attention Mask on embedding:tiny_concept (the file is there)", "runs",
         then(mask(prompt="a photo of embedding:tiny_concept vase", subject="embedding:tiny_concept"),
              keep("Preview: M^c (cross-attention)")), Runs("M^c")),
    *(Case(f"mask-{px}px-{name}", f"Cross-Attention Mask on a {px}x{px} layout at {label} of the latent",
           f"refused a legal size: {px} px failed in Cross-Attention Mask at {label}",
           then(layout_size(px), mask(resolution=f"{label} of the latent ({res} at 512 px)"),
                keep("Preview: M^c (cross-attention)")), Runs(f"a {px}x{px} M^c"))
      for px in (56, 72) for name, label, res in (("half", "1/2", "32x32"), ("quarter", "1/4", "16x16"))),
    Case("stage2-at-72px", "the whole stage-2 graph at 72x72 px",
         "refused a legal size: stopped in Cross-Attention Mask (as mask-72px-half)", layout_size(72),
         Runs("a 72x72 retouched image and the masks")),
    Case("swap-after-another-replace-patch", "Self-Attention Guidance (a stock attn1 replace patch on middle 0) "
         "before the swap on all layers, at 72x72 px (SAG needs a middle block larger than 1x1)",
         "refused a legal graph: 'already has a attn1 replace patch on ('middle', 0, 0) from another node'",
         then(layout_size(72), another_replace_patch),
         Runs("the patches chained: SAG changes the 72x72 retouched image of the same swap",
              then(layout_size(72), swap(layout_layers="all", reference_layers="all")), equal=False)),
    Case("sam-box-corners-reversed", "SAM Segment box '40,5,10,30' (x1 < x0)", "silent: SAM accepted the box",
         sam_segment(box="40,5,10,30"), at_run(SAM_SEGMENT, "box", r"'40,5,10,30' has x1 <= x0 or y1 <= y0.*Fix: "
                                                                   r"write the top-left corner first")),
    Case("sam-box-unreadable", "SAM Segment box '1,2,3'", CLEAR + "''1,2,3' cannot be read'",
         sam_segment(box="1,2,3"), at_run(SAM_SEGMENT, "box", r"'1,2,3' cannot be read.*Fix: write pixel coordinates "
                                                              r"as 'x0,y0,x1,y1'")),
    Case("sam-points-unreadable", "SAM Segment extra_points 'a,b'", CLEAR + "''a,b' cannot be read'",
         sam_segment(extra_points="a,b"), at_run(SAM_SEGMENT, "extra_points", r"'a,b' cannot be read.*Fix: write "
                                                                               r"pixel coordinates as 'x,y; x,y'")),
    Case("sam-batches-do-not-pair", "SAM Segment with 3 images and 2 prompt masks",
         "vague: failed late in KSamplerAdvanced with a tensor size mismatch, after the inversions ran", sam_batches,
         at_run(SAM_SEGMENT, "prompt_mask", r"batches of 3 and 2 masks cannot be paired with the images.*Fix: give "
                                            r"one mask, or one per image")),
    Case("sam-two-masks-one-image", "SAM Segment with 1 image and 2 prompt masks (issue 28)", "refused at the "
         "swap's mask ('2 masks for 1 image(s)'), not where the masks enter",
         linked("LR_SAMSegment", prompt_mask=lambda g: repeated_mask(g, g.inputs("LR_SAMSegment")["prompt_mask"], 2)),
         at_run(SAM_SEGMENT, "prompt_mask", r"holds 2 masks for 1 image\(s\).*Fix: give one mask, or one per image")),
    Case("sam-empty-prompt-mask", "SAM Segment with an all-zero prompt mask", CLEAR + "'is empty (all zeros) for "
         "image 0'", linked("LR_SAMSegment", prompt_mask=lambda g: solid_mask(g, 0.0)),
         at_run(SAM_SEGMENT, "prompt_mask", r"is empty \(all zeros\) for image 0.*Fix: check the cross-attention")),
    Case("sam-loader-not-a-sam", f"SAM Loader given '{NOT_A_SAM}', a torch file that is not Segment Anything",
         CLEAR + "'cannot be loaded: this is not a Segment Anything checkpoint'",
         setting("LR_SAMLoader", sam_name=NOT_A_SAM),
         at_run("SAM Loader", "sam_name", rf"'{NOT_A_SAM}' cannot be loaded: this is not a Segment Anything checkpoint"
                                          r".*Fix: download the checkpoint again")),
    Case("sam-loader-missing-file", "SAM Loader with sam_vit_h_4b8939.pth not in models/sams",
         CLEAR + "''sam_vit_h_4b8939.pth' is not in ...'", setting("LR_SAMLoader", sam_name="sam_vit_h_4b8939.pth"),
         at_queue("SAM Loader", "sam_name", r"'sam_vit_h_4b8939.pth' is not in .*Fix: put an official checkpoint "
                                            r"there \(vit_h: sam_vit_h_4b8939.pth")),
    Case("adaptive-all-zero", "Adaptive Mask with an all-zero M^c and M^SAM", CLEAR + "'and sam_mask are both empty'",
         adaptive_empty, at_run(ADAPTIVE, "cross_attention_mask", r"and sam_mask are both empty.*Fix: check the "
                                                                  r"subject word")),
    Case("adaptive-only-specks", "Adaptive Mask with an M^c of one 2x2 speck (below min_component_area) and an "
         "empty M^SAM", "silent: M was the speck alone (the union took the raw M^c)",
         linked("LR_AdaptiveMask", cross_attention_mask=speck, sam_mask=lambda g: solid_mask(g, 0.0)),
         at_run(ADAPTIVE, "cross_attention_mask", r"has only parts below min_component_area and sam_mask is empty.*"
                                                  r"Fix: lower min_component_area")),
    Case("adaptive-normalize-reversed", "Adaptive Mask normalize_low 0.9 above normalize_high 0.5",
         CLEAR + "'is 0.9, above normalize_high 0.5'", adaptive(normalize_low=0.9, normalize_high=0.5),
         at_run(ADAPTIVE, "normalize_low", r"is 0.9, above normalize_high 0.5.*Fix: keep normalize_low <=")),
    Case("adaptive-batches-do-not-pair", "Adaptive Mask with 2 M^c masks and 3 M^SAM masks",
         CLEAR + "'batches of 2 and 3 masks cannot be paired'", adaptive_batches,
         at_run(ADAPTIVE, "sam_mask", r"batches of 2 and 3 masks cannot be paired.*Fix: give one mask")),
    # Stage 1 and its path as the layout path.
    Case("stage1-path", "the full graph in the recorded mode: stage 1's trajectory as the layout path, retouch from "
         "its start_latent", "runs", then(blend(record_attention=False), swap(source_paths="recorded")),
         Runs("the layout and the retouched image"), base=FULL),
    Case("stage1-path-fast", "the full graph as shipped: stage 1 recording attention, swap in fast mode on its path",
         "runs", as_shipped, Runs("the layout and the retouched image"), base=FULL),
    Case("stage1-path-denoise-0.7", "stage 1 at denoise 0.7 used as the layout path",
         "vague: 'uses 6 steps of ddim_uniform but layout_inversion uses 6 steps of ddim_uniform'",
         blend(denoise=0.7),
         at_run(SWAP, "reference_inversion", r"walks 7 sampling steps of ddim_uniform \(6 asked\) from sigma (\S+) but "
                                             r"layout_inversion walks \d sampling steps of ddim_uniform \(6 asked\) "
                                             r"from sigma (?!\1)\S+.*denoise 1.0"), base=FULL),
    Case("stage1-path-retouch-from-inversion", "stage 1's path as the layout path, retouch from a layout "
         "inversion's inverted latent instead of start_latent", SILENT_SAMPLER,
         retouch_from(layout_inversion_latent), in_retouch(START.format(0)), base=FULL),
    Case("stage1-lambda1-above-steps", "lambda1 9 of 6 steps", CLEAR + "'is 9, larger than steps = 6'",
         blend(lambda1=9),
         at_run(BLEND, "lambda1", r"is 9, larger than steps = 6.*Fix: set lambda1 between 0 and steps"), base=STAGE1),
    Case("stage1-denoise-0", "Step-Blended KSampler at denoise 0", "vague: 'recorded 0 steps for -1 sigmas'",
         blend(denoise=0.0), at_queue(BLEND, "denoise", r"is 0.0: no step would run.*Fix: set denoise above 0"),
         base=STAGE1),
    Case("stage1-families-differ", "an SD1.x vanilla model and an SDXL-family personalized model",
         CLEAR + "'is a Segmind_Vega model (text width 2048) but vanilla_model is a SD15 model (text width 768)'",
         linked("LR_StepBlendedKSampler", personalized_model=sdxl_model),
         at_run(BLEND, "personalized_model", r"is a \w+ model \(text width 2048\) but vanilla_model is a \w+ model "
                                             r"\(text width 768\).*Fix: load vanilla_model and personalized_model "
                                             r"from the same base family"), base=STAGE1),
    Case("stage1-16-channel-latent", "a 16-channel latent (Empty SD3 Latent) into the Step-Blended KSampler",
         CLEAR + "'has 16 channels but the SD15 model takes 4'",
         linked("LR_StepBlendedKSampler", latent_image=lambda g: g.add("EmptySD3LatentImage", width=64, height=64,
                                                                       batch_size=1)),
         at_run(BLEND, "latent_image", r"has 16 channels but the \w+ model takes 4"), base=STAGE1),
    Case("stage1-record-layers-output-99", "Step-Blended KSampler record_attention with attention_layers 'output 99'",
         CLEAR + "'selects no attention block of this model'", blend(record_attention=True,
                                                                    attention_layers="output 99"),
         at_run(BLEND, "attention_layers", r"selects no attention block.*Fix: choose among"), base=STAGE1),
    Case("stage1-lambda1-0", "lambda1 0 (personalized model only; legal)", "runs", blend(lambda1=0),
         Runs("the layout image"), base=STAGE1),
    Case("stage1-other-family-lora", "the personalized model an SDXL LoRA on the SD1.x vanilla model (issue 28)",
         "silent: every LoRA key dropped ('lora key not loaded' in the log); stage 1 blended the vanilla model "
         "with itself", personalized_from(other_family_lora),
         at_run(BLEND, "personalized_model", r"is the vanilla model itself with nothing applied.*LoRA of another "
                                             r"family.*Fix: load the personalized checkpoint"), base=STAGE1),
    Case("stage1-vanilla-loaded-twice", "the personalized model a second Load Checkpoint of the vanilla file, the "
         "personalized prompt with its token (legal: ComfyUI hands one model to both loaders, as a Textual Inversion "
         "workflow's single loader; the prompts differ)", "runs", personalized_from(vanilla_loaded_again),
         Runs("the layout image"), base=STAGE1),
    Case("stage1-one-model-same-prompts", "one model in both inputs and the personalized prompts equal to the "
         "vanilla ones (issue 28)", "silent: a plain generation",
         then(personalized_from(lambda g: g.out("CheckpointLoaderSimple", "Vanilla")),
              linked("CLIPTextEncode", "Personalized prompt", clip=lambda g: g.out("CheckpointLoaderSimple",
                                                                                   "Vanilla", 1)),
              setting("CLIPTextEncode", "Personalized prompt", text="a photo of a vase floating in a swimming pool, "
                      "top view"),
              linked("CLIPTextEncode", "Personalized negative", clip=lambda g: g.out("CheckpointLoaderSimple",
                                                                                     "Vanilla", 1))),
         at_run(BLEND, "personalized_positive", r"and personalized_negative are vanilla_positive and "
                                                r"vanilla_negative.*plain generation.*Fix: connect the personalized "
                                                r"model"), base=STAGE1),
    Case("stage1-one-model-for-both", "one model in both inputs, as a Textual Inversion workflow has it (legal)",
         "runs", personalized_from(lambda g: g.out("CheckpointLoaderSimple", "Vanilla")), Runs("the layout image"),
         base=STAGE1),
    # The Pick-and-Draw Sampler: a connected palette or template its schedule never reaches.
    Case("pd-appearance-steps-unreached", "Pick-and-Draw Sampler appearance steps 10-19 on a 6-step schedule, the "
         "palette connected (issue 28)", "silent: ran with the palette never used (the image of the graph without "
         "it)", setting("LR_PickAndDrawSampler", appearance_start=10, appearance_end=19),
         at_run(PD_SAMPLER, "appearance_start", r"is 10, but this sampler's schedule has 6 steps \(0-5\), so the "
                                                r"connected palette would never be used.*Fix: set appearance_start",
                "SamplerCustomAdvanced"), base=PICK),
    Case("pd-layout-steps-unreached", "Pick-and-Draw Sampler layout steps 7-9 on a 6-step schedule, the template "
         "connected (issue 28)", "silent: ran with the template never used",
         setting("LR_PickAndDrawSampler", layout_start=7, layout_end=9),
         at_run(PD_SAMPLER, "layout_start", r"is 7, but this sampler's schedule has 6 steps.*connected template would "
                                            r"never be used.*Fix: set layout_start", "SamplerCustomAdvanced"),
         base=PICK),
    # Custom Diffusion Loader (new in 3bcc5ef).
    Case("cd-concept", "stage 1 with a Custom Diffusion concept (<new1>) as the personalized model", NEW_NODE,
         custom_diffusion(), Runs("the layout image"), base=STAGE1),
    Case("cd-weights-missing", "Custom Diffusion Loader weights_name 'nope.safetensors' (not in the folder)", NEW_NODE,
         custom_diffusion(weights="nope.safetensors"),
         at_queue("Custom Diffusion Loader", "weights_name", r"'nope.safetensors' is not in .*Fix: put "
                                                             r"pytorch_custom_diffusion_weights.safetensors"),
         base=STAGE1),
    Case("cd-token-is-a-path", "Custom Diffusion Loader modifier_token '../x'", NEW_NODE,
         custom_diffusion(token="../x"),
         at_run("Custom Diffusion Loader", "modifier_token", r"'../x' is not a token name.*Fix: write the token"),
         base=STAGE1),
    Case("cd-token-file-missing", "Custom Diffusion Loader modifier_token '<new9>', which has no file", NEW_NODE,
         custom_diffusion(token="<new9>"),
         at_run("Custom Diffusion Loader", "modifier_token", r"no file for the modifier token '<new9>'.*\(it holds "
                                                              r"<new1>.safetensors\).*Fix: put the <new9>.safetensors"),
         base=STAGE1),
    Case("cd-token-file-as-weights", "Custom Diffusion Loader given the token file as weights_name", NEW_NODE,
         custom_diffusion(weights=str(Path(CONCEPT).parent / "<new1>.safetensors")),
         at_run("Custom Diffusion Loader", "weights_name", r"holds no Custom Diffusion weights.*looks like a modifier "
                                                            r"token.*Fix: choose pytorch_custom_diffusion_weights"),
         base=STAGE1),
    Case("cd-sdxl-weights", "Custom Diffusion Loader with SDXL-trained weights on the SD1.x model", NEW_NODE,
         custom_diffusion(weights=SDXL_CONCEPT),
         at_run("Custom Diffusion Loader", "weights_name", r"does not fit this \w+ model \(trained for 2048-wide "
                                                            r"text: SDXL; this model's is 768\).*Fix: connect the base "
                                                            r"model"), base=STAGE1),
    # The experimenters' nodes.
    Case("capture", "Attention Capture on a KSampler, then Attention Map to Mask", "runs", as_shipped,
         Runs("the subject's mask"), base=CAPTURE),
    Case("capture-end-before-start", "Attention Capture end_step 1 before start_step 3",
         CLEAR + "'is 1, before start_step 3'", setting("LR_AttentionCapture", start_step=3, end_step=1),
         at_run("Attention Capture", "end_step", r"is 1, before start_step 3.*Fix: set end_step at or after"),
         base=CAPTURE),
    Case("capture-layers-foo", "Attention Capture layers 'foo'", CLEAR + "''foo' cannot be read'",
         setting("LR_AttentionCapture", layers="foo"),
         at_run("Attention Capture", "layers", r"'foo' cannot be read.*" + LAYERS_FIX), base=CAPTURE),
    Case("map-before-sampling", "Attention Map to Mask whose 'after' is not the captured sampler's latent, on a "
         "new Attention Capture (start_step 1)", CLEAR + "'holds no cross-attention: the captured model has not been "
         "sampled'", then(map_before_sampling, setting("LR_AttentionCapture", start_step=1)),
         at_run("Attention Map to Mask", "store", r"holds no cross-attention.*Fix: sample with the Attention Capture"),
         base=CAPTURE),
    Case("map-reads-an-earlier-queue", "Attention Map to Mask whose 'after' is not the captured sampler's latent, "
         "on the Attention Capture an earlier queue sampled (cached)", "the same (the store outlives the queue)",
         map_before_sampling, Runs("the mask of the capture's latest sampling, from the earlier queue (the tooltip: "
                                   "'what the latest run recorded'; 'after' only orders)"),
         base=CAPTURE, after_shipped=True),
]


# ----- Running a case ---------------------------------------------------------------------------

def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def with_bases(comfy, prompt: Graph, bases: dict[str, Graph]) -> dict:
    """``prompt`` plus a copy of every base graph's nodes but its outputs, under fresh ids.

    The copies feed no output, so nothing in them is validated or run (as nodes that feed nothing on
    a canvas); they only keep the base's results in the classic cache, which drops what the
    current prompt does not hold: a case that changes an inversion would otherwise make the next
    case run both inversions again.
    """
    out = dict(prompt)
    for k, base in enumerate(bases.values(), start=1):
        for node_id, node in base.items():
            if getattr(comfy.NODE_CLASS_MAPPINGS[node["class_type"]], "OUTPUT_NODE", False) is not True:
                inputs = {n: [str(int(v[0]) + 1000 * k), v[1]] if is_link(v) else v for n, v in node["inputs"].items()}
                out[str(int(node_id) + 1000 * k)] = {**node, "inputs": inputs}
    return out


def send(comfy, executor, prompt: dict, bases: dict[str, Graph]) -> Outcome:
    """Validate and execute ``prompt`` as ComfyUI's server does: the outputs that validate run."""
    import execution

    prompt = with_bases(comfy, prompt, bases)
    ok, error, outputs, node_errors = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), prompt, None))
    refusals = [(e["class_type"], r["details"]) for e in node_errors.values() for r in e["errors"]]
    if not ok and not refusals:
        refusals = [("prompt", f"{error['message']}: {error['details']}")]
    outcome = Outcome(refusals)
    if ok:
        executor.execute(prompt, str(uuid.uuid4()), {}, outputs)
        events = dict(executor.status_messages)
        outcome.ran = "execution_success" in events
        outcome.error = events.get("execution_error")
        outcome.outputs = executor.history_result["outputs"]
    return outcome


def images(comfy, outputs: dict, kind: str = "") -> dict[str, list[np.ndarray]]:
    """The saved (``output``) or previewed (``temp``) images, or both, per node id."""
    folders = {"output": comfy.folder_paths.get_output_directory(), "temp": comfy.folder_paths.get_temp_directory()}
    found = {node: [np.asarray(Image.open(Path(folders[i["type"]], i["subfolder"], i["filename"])))
                    for i in ui.get("images", []) if kind in ("", i["type"])] for node, ui in outputs.items()}
    return {node: shown for node, shown in found.items() if shown}


def saved_final(comfy, outcome: Outcome) -> np.ndarray | None:
    """The image saved last in the graph (the retouch's, where there is one); None when none is saved."""
    saved = images(comfy, outcome.outputs, "output")
    return saved[max(saved, key=int)][0] if saved else None


def base_prompt(comfy, base: str) -> Graph:
    return capture_graph(comfy) if base == CAPTURE else Graph(shrink(convert(comfy, WORKFLOW_OF[base])))


@pytest.fixture(scope="module")
def bases(comfy, tiny_files):
    return {base: base_prompt(comfy, base) for base in (STAGE2, FULL, STAGE1, CAPTURE, PICK)}


@pytest.fixture(scope="module")
def executor(comfy, tiny_files, tiny_sam, tmp_path_factory):
    """One executor for the whole catalogue, with the classic cache, as a server keeps one."""
    import folder_paths

    write_input_images(comfy)
    concepts = tmp_path_factory.mktemp("custom_diffusion")
    write_custom_diffusion(concepts)
    folder_paths.add_model_folder_path("custom_diffusion", str(concepts), is_default=True)
    not_sams = tmp_path_factory.mktemp("not_sams")  # not in the tiny SAM's folder: the shared cache of tiny models
    folder_paths.add_model_folder_path("sams", str(not_sams))
    torch.save({"weight": torch.zeros(2, 2)}, not_sams / NOT_A_SAM)
    loras = tmp_path_factory.mktemp("catalogue_loras")
    write_sdxl_lora(loras)
    folder_paths.add_model_folder_path("loras", str(loras))
    yield host_api.prompt_executor(_Server())
    (not_sams / NOT_A_SAM).unlink()


def queue(comfy, executor, bases: dict[str, Graph], base: str, edit: Callable[[Graph], None]) -> Outcome:
    """Queue the ``base`` graph edited by ``edit``."""
    prompt = copy.deepcopy(bases[base])
    edit(prompt)
    return send(comfy, executor, prompt, bases)


OBSERVED: dict[str, str] = {}


def observed(comfy, outcome: Outcome) -> str:
    """What the artist sees, in the words of the table."""
    if outcome.refusals:
        return "refused at validation: " + "; ".join(sorted({d.split(" - ", 1)[-1] for _, d in outcome.refusals}))
    if outcome.error is not None:
        kind = outcome.error["node_type"]
        return f"refused in {comfy.NODE_DISPLAY_NAME_MAPPINGS.get(kind, kind)}: " \
               f"{outcome.error['exception_message'].strip()}"
    return "runs"


def check_refused(outcome: Outcome, expect: Refused, after: str) -> None:
    if expect.at == "validation":
        said = [d for _, d in outcome.refusals]
    else:
        assert not outcome.refusals, outcome.refusals
        assert outcome.error is not None, after
        assert not expect.raised_in or outcome.error["node_type"] == expect.raised_in, outcome.error["node_type"]
        # named by the pack's import name, not by the folder path ComfyUI imported it from
        assert outcome.error["exception_type"] == "comfyui_layout_retouch.nodes.inputs.NodeInputError", \
            outcome.error["exception_type"]
        said = [outcome.error["exception_message"]]
    shape = rf"{re.escape(expect.node)}: input '(?:{expect.input})': .+ Fix: \S"
    assert any(re.search(shape, s, re.S) and re.search(expect.says, s, re.S) for s in said), said


def check_runs(comfy, outcome: Outcome, expect: Runs, other: Callable[[], Outcome], after: str) -> str:
    """Check the run; return what it showed, in the words of the table."""
    assert not outcome.refusals and outcome.error is None and outcome.ran, after
    shown = images(comfy, outcome.outputs)
    assert shown, "no image"
    for image in (i for node in images(comfy, outcome.outputs, "output").values() for i in node):
        assert image.std() > 0  # a mask preview may be all ones; a saved image is not flat
    compared = ""
    if expect.against is not None:
        theirs = other()
        assert theirs.ran, theirs.error
        difference = np.abs(saved_final(comfy, outcome).astype(float) - saved_final(comfy, theirs)).mean()
        assert (difference == 0) == expect.equal, difference
        compared = f"; {difference:.1f}/255 mean pixel difference from the other run"
    sizes = ", ".join("x".join(map(str, i.shape[:2])) for node in shown.values() for i in node)
    return f"runs: {expect.does} (images {sizes}){compared}"


PARAMS = [pytest.param(c, id=c.id, marks=pytest.mark.xfail(strict=True, reason=c.defect) if c.defect else ())
          for c in CASES]


@pytest.mark.parametrize("case", PARAMS)
def test_case(comfy, executor, bases, case: Case):
    if case.after_shipped:
        assert queue(comfy, executor, bases, case.base, as_shipped).ran
    outcome = queue(comfy, executor, bases, case.base, case.edit)
    OBSERVED[case.id] = observed(comfy, outcome)
    if isinstance(case.expect, Refused):
        check_refused(outcome, case.expect, OBSERVED[case.id])
    else:
        def other() -> Outcome:
            return queue(comfy, executor, bases, case.base, case.expect.against)
        OBSERVED[case.id] = check_runs(comfy, outcome, case.expect, other, OBSERVED[case.id])


def test_executor_still_runs_after_the_catalogue(comfy, executor, bases):
    """No case broke the executor: a node of the shipped stage-2 graph runs again on it."""
    outcome = queue(comfy, executor, bases, STAGE2, then(mask(threshold=0.2), keep("Preview: M^c (cross-attention)")))
    assert outcome.ran and outcome.error is None
    assert [i.shape for node in images(comfy, outcome.outputs).values() for i in node] == [(64, 64, 3)]


def test_cases_are_unique():
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.fixture(scope="module", autouse=True)
def catalogue_table():
    """``LR_CATALOGUE_TABLE=path``: write the catalogue (case, before, after) as markdown when the module ends."""
    yield
    path = os.environ.get("LR_CATALOGUE_TABLE")
    if path:
        def cell(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", " ")
        rows = [f"| {cell(c.id)}: {cell(c.what)} | {cell(c.before)} | {cell(OBSERVED.get(c.id, 'not run'))}"
                f"{' (finding)' if c.defect else ''} |" for c in CASES]
        Path(path).write_text("| case | before | after |\n|---|---|---|\n" + "\n".join(rows) + "\n")
