"""Custom Diffusion loader node: diffusers' Custom Diffusion files onto a model and its CLIP."""

from __future__ import annotations

import os

from comfy_api.v0_0_2 import io

from ..personalize import custom_diffusion as cd
from .inputs import NodeInputError

CATEGORY = "layout_retouch/personalize"
NODE = "Custom Diffusion Loader"
FOLDER = "custom_diffusion"
# The node input each kind of problem of personalize/custom_diffusion.py is about.
INPUT_OF = {"weights": "weights_name", "token": "modifier_token", "clip": "clip"}


def custom_diffusion_folder() -> list[str]:
    """Register ComfyUI's ``models/custom_diffusion`` folder and return its paths."""
    import folder_paths

    if FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)
    return folder_paths.get_folder_paths(FOLDER)


def weight_files() -> list[str]:
    """The ``.safetensors`` and ``.bin`` files in models/custom_diffusion (subfolders included)."""
    import folder_paths

    custom_diffusion_folder()
    return [f for f in folder_paths.get_filename_list(FOLDER) if f.lower().endswith(cd.TOKEN_EXTENSIONS)]


def missing_weights_message(name: str | None) -> NodeInputError:
    where = " or ".join(custom_diffusion_folder())
    problem = f"'{name}' is not in {where}." if name else f"no Custom Diffusion weights in {where}."
    return NodeInputError(NODE, "weights_name", problem,
                          f"put {cd.WEIGHT_NAMES[0]} and its token file (<new1>.safetensors) from diffusers' "
                          "train_custom_diffusion.py there (one subfolder per concept) and refresh ComfyUI.")


class CustomDiffusionLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LR_CustomDiffusionLoader",
            display_name=NODE,
            category=CATEGORY,
            description="Loads a Custom Diffusion concept as diffusers' train_custom_diffusion.py writes it: the "
                        "fine-tuned cross-attention key/value weights onto a copy of the model, the modifier token "
                        "(<new1>) onto a copy of the CLIP.",
            inputs=[
                io.Model.Input("model", tooltip="The base model the concept was trained on (e.g. SD 1.5); it is not "
                               "changed, the output is a patched copy."),
                io.Clip.Input("clip", tooltip="The base model's CLIP; it is not changed, the output is a copy that "
                              "reads the modifier token."),
                io.Combo.Input("weights_name", options=weight_files(),
                               tooltip="pytorch_custom_diffusion_weights.safetensors (or .bin) in models/"
                                       "custom_diffusion, best one subfolder per concept, with the token file "
                                       "(<new1>.safetensors) next to it as training wrote them."),
                io.String.Input("modifier_token", default="<new1>",
                                tooltip="The training's --modifier_token, written as in prompts ('a <new1> cat'); "
                                        "several as '<new1>+<new2>'. Each is read from '<token>.safetensors' (or "
                                        ".bin) next to the weights file. Empty: no token (weights only)."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="How much of the fine-tuned weights: 1 = the trained weights, 0 = the base "
                                       "model's; W + strength * (W_trained - W). The token is not scaled."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="A copy of the model with the Custom Diffusion "
                                "weights (use it as the personalized model)."),
                io.Clip.Output(display_name="CLIP", tooltip="A copy of the CLIP whose prompts read the modifier "
                               "token (the input CLIP itself when modifier_token is empty)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, weights_name: str | None = None) -> bool | str:
        # One input (nodes/inputs.py, schema_problem): weights_name's own check (the files found, with the folder
        # named) stands for its list check; modifier_token is read when the node runs.
        if weights_name is not None and weights_name not in weight_files():
            return str(missing_weights_message(weights_name if weight_files() else None))
        return True

    @classmethod
    def execute(cls, model, clip, weights_name, modifier_token, strength) -> io.NodeOutput:
        import folder_paths

        custom_diffusion_folder()
        path = folder_paths.get_full_path(FOLDER, weights_name) if weights_name else None
        if path is None:
            raise missing_weights_message(weights_name if weight_files() else None)
        try:
            out_model, out_clip = cd.load_custom_diffusion(model, clip, path, cd.parse_tokens(modifier_token),
                                                           strength)
        except cd.CustomDiffusionError as e:
            raise NodeInputError(NODE, INPUT_OF[e.source], *e.problem) from None
        return io.NodeOutput(out_model, out_clip)
