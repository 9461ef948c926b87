"""Adaptive mask and Segment Anything nodes."""

from __future__ import annotations

import os

import numpy as np
from comfy_api.v0_0_2 import io

from ..masks import sam as sam_lib
from ..masks.adaptive import adaptive_mask, match_batches, resize_mask
from .inputs import NodeInputError
from .types import Sam

CATEGORY = "layout_retouch/masks"
SAMS = "sams"


def sams_folder() -> list[str]:
    """Register ComfyUI's ``models/sams`` folder (as other SAM packs do) and return its paths."""
    import folder_paths

    if SAMS not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(SAMS, os.path.join(folder_paths.models_dir, SAMS), is_default=True)
    return folder_paths.get_folder_paths(SAMS)


def missing_sam_message(name: str | None) -> NodeInputError:
    files = ", ".join(f"{size}: {file}" for size, file in sam_lib.OFFICIAL_FILES.items())
    where = " or ".join(sams_folder())
    problem = f"'{name}' is not in {where}." if name else f"no Segment Anything checkpoint in {where}."
    return NodeInputError("SAM Loader", "sam_name", problem,
                          f"put an official checkpoint there ({files}; vit_h is the paper's) and refresh ComfyUI.")


class AdaptiveMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LR_AdaptiveMask",
            display_name="Adaptive Mask",
            category=CATEGORY,
            description="Layout-and-Retouch's adaptive mask: M = clip(Normalize(EDT(C(M^c) OR M^SAM)) + C(M^c), 0, 1) "
                        "(M^c OR M^SAM with clean_union off), with every intermediate as its own output.",
            inputs=[
                io.Mask.Input("cross_attention_mask", tooltip="M^c (binary or soft), any size; resized to the SAM "
                              "mask's size."),
                io.Mask.Input("sam_mask", tooltip="M^SAM at image size (SAM Segment from Mask, or any pack's MASK)."),
                io.Float.Input("threshold", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="M^c above this is foreground (0.5 suits a binary mask; use 0.1 for the soft "
                                       "map)."),
                io.Float.Input("min_component_area", default=0.01, min=0.0, max=1.0, step=0.001,
                               tooltip="Connected parts of M^c smaller than this fraction of the image are removed."),
                io.Float.Input("normalize_low", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Weight at the foreground's edge (paper: 0.5)."),
                io.Float.Input("normalize_high", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Weight at the foreground's most interior pixel (paper: 1.0)."),
                io.Boolean.Input("clean_union", default=True,
                                 tooltip="On: the union M^k takes M^c without its small parts, C(M^c), so noise "
                                         "specks of M^c stay out of M (the paper: 'we first discard noisy regions "
                                         "of M^c'). Off: the raw M^c, as the paper's formula is printed (each speck "
                                         "enters M at 0.5 or more)."),
            ],
            outputs=[
                io.Mask.Output(display_name="mask", tooltip="The adaptive mask M (for the swap's mask input)."),
                io.Mask.Output(display_name="union", tooltip="M^k = C(M^c) OR M^SAM (M^c OR M^SAM with "
                               "clean_union off)."),
                io.Mask.Output(display_name="distance", tooltip="The normalised distance transform of M^k."),
                io.Mask.Output(display_name="components", tooltip="C(M^c): M^c without its small parts."),
            ],
        )

    @classmethod
    def execute(cls, cross_attention_mask, sam_mask, threshold, min_component_area, normalize_low,
                normalize_high, clean_union=True) -> io.NodeOutput:
        node = "Adaptive Mask"
        if normalize_low > normalize_high:
            raise NodeInputError(node, "normalize_low", f"is {normalize_low}, above normalize_high {normalize_high}.",
                                 "keep normalize_low <= normalize_high (paper: 0.5 and 1.0).")
        try:
            result = adaptive_mask(cross_attention_mask, sam_mask, threshold, min_component_area, normalize_low,
                                   normalize_high, clean_union)
        except ValueError as e:  # the two batches cannot be paired
            raise NodeInputError(node, "sam_mask", f"{e}.", "give one mask, or as many masks as the other input.") \
                from None
        if not result.union.any():  # M^k is empty only when M^SAM and (C of) M^c are
            if clean_union and (cross_attention_mask > threshold).any():
                raise NodeInputError(node, "cross_attention_mask", "has only parts below min_component_area and "
                                     "sam_mask is empty: there is no subject to retouch.",
                                     "lower min_component_area or turn clean_union off, or check the SAM prompt.")
            raise NodeInputError(node, "cross_attention_mask", "and sam_mask are both empty: there is no subject to "
                                 "retouch.", "check the subject word and the SAM prompt, or lower the threshold.")
        return io.NodeOutput(result.mask, result.union, result.distance, result.components)


class SAMLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import folder_paths

        sams_folder()
        return io.Schema(
            node_id="LR_SAMLoader",
            display_name="SAM Loader",
            category=CATEGORY,
            description="Loads a Segment Anything checkpoint from models/sams; the size (vit_b, vit_l, vit_h) is read "
                        "from the weights.",
            inputs=[io.Combo.Input("sam_name", options=folder_paths.get_filename_list(SAMS),
                                   tooltip="A checkpoint in models/sams, e.g. sam_vit_h_4b8939.pth.")],
            outputs=[Sam.Output(display_name="sam", tooltip="The Segment Anything model.")],
        )

    @classmethod
    def validate_inputs(cls, sam_name: str | None = None) -> bool | str:
        # sam_name: its own check below (the files found, with the folder named); no other bounded input here
        import folder_paths

        if sam_name is not None and sam_name not in folder_paths.get_filename_list(SAMS):
            return str(missing_sam_message(sam_name if folder_paths.get_filename_list(SAMS) else None))
        return True

    @classmethod
    def execute(cls, sam_name) -> io.NodeOutput:
        import folder_paths

        path = folder_paths.get_full_path(SAMS, sam_name) if sam_name else None
        if path is None:
            raise missing_sam_message(sam_name if folder_paths.get_filename_list(SAMS) else None)
        try:
            model = sam_lib.load_sam(path)
        except ValueError as e:
            raise NodeInputError("SAM Loader", "sam_name", f"'{sam_name}' cannot be loaded: {e}.",
                                 "download the checkpoint again (official files: "
                                 f"{', '.join(sam_lib.OFFICIAL_FILES.values())}).") from None
        return io.NodeOutput(model)


def parse_numbers(node: str, name: str, text: str, per_item: int) -> np.ndarray | None:
    """Parse 'x,y; x,y' (per_item 2) or 'x0,y0,x1,y1' (per_item 4) pixel coordinates; empty -> None."""
    text = text.strip()
    if not text:
        return None
    try:
        items = [[float(v) for v in part.split(",")] for part in text.split(";") if part.strip()]
    except ValueError:
        items = []
    if not items or any(len(i) != per_item for i in items):
        form = "'x,y; x,y'" if per_item == 2 else "'x0,y0,x1,y1'"
        raise NodeInputError(node, name, f"'{text}' cannot be read.", f"write pixel coordinates as {form}.")
    return np.array(items, dtype=np.float32)


class SAMSegment(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LR_SAMSegment",
            display_name="SAM Segment from Mask",
            category=CATEGORY,
            description="M^SAM: Segment Anything prompted with a mask's box and peak point, taken after the mask's "
                        "small parts are removed (plus optional points or box); of SAM's three candidates, the one "
                        "closest (IoU) to that cleaned prompt mask is kept.",
            inputs=[
                io.Image.Input("image", tooltip="The layout image."),
                Sam.Input("sam", tooltip="From SAM Loader."),
                io.Mask.Input("prompt_mask", tooltip="Usually the cross-attention mask M^c; resized to the image "
                              "(bilinear) if its size differs."),
                io.String.Input("extra_points", default="", tooltip="Optional foreground points in pixels, "
                                "'x,y; x,y'."),
                io.String.Input("box", default="", tooltip="Optional box in pixels 'x0,y0,x1,y1', replacing the "
                                "mask's box."),
                io.Float.Input("min_component_area", default=0.01, min=0.0, max=1.0, step=0.001,
                               tooltip="Connected parts of the prompt mask smaller than this fraction of the image "
                                       "do not prompt SAM (noise specks would stretch the box); if no part is that "
                                       "large, the largest one prompts it. 0 keeps every part."),
            ],
            outputs=[io.Mask.Output(display_name="mask", tooltip="M^SAM at the image's size.")],
        )

    @classmethod
    def execute(cls, image, sam, prompt_mask, extra_points, box, min_component_area=0.01) -> io.NodeOutput:
        node = "SAM Segment from Mask"
        points = parse_numbers(node, "extra_points", extra_points, 2)
        box_xyxy = parse_numbers(node, "box", box, 4)
        if box_xyxy is not None and (box_xyxy[0, 2] <= box_xyxy[0, 0] or box_xyxy[0, 3] <= box_xyxy[0, 1]):
            raise NodeInputError(node, "box", f"'{box}' has x1 <= x0 or y1 <= y0.",
                                 "write the top-left corner first: 'x0,y0,x1,y1' with x0 < x1 and y0 < y1.")
        size = tuple(image.shape[1:3])
        masks = resize_mask(prompt_mask, size)
        if masks.shape[0] > image.shape[0]:  # one image, several masks: it would come out as several M^SAM
            raise NodeInputError(node, "prompt_mask", f"holds {masks.shape[0]} masks for {image.shape[0]} "
                                 f"image(s): SAM Segment gives one mask per image.",
                                 f"give one mask, or one per image ({image.shape[0]}).")
        try:
            _, masks = match_batches(image[..., 0], masks)
        except ValueError as e:
            raise NodeInputError(node, "prompt_mask", f"{e} with the images.", "give one mask, or one per image.") \
                from None
        empty = [i for i, m in enumerate(masks) if float(m.max()) <= 0]
        if empty:
            raise NodeInputError(node, "prompt_mask", f"is empty (all zeros) for image {empty[0]}: SAM needs a prompt.",
                                 "check the cross-attention mask (subject word, threshold), or give a box.")
        return io.NodeOutput(sam_lib.segment_images(sam, image, masks, points,
                                                    box_xyxy[0] if box_xyxy is not None else None,
                                                    min_component_area))
