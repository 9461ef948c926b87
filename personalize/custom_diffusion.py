"""Custom Diffusion (Kumari et al., "Multi-Concept Customization of Text-to-Image Diffusion", CVPR 2023),
loaded from diffusers' training output onto a ComfyUI model and CLIP.

Sec. 3.1 of the paper fine-tunes only the cross-attention projections of the text features,
W^k and W^v (``attn2.to_k`` / ``attn2.to_v``), plus the input embedding of a new modifier token
V* (``<new1>``); the Layout-and-Retouch paper uses it as one of its personalized models.

The files, as diffusers writes them (huggingface/diffusers at 58eb52c0, read for this module):

- ``examples/custom_diffusion/train_custom_diffusion.py``: ``unet.save_attn_procs(output_dir,
  safe_serialization=...)`` writes ``pytorch_custom_diffusion_weights.safetensors`` (``.bin`` with
  ``--no_safe_serialization``); ``save_new_embed`` writes one ``{token}.safetensors`` (or ``.bin``)
  per ``--modifier_token`` (``+``-separated), holding ``{token: tensor[width]}``.
- ``src/diffusers/loaders/unet.py`` (``_get_custom_diffusion_state_dict``, ``_process_custom_diffusion``):
  keys are the attention processor's name and its parameter,
  ``down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_custom_diffusion.weight``,
  ``...to_v_custom_diffusion.weight``, with ``--freeze_model crossattn`` also
  ``...to_q_custom_diffusion.weight`` and ``...to_out_custom_diffusion.0.weight`` / ``.bias``.
  The ``.bin`` also holds an empty dict under each parameterless processor (``...attn1.processor``),
  which safetensors drops.
- ``src/diffusers/models/attention_processor.py`` (``CustomDiffusionAttnProcessor``): at inference
  the processor uses its own full matrices in place of ``attn.to_k`` / ``to_v`` (``to_q``, ``to_out``);
  its ``detach`` of the first token only stops gradients. Replacing the weights is therefore exact.
- ``src/diffusers/loaders/textual_inversion.py``: a one-key dict is the diffusers embedding format.

Applied as ComfyUI weight patches on a clone (``comfy/lora.py``, ``calculate_weight``): a ``"set"``
patch copies its tensor and ignores the strength, so each weight is patched with
``("diff", (W_cd - W,))``, W the model's original weight (``ModelPatcher.get_key_patches``, which
reads the backup when the model is loaded with patches): strength s gives ``W + s (W_cd - W)``,
exactly the file's matrix at 1 up to float32 rounding (one ulp), none of it at 0, and it stacks
with other patches (a LoRA) as a LoRA does. The modifier token goes on a copy of the CLIP's
tokenizer (``modifier_tokens.py``); the strength does not scale it (a new word has no base to
blend with).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import comfy.utils
import safetensors.torch
import torch

from ..errors import Problem, public
from .modifier_tokens import base_name, width_problem, with_modifier_tokens

WEIGHT_NAMES = ("pytorch_custom_diffusion_weights.safetensors", "pytorch_custom_diffusion_weights.bin")
TOKEN_EXTENSIONS = (".safetensors", ".bin")
_KEY = re.compile(r"^(?:unet\.)?(?P<layer>.+)\.processor\.(?P<proj>to_[kqv]|to_out)_custom_diffusion"
                  r"(?P<rest>(?:\.0)?\.(?:weight|bias))$")
_UNET = "diffusion_model."

Source = Literal["weights", "token", "clip"]


@public
class CustomDiffusionError(ValueError):
    """What is wrong with one input (``source``) of a Custom Diffusion load, and the fix (``problem``)."""

    def __init__(self, source: Source, problem: str, fix: str) -> None:
        self.source = source
        self.problem: Problem = (problem, fix)
        super().__init__(f"{problem} Fix: {fix}")


def _read(path: Path, source: Source) -> dict[str, Any]:
    """A ``.safetensors`` or ``.bin`` file's dict, on the CPU (``.bin`` with ``weights_only``)."""
    try:
        if path.suffix.lower() == ".safetensors":
            return safetensors.torch.load_file(str(path), device="cpu")
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CustomDiffusionError(source, f"'{path}' does not exist.", "check the file name and folder.") from None
    except Exception as e:  # a truncated download, a pickle with objects, another format
        raise CustomDiffusionError(source, f"'{path.name}' cannot be read ({type(e).__name__}: {str(e)[:200]}).",
                                   "download or copy the file again; it must be a .safetensors or a plain "
                                   "torch.save .bin as diffusers writes it.") from None
    if not isinstance(data, dict):
        raise CustomDiffusionError(source, f"'{path.name}' holds a {type(data).__name__}, not a dict of tensors.",
                                   "choose the file diffusers' train_custom_diffusion.py wrote.")
    return data


def _looks_like(data: dict[str, Any]) -> str:
    """What a dict that is not Custom Diffusion weights seems to be, for the message."""
    keys = list(data)
    tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
    if any("lora" in k for k in keys):
        return "it looks like a LoRA (load it with a LoRA loader)"
    if len(keys) == 1 and len(tensors) == 1 and tensors[0].ndim <= 2:
        return f"it looks like a modifier token or embedding file ({keys[0]!r}: {list(tensors[0].shape)})"
    if any(k.startswith(("model.diffusion_model.", "state_dict")) for k in keys):
        return "it looks like a checkpoint, or the original CustomDiffusion repository's delta.bin, not diffusers' file"
    return f"its keys begin {', '.join(repr(k) for k in keys[:3]) or '(none: it is empty)'}"


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The fine-tuned matrices of a Custom Diffusion weights file, under diffusers' UNet parameter names
    (``down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight``), as float32 on the CPU."""
    path = Path(path)
    data = _read(path, "weights")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    custom = {k: v for k, v in tensors.items() if "_custom_diffusion" in k}
    if not custom:
        raise CustomDiffusionError(
            "weights", f"'{path.name}' holds no Custom Diffusion weights (keys like 'down_blocks.0.attentions.0."
            f"transformer_blocks.0.attn2.processor.to_k_custom_diffusion.weight'): {_looks_like(data)}.",
            f"choose {WEIGHT_NAMES[0]} (or .bin) as diffusers' train_custom_diffusion.py wrote it.")
    out = {}
    for key, tensor in custom.items():
        match = _KEY.match(key)
        if match is None:
            raise CustomDiffusionError("weights", f"'{path.name}' has a key diffusers' Custom Diffusion does not "
                                       f"write: '{key}'.", "choose an unmodified file from train_custom_diffusion.py.")
        out[f"{match['layer']}.{match['proj']}{match['rest']}"] = tensor.detach().to("cpu", torch.float32)
    return out


def _trained_width(weights: dict[str, torch.Tensor]) -> int | None:
    """The text width the weights were trained for: the input width of their cross-attention to_k."""
    widths = [v.shape[1] for k, v in weights.items() if k.endswith("attn2.to_k.weight") and v.ndim == 2]
    return widths[0] if widths else None


def model_targets(model, weights: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The weights under the keys of ``model`` (a ``ModelPatcher``: ``diffusion_model.input_blocks.1.1...``).

    The diffusers names are mapped with ComfyUI's own ``comfy.utils.unet_to_diffusers``.

    Raises:
        CustomDiffusionError: a layer the model lacks or a shape it does not have (the message names them).
    """
    unet_config = model.model.model_config.unet_config
    to_comfy = comfy.utils.unet_to_diffusers(unet_config)
    shapes = {k: v.shape for k, v in model.model_state_dict(filter_prefix=_UNET).items()}
    family = type(model.model.model_config).__name__
    context = unet_config.get("context_dim")
    width = _trained_width(weights)
    trained = f" (trained for {width}-wide text: {base_name(width)}; this model's is {context})" \
        if width is not None and width != context else ""
    fix = ("connect the base model the weights were trained on (the same family, e.g. SD 1.5 for SD1.x weights), "
           "or choose weights trained for this model.")
    targets, missing, wrong = {}, [], []
    for key, tensor in weights.items():
        comfy_key = _UNET + to_comfy[key] if key in to_comfy else None
        if comfy_key is None or comfy_key not in shapes:
            missing.append(key)
        elif tuple(shapes[comfy_key]) != tuple(tensor.shape):
            wrong.append((key, list(tensor.shape), list(shapes[comfy_key])))
        else:
            targets[comfy_key] = tensor
    if wrong:
        key, have, want = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise CustomDiffusionError("weights", f"'{name}' does not fit this {family} model{trained}: {key} is {have} "
                                   f"in the file but {want} in the model{more}.", fix)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CustomDiffusionError("weights", f"'{name}' has layers this {family} model lacks{trained}: "
                                   f"{missing[0]}{more}.", fix)
    return targets


def patch_model(model, targets: dict[str, torch.Tensor], strength: float):
    """A clone of ``model`` whose weights ``targets`` (from :func:`model_targets`) become
    ``W + strength * (W_cd - W)``; ``model`` keeps its patches and weights."""
    originals = model.get_key_patches(_UNET)
    patches = {}
    for key, tensor in targets.items():
        weight, convert = originals[key][0]
        base = convert(weight.detach().to("cpu", torch.float32, copy=True), inplace=True)
        patches[key] = ("diff", (tensor - base,))
    out = model.clone()
    applied = out.add_patches(patches, strength)
    assert len(applied) == len(patches), "model_targets checked every key"
    return out


def parse_tokens(text: str) -> list[str]:
    """The modifier tokens of ``text``: ``<new1>``, or several as diffusers' ``--modifier_token``
    ``<new1>+<new2>`` (commas or spaces also separate); empty for none."""
    tokens = [t for t in re.split(r"[+,\s]+", text.strip()) if t]
    for token in tokens:
        if "/" in token or "\\" in token or token in (".", ".."):
            raise CustomDiffusionError("token", f"'{token}' is not a token name (it holds a path).",
                                       "write the token as in the prompt and the file name, e.g. <new1>.")
    return tokens


def token_path(folder: str | os.PathLike, token: str) -> Path:
    """The token file ``{token}.safetensors`` (or ``.bin``) in ``folder``, as diffusers names it."""
    folder = Path(folder)
    for ext in TOKEN_EXTENSIONS:
        if (folder / f"{token}{ext}").is_file():
            return folder / f"{token}{ext}"
    others = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in TOKEN_EXTENSIONS
                    and p.name not in WEIGHT_NAMES) if folder.is_dir() else []
    holds = f" (it holds {', '.join(others)})" if others else ""
    raise CustomDiffusionError(
        "token", f"no file for the modifier token '{token}': {token}.safetensors and {token}.bin are not in "
        f"{folder}{holds}.",
        f"put the {token}.safetensors that train_custom_diffusion.py wrote next to the weights file, write the token "
        "the training used (--modifier_token), or clear modifier_token if it used none.")


def read_token(path: str | os.PathLike, token: str) -> torch.Tensor:
    """A modifier token's learned input embedding ``[n, width]`` (n = 1 for diffusers), float32 on the CPU."""
    path = Path(path)
    data = _read(path, "token")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    vector = tensors.get(token, next(iter(tensors.values())) if len(tensors) == 1 else None)
    if vector is None or vector.ndim not in (1, 2) or vector.numel() == 0:
        held = ", ".join(f"{k!r}: {list(v.shape)}" for k, v in list(tensors.items())[:3]) or "no tensors"
        raise CustomDiffusionError("token", f"'{path.name}' is not a modifier token file: it holds {held}, where "
                                   f"diffusers writes one vector, {{'{token}': [768]}}.",
                                   f"use the {token}.safetensors that train_custom_diffusion.py wrote.")
    return vector.detach().to("cpu", torch.float32).reshape(-1, vector.shape[-1])


def load_custom_diffusion(model, clip, weights_path: str | os.PathLike, tokens: Sequence[str], strength: float):
    """Custom Diffusion from diffusers' files onto clones of ``model`` and ``clip``.

    Args:
        model: the base ``ModelPatcher`` the weights were trained on; left as it is.
        clip: its CLIP; left as it is (returned itself when ``tokens`` is empty).
        weights_path: ``pytorch_custom_diffusion_weights.safetensors`` (or ``.bin``); each token's file
            ``{token}.safetensors`` (or ``.bin``) lies in the same folder.
        tokens: the modifier tokens (``['<new1>']``), as written in prompts.
        strength: scales the change of each weight (1: the trained weights, 0: none).

    Returns:
        ``(model, clip)``: the patched model clone, and a CLIP clone that reads the tokens.

    Raises:
        CustomDiffusionError: a file is missing, unreadable or of another format or base.
    """
    weights_path = Path(weights_path)
    targets = model_targets(model, read_weights(weights_path), weights_path.name)
    embeddings = {t: read_token(token_path(weights_path.parent, t), t) for t in tokens}
    if embeddings:
        problem = width_problem(clip, embeddings)
        if problem is not None:
            raise CustomDiffusionError("clip", *problem)
    return patch_model(model, targets, strength), with_modifier_tokens(clip, embeddings) if embeddings else clip
