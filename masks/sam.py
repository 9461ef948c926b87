"""Segment Anything for ``M^SAM`` (L&R Sec. 3.2.2): loading checkpoints and prompting from a mask.

Checkpoints are read from ComfyUI's ``models/sams`` folder (the folder other packs use). The
model size is read off the weights, not the file name: the image encoder's width, depth, head
count and global-attention blocks all follow from tensor shapes, so the three official sizes
(vit_b, vit_l, vit_h) and any other ViT size load alike. The model is built from
segment-anything's own classes, as its ``build_sam`` does.

SAM is prompted from the prompt mask (usually ``M^c``) after its small parts are removed, by the
adaptive mask's ``C`` (8-connected components below a fraction of the image, default 1%): the paper
says ``M^c`` "includes noisy regions", and one speck far from the subject would otherwise stretch
the box over the empty space between them. Where nothing is that large, the largest part prompts
SAM, never the speckled mask.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from scipy import ndimage

from .adaptive import area_threshold, keep_large_components

OFFICIAL_FILES = {"vit_h": "sam_vit_h_4b8939.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_b": "sam_vit_b_01ec64.pth"}
OFFICIAL_SIZES = {  # (embed_dim, depth, heads, global attention blocks), from segment_anything/build_sam.py
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}
IMAGE_SIZE, PATCH, WINDOW, PROMPT_DIM = 1024, 16, 14, 256


@dataclass(frozen=True)
class SamConfig:
    """An image encoder's size, read from a checkpoint's shapes."""

    embed_dim: int
    depth: int
    heads: int
    global_attn: tuple[int, ...]

    @property
    def name(self) -> str:
        for name, size in OFFICIAL_SIZES.items():
            if size == (self.embed_dim, self.depth, self.heads, self.global_attn):
                return name
        return f"custom ViT (width {self.embed_dim}, depth {self.depth})"


@dataclass(frozen=True)
class SamModel:
    """A loaded Segment Anything model (kept on the offload device between predictions)."""

    model: torch.nn.Module
    config: SamConfig
    path: str


def detect_config(shapes: dict[str, tuple[int, ...]]) -> SamConfig:
    """Read the encoder's size from a state dict's shapes (``{key: shape}``).

    Raises:
        ValueError: the keys are not a Segment Anything checkpoint's.
    """
    if "image_encoder.pos_embed" not in shapes or "image_encoder.blocks.0.attn.rel_pos_h" not in shapes:
        raise ValueError("this is not a Segment Anything checkpoint (no image_encoder.pos_embed)")
    embed_dim = shapes["image_encoder.pos_embed"][-1]
    blocks = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
    head_dim = shapes["image_encoder.blocks.0.attn.rel_pos_h"][-1]
    grid = IMAGE_SIZE // PATCH
    global_attn = tuple(b for b in blocks if shapes[f"image_encoder.blocks.{b}.attn.rel_pos_h"][0] == 2 * grid - 1)
    return SamConfig(embed_dim, len(blocks), embed_dim // head_dim, global_attn)


def build_sam(config: SamConfig) -> torch.nn.Module:
    """An untrained Sam of ``config``'s size, as segment_anything's ``_build_sam`` makes it."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = IMAGE_SIZE // PATCH
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=config.depth, embed_dim=config.embed_dim, img_size=IMAGE_SIZE, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=config.heads, patch_size=PATCH,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=config.global_attn, window_size=WINDOW,
            out_chans=PROMPT_DIM,
        ),
        prompt_encoder=PromptEncoder(embed_dim=PROMPT_DIM, image_embedding_size=(grid, grid),
                                     input_image_size=(IMAGE_SIZE, IMAGE_SIZE), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=PROMPT_DIM, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def load_sam(path: str) -> SamModel:
    """Load a ``.pth`` or ``.safetensors`` Segment Anything checkpoint onto the CPU.

    Raises:
        ValueError: the file cannot be read or is not a Segment Anything checkpoint.
    """
    try:
        if path.endswith(".safetensors"):
            import safetensors.torch

            state = safetensors.torch.load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say so, with the reason
        raise ValueError(f"cannot read it ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("it holds no state dict of tensors")
    config = detect_config({k: tuple(v.shape) for k, v in state.items()})
    model = build_sam(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"its weights do not fit a {config.name} Sam ({len(missing)} missing, {len(unexpected)} "
                         "unexpected keys)")
    return SamModel(model=model, config=config, path=path)


def foreground(mask: np.ndarray) -> np.ndarray:
    """A prompt mask's foreground: above 0.5 for a binary or strong map, else any positive value."""
    return mask > 0.5 if mask.max() > 0.5 else mask > 0


def prompt_region(mask: np.ndarray, min_component_area: float = 0.01) -> np.ndarray:
    """The part of a prompt mask ``[H, W]`` that SAM is prompted from, boolean ``[H, W]``: its
    foreground without the 8-connected parts smaller than ``min_component_area`` of the image (the
    adaptive mask's ``C``), or its largest part where none is that large."""
    return keep_large_components(foreground(mask), area_threshold(min_component_area, mask.shape),
                                 largest_if_none=True)


def prompt_from_mask(mask: np.ndarray, min_component_area: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """SAM prompts from a mask ``[H, W]`` in [0, 1], not empty: the box and peak point of its
    ``prompt_region`` (small parts removed; see the module docstring).

    The peak is the region's pixel where the mask value times the normalised distance to the
    background is largest: the strongest response for a soft map, the most interior pixel for a
    binary one. Returns ``(box [4] as x0, y0, x1, y1, point [1, 2] as x, y)`` in pixels.
    """
    fg = prompt_region(mask, min_component_area)
    ys, xs = np.nonzero(fg)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)
    depth = ndimage.distance_transform_edt(fg)
    y, x = np.unravel_index(np.argmax(mask * depth / max(depth.max(), 1)), mask.shape)
    return box, np.array([[x, y]], dtype=np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def segment(sam: SamModel, image: np.ndarray, prompt_mask: np.ndarray, points: np.ndarray | None = None,
            box: np.ndarray | None = None, device=None, min_component_area: float = 0.01) -> np.ndarray:
    """SAM's mask for one image, prompted from ``prompt_mask``'s region (``prompt_region``); the
    multimask candidate with the best IoU to that region is returned.

    Args:
        image: ``[H, W, 3]`` uint8 RGB.
        prompt_mask: ``[H, W]`` in [0, 1], at the image's size, not empty.
        points: extra foreground points ``[N, 2]`` (x, y) in pixels, or None.
        box: a box (x0, y0, x1, y1) in pixels replacing the mask's box, or None.
        device: where to run; the model goes back to the CPU afterwards.
        min_component_area: parts of the prompt mask below this fraction of the image do not
            prompt SAM.
    """
    from segment_anything import SamPredictor

    mask_box, peak = prompt_from_mask(prompt_mask, min_component_area)
    coords = peak if points is None else np.concatenate([peak, points.astype(np.float32)])
    model = sam.model
    try:
        if device is not None:
            model.to(device)
        predictor = SamPredictor(model)
        predictor.set_image(image)
        masks, _, _ = predictor.predict(point_coords=coords, point_labels=np.ones(len(coords), dtype=np.int64),
                                        box=mask_box if box is None else box, multimask_output=True)
    finally:
        model.to("cpu")
    target = prompt_region(prompt_mask, min_component_area)
    return masks[int(np.argmax([iou(m, target) for m in masks]))]


def segment_images(sam: SamModel, images: torch.Tensor, prompt_masks: torch.Tensor, points: np.ndarray | None = None,
                   box: np.ndarray | None = None, min_component_area: float = 0.01) -> torch.Tensor:
    """M^SAM ``[B, H, W]`` for an IMAGE batch ``[B or 1, H, W, C]`` in [0, 1] and its prompt masks
    ``[B, H, W]`` (at the image's size, none empty), on ComfyUI's device, with its progress bar
    and interruption (the SAM Segment from Mask node); ``min_component_area`` as in ``segment``."""
    import comfy.model_management
    import comfy.utils

    pixels = (images[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    device = comfy.model_management.get_torch_device()
    progress = comfy.utils.ProgressBar(prompt_masks.shape[0])
    out = []
    for i, m in enumerate(prompt_masks.cpu().numpy()):
        comfy.model_management.throw_exception_if_processing_interrupted()
        picture = pixels[i if pixels.shape[0] > 1 else 0]
        out.append(torch.from_numpy(segment(sam, picture, m, points, box, device, min_component_area)).float())
        progress.update(1)
    return torch.stack(out)
