"""Tiny, seeded, randomly initialised evaluation models in the users' formats (issue 16), and runner-shaped
output folders.

DINO and CLIP are written with transformers' ``save_pretrained`` (config.json, model.safetensors; the
CLIP folder also gets the tokenizer files ComfyUI ships for SD1.x, which are CLIP's), so the
evaluation loads them through the same ``from_pretrained`` path as facebook/dino-vits16 and
openai/clip-vit-base-patch32. Inception v3 is torchvision's own architecture (it has one size),
randomly initialised, saved as a state dict as torchvision's weights file is.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_tiny_dino(folder: Path, seed: int = 21) -> Path:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=224, patch_size=16)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def write_tiny_clip(folder: Path, tokenizer_folder: Path, seed: int = 22) -> Path:
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_folder))
    text = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": 49406, "eos_token_id": 49407,
            "pad_token_id": 49407}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 224, "patch_size": 32}
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_tiny_inception(path: Path, seed: int = 23) -> Path:
    from torchvision.models import inception_v3

    torch.manual_seed(seed)
    model = inception_v3(weights=None, aux_logits=True, init_weights=True, transform_input=True)
    # Random weights with fresh batch-norm statistics blow the logits up to 1e11 (softmax of exactly 0
    # and 1): calibrate the statistics on noise, then scale the classifier to logits of spread about 3
    # there. (Random features still put most images in one class: IS near 1.)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a plain average over the calibration batches
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    small = torch.nn.functional.interpolate(torch.rand(8, 3, 64, 64), size=(299, 299), mode="bilinear")
    noise = (small * torch.linspace(0.2, 1, 8)[:, None, None, None] - mean) / std  # like the tests' images
    with torch.no_grad():
        model.train()
        model(noise)
        model.eval()
        spread = model(noise).std()
        model.fc.weight /= spread / 3
        model.fc.bias /= spread / 3
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def write_pictures(folder: Path, count: int, seed: int, size: tuple[int, int] = (64, 64)) -> list[Path]:
    """``count`` random RGB PNGs (a bright square on noise), ``ref_0.png`` ..."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = np.random.default_rng(seed)
    paths = []
    for k in range(count):
        pixels = gen.integers(0, 120, (size[1], size[0], 3), dtype=np.uint8)
        x, y = gen.integers(0, size[0] // 2), gen.integers(0, size[1] // 2)
        pixels[y:y + size[1] // 3, x:x + size[0] // 3] = gen.integers(150, 255, 3, dtype=np.uint8)
        paths.append(folder / f"ref_{k}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def write_run(folder: Path, templates: list[str], seeds: list[int], seed: int, size: tuple[int, int] = (64, 64),
              workflow: str = "layout_retouch_full_dreambooth.json", same_image: bool = False) -> Path:
    """A runner output folder as ``headless/jobs.py`` writes it: per job a folder named by its key with
    ``layout_00001_.png`` and ``final_00001_.png`` (the full workflows' two SaveImage nodes), and the
    manifest. ``same_image``: every job's final image is one picture."""
    import hashlib

    gen = np.random.default_rng(seed)
    one = gen.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    jobs = {}
    for template in templates:
        for s in seeds:
            key = hashlib.sha1(json.dumps([template, s, []]).encode()).hexdigest()[:12]
            (folder / key).mkdir(parents=True, exist_ok=True)
            images = []
            for prefix in ("layout", "final"):
                pixels = one if same_image and prefix == "final" else gen.integers(0, 255, (size[1], size[0], 3),
                                                                                   dtype=np.uint8)
                Image.fromarray(pixels).save(folder / key / f"{prefix}_00001_.png")
                images.append(f"{key}/{prefix}_00001_.png")
            texts = {"Personalized prompt (with token)": template.replace("{}", "sks vase"),
                     "Vanilla prompt (no token)": template.replace("{}", "red vase")}
            jobs[key] = {"key": key, "template": template, "seed": s, "texts": texts, "images": images,
                         "seconds": 1.0, "overrides": [], "prompt": {}}
    manifest = {"jobs": jobs, "workflow": workflow,
                "subject": {"personalized": "sks vase", "vanilla": "red vase", "word": "vase"}, "reference": None}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder
