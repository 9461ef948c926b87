"""Cross-attention masks and the experimenters' attention capture."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..attention.capture import capture_model
from ..attention.maps import NothingRecorded
from ..attention.tokens import subject_problem
from ..masks.cross_attention import mask_from_store, mask_on_path
from .inputs import NodeInputError, layer_input, raise_for
from .labels import RESOLUTIONS
from .types import AttentionStore, Inversion

CATEGORY = "layout_retouch/masks"


def subject_inputs():
    return [
        io.Clip.Input("clip", tooltip="The CLIP model of the personalized model (its tokenizer finds the subject)."),
        io.String.Input("prompt", multiline=True, default="a photo of a sks vase floating in a swimming pool",
                        tooltip="The personalized prompt y_p, exactly as encoded for the layout."),
        io.String.Input("subject", default="vase", tooltip="The subject word(s) as they appear in the prompt: the "
                        "class noun for DreamBooth ('dog' in 'a sks dog'), 'embedding:name' for Textual Inversion. "
                        "Several words are summed."),
    ]


def mask_outputs():
    return [io.Mask.Output(display_name="soft_map", tooltip="The subject's attention, normalised to 0..1."),
            io.Mask.Output(display_name="mask", tooltip="The soft map above the threshold (binary M^c).")]


def threshold_input():
    return io.Float.Input("threshold", default=0.1, min=0.0, max=1.0, step=0.01,
                          tooltip="Binary mask threshold on the normalised map (paper: 0.1; DreamMatcher 0.05).")


class CrossAttentionMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LR_CrossAttentionMask",
            display_name="Cross-Attention Mask",
            category=CATEGORY,
            description="The subject's cross-attention map M^c on the layout: the model is run on the layout's "
                        "recorded inversion with the personalized prompt, and the subject token's attention is "
                        "averaged over decoder layers and steps. On the trajectory of a Step-Blended KSampler "
                        "with record_attention on and this prompt, the steps it recorded are read, not rerun.",
            inputs=[
                io.Model.Input("model", tooltip="The personalized model."),
                Inversion.Input("layout_inversion", tooltip="DDIM Inversion of the layout image."),
                *subject_inputs(),
                io.Combo.Input("resolution", options=list(RESOLUTIONS), default=next(iter(RESOLUTIONS)),
                               tooltip="Decoder layers to average (paper: 32x32 for 512x512 images)."),
                io.Int.Input("steps_to_average", default=10, min=1, max=1000,
                             tooltip="How many denoising steps, spread evenly over the schedule, to average."),
                threshold_input(),
            ],
            outputs=mask_outputs(),
        )

    @classmethod
    def execute(cls, model, layout_inversion, clip, prompt, subject, resolution, steps_to_average,
                threshold) -> io.NodeOutput:
        node = "Cross-Attention Mask"
        raise_for(subject_problem(clip, prompt, subject), node, "subject")
        try:
            return io.NodeOutput(*mask_on_path(model, layout_inversion, clip, prompt, subject, RESOLUTIONS[resolution],
                                               steps_to_average, threshold))
        except NothingRecorded:
            h, w = (8 * s for s in layout_inversion.latents.shape[-2:])
            raise NodeInputError(node, "resolution", f"'{resolution}' matches no decoder attention layer of this "
                                 f"{h}x{w} image.", "choose another resolution.") from None


class AttentionCapture(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LR_AttentionCapture",
            display_name="Attention Capture",
            category=CATEGORY,
            description="For experiments: patches a model so that any sampler run records the chosen layers' "
                        "cross-attention maps (and optionally self-attention keys and values) into a store.",
            inputs=[
                io.Model.Input("model", tooltip="Any SD1.x-style model, patched or not (patches are chained)."),
                io.String.Input("layers", default="output 3-11",
                                tooltip="Blocks to record, e.g. 'output 3-11' (the SD1.x decoder), or 'all'."),
                io.Int.Input("start_step", default=0, min=0, max=10000, tooltip="First step (of the run) to record."),
                io.Int.Input("end_step", default=10000, min=0, max=10000,
                             tooltip="Last step to record (inclusive)."),
                io.Boolean.Input("record_self_kv", default=False,
                                 tooltip="Also keep the self-attention keys and values per layer and step "
                                         "(large: use a narrow step range)."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="Sample with this model to fill the store."),
                     AttentionStore.Output(display_name="store", tooltip="What the latest run recorded.")],
        )

    @classmethod
    def execute(cls, model, layers, start_step, end_step, record_self_kv) -> io.NodeOutput:
        node = "Attention Capture"
        if end_step < start_step:
            raise NodeInputError(node, "end_step", f"is {end_step}, before start_step {start_step}.",
                                 "set end_step at or after start_step.")
        return io.NodeOutput(*capture_model(model, layer_input(node, "layers", layers, model),
                                            range(start_step, end_step + 1), record_self_kv))


class AttentionMapToMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LR_AttentionMapToMask",
            display_name="Attention Map to Mask",
            category=CATEGORY,
            description="Turns the cross-attention recorded by Attention Capture into the subject's soft map and "
                        "binary mask; connect the sampler's LATENT to 'after' so it runs after the sampler.",
            inputs=[
                AttentionStore.Input("store", tooltip="The store of an Attention Capture node."),
                io.Latent.Input("after", tooltip="The output of the sampler that used the captured model (only "
                                "orders the graph; its values are not used)."),
                *subject_inputs(),
                threshold_input(),
            ],
            outputs=mask_outputs(),
        )

    @classmethod
    def execute(cls, store, after, clip, prompt, subject, threshold) -> io.NodeOutput:
        node = "Attention Map to Mask"
        raise_for(subject_problem(clip, prompt, subject), node, "subject")
        try:
            return io.NodeOutput(*mask_from_store(store, clip, prompt, subject, threshold))
        except NothingRecorded:
            raise NodeInputError(node, "store", "holds no cross-attention: the captured model has not been sampled.",
                                 "sample with the Attention Capture's model and connect that sampler's LATENT to "
                                 "'after'.") from None
