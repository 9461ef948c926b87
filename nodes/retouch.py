"""Stage-2 nodes: the multi-source attention swap patch."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..attention.layers import MASACTRL_DECODER, parse_layers
from ..attention.patching import layer_problem, patch_model, source_needs
from ..attention.session import KEY, NODE, PATHS, SourcePaths
from ..attention.sources import model_key
from ..attention.swap import SwapSpec
from ..errors import NodeInputError, raise_for
from ..sampling.compat import check_same_size, model_family
from .types import Inversion

CATEGORY = "layout_retouch/retouch"
SOURCE_MODES = ["recorded", "recorded, attention from the inversions (fast)", "re-denoised (paper)"]
CACHE_MODES = {"offloaded to RAM": "offloaded", "kept on the GPU": "device", "off": "off"}


def prompt_tensor(node: str, name: str, conditioning) -> torch.Tensor:
    """The text embedding ``[1, tokens, dim]`` of a CONDITIONING's first entry."""
    if not conditioning:
        raise NodeInputError(node, name, "is an empty CONDITIONING.", "connect a CLIP Text Encode output.")
    return conditioning[0][0][:1].detach()


def layer_input(node: str, name: str, text: str, model):
    try:
        parsed = parse_layers(text)
    except ValueError as e:
        raise NodeInputError(node, name, f"'{text}' cannot be read: {e}.", "write e.g. 'output 6-11'.") from None
    raise_for(layer_problem(model, name, parsed), node, name)
    return parsed


class MultiSourceAttentionSwap(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LR_MultiSourceAttentionSwap",
            display_name="Multi-Source Attention Swap",
            category=CATEGORY,
            description="Layout-and-Retouch stage 2: patches the personalized model so that a stock KSampler, started "
                        "from the layout's inverted latent, keeps the layout's structure and takes the subject's "
                        "appearance from the reference.",
            inputs=[
                io.Model.Input("model", tooltip="The personalized model."),
                Inversion.Input("reference_inversion", tooltip="DDIM Inversion of the reference photo."),
                Inversion.Input("layout_inversion", tooltip="DDIM Inversion of the layout image (stage 1's output)."),
                io.Conditioning.Input("reference_positive", tooltip="The reference prompt y_r, e.g. 'a photo of sks "
                                      "vase'; also give it to the KSampler."),
                io.Conditioning.Input("reference_negative", tooltip="Negative prompt of the reference path."),
                io.Conditioning.Input("layout_positive", tooltip="The layout prompt y_p (stage 1's personalized prompt)."),
                io.Conditioning.Input("layout_negative", tooltip="Negative prompt of the layout path."),
                io.Int.Input("lambda2", default=10, min=0, max=10000,
                             tooltip="Steps in which the target copies the layout's attention (structure); later "
                                     "steps take the reference's self-attention keys and values. Paper: 10 of 50."),
                io.Int.Input("mask_start", default=30, min=0, max=10000,
                             tooltip="First step of the mask blend (paper: 30, the 31st of 50). Needs a mask."),
                io.String.Input("layout_layers", default=MASACTRL_DECODER,
                                tooltip="Blocks swapped with the layout while step < lambda2, e.g. 'output 6-11' "
                                        "(SD1.x decoder at 32x32 and 64x64, as MasaCtrl), or 'all'."),
                io.String.Input("reference_layers", default=MASACTRL_DECODER,
                                tooltip="Blocks that take the reference's keys and values from lambda2 on, and blend "
                                        "with the mask from mask_start on."),
                io.Combo.Input("source_paths", options=SOURCE_MODES, default=SOURCE_MODES[0],
                               tooltip="recorded: the sources follow their inversions exactly. fast: as recorded, "
                                       "but their attention is read from what their DDIM Inversion or Step-Blended "
                                       "KSampler recorded (record_attention on), so those rows do not run. "
                                       "re-denoised (paper): they are denoised again from their inverted noise "
                                       "beside the target."),
                io.Combo.Input("reference_cache", options=list(CACHE_MODES), default="offloaded to RAM",
                               tooltip="Keep the reference's attention after a run, so the next generation with "
                                       "the same reference, model and reference prompts runs no reference rows "
                                       "(recorded and fast modes; in the fast mode only when the reference "
                                       "inversion recorded nothing). It lives as long as ComfyUI caches the "
                                       "reference's DDIM Inversion; about 1.9 GB for SD1.5 at 512x512 in fp16, 50 "
                                       "steps, output 6-11."),
                io.Mask.Input("mask", optional=True, tooltip="Where the target keeps its own self-attention (1) or "
                              "takes the layout's (0), from mask_start on. No mask: no blend."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The patched model: sample it with a KSampler "
                                     "(Advanced) from the layout's inverted latent, add_noise disabled, with the "
                                     "inversions' steps and scheduler and sampler ddim or euler.")],
        )

    @classmethod
    def execute(cls, model, reference_inversion, layout_inversion, reference_positive, reference_negative,
                layout_positive, layout_negative, lambda2, mask_start, layout_layers, reference_layers,
                source_paths, reference_cache, mask=None) -> io.NodeOutput:
        ref, lay = reference_inversion, layout_inversion
        family = model_family(model)
        if model.model.model_config.unet_config.get("adm_in_channels") is not None:
            raise NodeInputError(NODE, "model", f"is a {family} model; the swap supports SD1.x and SD2.x UNets.",
                                 "use an SD1.x personalized model, as the paper does.")
        for name, traj in (("reference_inversion", ref), ("layout_inversion", lay)):
            if traj.family != family:
                raise NodeInputError(NODE, name, f"was made with a {traj.family} model, not this {family} model.",
                                     "invert with the same personalized model.")
        if not torch.equal(ref.sigmas, lay.sigmas):
            raise NodeInputError(NODE, "reference_inversion", f"uses {ref.steps} steps of {ref.scheduler} but "
                                 f"layout_inversion uses {lay.steps} steps of {lay.scheduler}.",
                                 "give both DDIM Inversion nodes the same steps and scheduler.")
        check_same_size(NODE, "layout_inversion", lay.latents[0], "reference_inversion", ref.latents[0])
        spec = SwapSpec(lambda2, mask_start, layer_input(NODE, "layout_layers", layout_layers, model),
                        layer_input(NODE, "reference_layers", reference_layers, model))
        fast = source_paths == SOURCE_MODES[1]
        if fast:
            check_recorded_attention(model, spec, mask, {"layout": lay, "reference": ref})
        reference_prompts = (prompt_tensor(NODE, "reference_positive", reference_positive),
                             prompt_tensor(NODE, "reference_negative", reference_negative))
        cache = CACHE_MODES[reference_cache] if source_paths != SOURCE_MODES[2] else "off"
        paths = SourcePaths(
            layout=lay, reference=ref,
            layout_prompts=(prompt_tensor(NODE, "layout_positive", layout_positive),
                            prompt_tensor(NODE, "layout_negative", layout_negative)),
            reference_prompts=reference_prompts,
            redenoise=source_paths == SOURCE_MODES[2], fast=fast, reference_cache=cache,
            cache_key=(model_key(model, KEY), *reference_prompts) if cache != "off" else (),
        )
        return io.NodeOutput(patch_model(model, paths, spec, mask))


def check_recorded_attention(model, spec: SwapSpec, mask, inversions: dict) -> None:
    """Fast mode: at least one inversion recorded attention, and each record holds every layer the
    swap reads from that path (a path without a record runs its rows as in recorded mode)."""
    if all(inv.attention is None for inv in inversions.values()):
        raise NodeInputError(NODE, "source_paths", "is the fast mode but neither inversion recorded attention.",
                             "turn record_attention on in the DDIM Inversion nodes (or in the Step-Blended KSampler "
                             "whose trajectory is the layout path), or choose 'recorded'.")
    needs = source_needs(model, spec, mask)
    steps = range(len(inversions["layout"]) - 1)
    for path in PATHS:
        record = inversions[path].attention
        if record is None:
            continue
        wanted = {layer for step in steps for layer, _ in needs.of(path, step)}
        missing = sorted(wanted - record.layers())
        if missing:
            blocks = ", ".join(f"{n} {i}" for n, i in sorted({layer[:2] for layer in missing}))
            raise NodeInputError(NODE, f"{path}_inversion", f"recorded no attention at {blocks}, which the swap reads.",
                                 "set attention_layers of the node that recorded it (DDIM Inversion, or Step-Blended "
                                 "KSampler with lambda1 below steps) to cover the swap's layout_layers and "
                                 "reference_layers (e.g. 'output 6-11').")
