"""The papers' embedding models, from local folders only (nothing is downloaded), with their preprocessing.

- DINO ViT-S/16 (``facebook/dino-vits16``; L&R Appendix C, P&D Sec. 4.1): transformers'
  ``ViTModel``; the embedding is the CLS token of ``last_hidden_state``. Preprocessing as DINO's
  own evaluation: resize the short side to 256/224 of the model's size (bicubic), centre crop,
  ImageNet mean and std.
- CLIP ViT-B/32 (``openai/clip-vit-base-patch32``): transformers' ``CLIPModel``; image and text
  embeddings are the projected pooled outputs (what ``get_image_features`` / ``get_text_features``
  return). Preprocessing as ``CLIPImageProcessor``: short side to the model's size (bicubic),
  centre crop, CLIP's mean and std; text through the folder's ``CLIPTokenizer``, padded to 77.
- Inception v3 for the Inception Score: torchvision's ``inception_v3`` with a local state dict
  (``inception_v3_google-0cc3c7bd.pth``); images resized to 299x299 (bilinear), ImageNet mean and
  std (the weights' ``transform_input`` maps them to the Google model's range); its 1000 ImageNet
  classes. (The original IS uses TensorFlow's 1008-class graph: scores are comparable between
  methods here, not with numbers computed there.)
- ImageReward (L&R Appendix C), only where the ``image-reward`` package and its weights are present.

The preprocessing is written here with torch, so it does not depend on processor files being saved.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .runs import EvalInputError

logger = logging.getLogger(__name__)

DINO_ID, CLIP_ID = "facebook/dino-vits16", "openai/clip-vit-base-patch32"
INCEPTION_URL = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"
IMAGE_REWARD_ID = "THUDM/ImageReward (ImageReward.pt and med_config.json)"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


def preprocess(pixels: torch.Tensor, size: int, short_side: int, mean: tuple[float, ...], std: tuple[float, ...],
               mode: str = "bicubic") -> torch.Tensor:
    """One RGB ``uint8 [H, W, 3]`` image to a normalised ``[3, size, size]`` float32 tensor: the short
    side resized to ``short_side`` (antialiased), the centre ``size`` x ``size`` cropped, values in
    [0, 1] normalised with ``mean`` and ``std``."""
    x = pixels.permute(2, 0, 1)[None].float() / 255
    height, width = x.shape[-2:]
    scale = short_side / min(height, width)
    new = (max(short_side, round(height * scale)), max(short_side, round(width * scale)))
    x = torch.nn.functional.interpolate(x, size=new, mode=mode, antialias=True, align_corners=False).clamp(0, 1)
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    x = x[..., top:top + size, left:left + size]
    return ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[0]


def _config(folder: Path, flag: str, kind: str, hf_id: str, model_types: tuple[str, ...]) -> dict:
    """A transformers model folder's ``config.json``, checked to be of ``model_types``, with weights."""
    get = f"download {hf_id} there (e.g. `huggingface-cli download {hf_id} --local-dir {folder}`)"
    if not folder.is_dir():
        raise EvalInputError(f"{flag} {folder}: no such folder. {kind} weights are read from a local folder: {get}.")
    path = folder / "config.json"
    if not path.is_file():
        raise EvalInputError(f"{flag} {folder}: no config.json in it, so it is not a transformers model folder. "
                             f"{get[0].upper()}{get[1:]}.")
    config = json.loads(path.read_text())
    found = config.get("model_type")
    if found not in model_types:
        raise EvalInputError(f"{flag} {folder}: {path} is a '{found}' model, not {kind} ('{model_types[0]}'). "
                             f"Give {flag} the folder of {hf_id}.")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise EvalInputError(f"{flag} {folder}: config.json but no weights ({' or '.join(WEIGHT_FILES[:2])}); "
                             f"{get}.")
    return config


@dataclass
class Dino:
    """DINO's image embedder (CLS token)."""

    model: torch.nn.Module
    size: int
    device: str

    def embed(self, images: list[torch.Tensor]) -> torch.Tensor:
        """CLS embeddings ``[N, D]`` (float32, CPU) of RGB ``uint8 [H, W, 3]`` images."""
        short = round(self.size * 256 / 224)
        x = torch.stack([preprocess(p, self.size, short, IMAGENET_MEAN, IMAGENET_STD) for p in images])
        out = self.model(pixel_values=x.to(self.device)).last_hidden_state[:, 0]
        return out.float().cpu()


@dataclass
class Clip:
    """CLIP's image and text embedders (projected, not normalised)."""

    model: torch.nn.Module
    tokenizer: object
    size: int
    context: int
    device: str

    def embed(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Image embeddings ``[N, D]`` (float32, CPU) of RGB ``uint8 [H, W, 3]`` images."""
        x = torch.stack([preprocess(p, self.size, self.size, CLIP_MEAN, CLIP_STD) for p in images])
        pooled = self.model.vision_model(pixel_values=x.to(self.device)).pooler_output
        return self.model.visual_projection(pooled).float().cpu()

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Text embeddings ``[N, D]`` (float32, CPU); texts longer than the context are truncated."""
        tokens = self.tokenizer(texts, padding="max_length", max_length=self.context, truncation=True,
                                return_tensors="pt")
        pooled = self.model.text_model(input_ids=tokens["input_ids"].to(self.device),
                                       attention_mask=tokens["attention_mask"].to(self.device)).pooler_output
        return self.model.text_projection(pooled).float().cpu()


def load_dino(folder: Path, device: str = "cpu") -> Dino:
    """DINO ViT-S/16 from a local ``facebook/dino-vits16`` folder (``--dino``).

    Raises:
        EvalInputError: no folder, no config or weights, or another kind of model (e.g. CLIP).
    """
    from transformers import ViTModel

    config = _config(folder, "--dino", "DINO ViT-S/16", DINO_ID, ("vit",))
    if (config.get("hidden_size"), config.get("patch_size")) != (384, 16):
        logger.warning("--dino %s: not ViT-S/16 (hidden size %s, patch %s): scores are not comparable with the "
                       "papers'", folder, config.get("hidden_size"), config.get("patch_size"))
    model = ViTModel.from_pretrained(str(folder), add_pooling_layer=False).eval().to(device)
    return Dino(model, int(model.config.image_size), device)


def load_clip(folder: Path, device: str = "cpu") -> Clip:
    """CLIP ViT-B/32 and its tokenizer from a local ``openai/clip-vit-base-patch32`` folder (``--clip``).

    Raises:
        EvalInputError: no folder, no config, weights or tokenizer files, or another kind of model.
    """
    from transformers import CLIPModel, CLIPTokenizer

    config = _config(folder, "--clip", "CLIP ViT-B/32", CLIP_ID, ("clip",))
    vision = config.get("vision_config") or {}
    if (vision.get("hidden_size", 768), vision.get("patch_size", 32)) != (768, 32):
        logger.warning("--clip %s: not ViT-B/32 (hidden size %s, patch %s): scores are not comparable with the "
                       "papers'", folder, vision.get("hidden_size"), vision.get("patch_size"))
    has = {name for name in ("tokenizer.json", "vocab.json", "merges.txt") if (folder / name).is_file()}
    if "tokenizer.json" not in has and not {"vocab.json", "merges.txt"} <= has:
        raise EvalInputError(f"--clip {folder}: no tokenizer files (tokenizer.json, or vocab.json and merges.txt); "
                             f"download the whole {CLIP_ID} folder (they are part of it).")
    model = CLIPModel.from_pretrained(str(folder)).eval().to(device)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    context = min(77, int(model.config.text_config.max_position_embeddings))
    return Clip(model, tokenizer, int(model.config.vision_config.image_size), context, device)


@dataclass
class Inception:
    """torchvision's Inception v3 classifier for the Inception Score."""

    model: torch.nn.Module
    device: str

    def logits(self, images: list[torch.Tensor]) -> torch.Tensor:
        """ImageNet logits ``[N, 1000]`` (float32, CPU) of RGB ``uint8 [H, W, 3]`` images, each resized
        to 299x299."""
        x = torch.stack([torch.nn.functional.interpolate(p.permute(2, 0, 1)[None].float() / 255, size=(299, 299),
                                                         mode="bilinear", antialias=True, align_corners=False)[0]
                         for p in images]).clamp(0, 1)
        x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        return self.model(x.to(self.device)).float().cpu()


def load_inception(path: Path, device: str = "cpu") -> Inception:
    """torchvision's ``inception_v3`` with the state dict in ``path`` (``--inception``).

    Raises:
        EvalInputError: no such file, not a state dict, or not inception_v3's weights.
    """
    from torchvision.models import inception_v3

    get = f"download torchvision's weights, {INCEPTION_URL}"
    if not path.is_file():
        raise EvalInputError(f"--inception {path}: no such file; {get}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which and why
        raise EvalInputError(f"--inception {path}: cannot read it ({type(e).__name__}: {e}); {get}.") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EvalInputError(f"--inception {path}: it holds no state dict of tensors; {get}.")
    aux = any(k.startswith("AuxLogits.") for k in state)
    model = inception_v3(weights=None, aux_logits=aux, transform_input=True, init_weights=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise EvalInputError(f"--inception {path}: not torchvision's inception_v3 weights ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected keys, e.g. {(missing + unexpected)[:2]}); {get}.")
    return Inception(model.eval().to(device), device)


def load_image_reward(path: Path | None, device: str = "cpu") -> tuple[object | None, str]:
    """ImageReward's model and ``""``, or ``None`` and why it is absent (not an error).

    Needs the ``image-reward`` package (``import ImageReward``) and its weights file (``--image-reward``,
    ``ImageReward.pt`` with ``med_config.json`` beside it).

    Raises:
        EvalInputError: a weights file was given but does not exist.
    """
    try:
        import ImageReward as image_reward  # noqa: N813  (the package's own name)
    except ImportError:
        return None, "the image-reward package is not installed (`pip install image-reward`)"
    if path is None:
        return None, f"no --image-reward weights given ({IMAGE_REWARD_ID})"
    if not path.is_file():
        raise EvalInputError(f"--image-reward {path}: no such file; download {IMAGE_REWARD_ID} into one folder.")
    return image_reward.load(str(path), device=device, download_root=str(path.parent)), ""
