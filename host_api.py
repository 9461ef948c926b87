"""The ComfyUI internals whose shape moved between the releases users run (0.3.64 through 0.38): one place that
adapts to what the running host offers, by its signature or its return, never by version strings.

Each adapter is tested against the pinned host's real call and against a stand-in with the newer shape
(tests/host/test_host_api.py, which names the ComfyUI commit each stand-in is written from).

- :func:`prompt_executor`: ``execution.PromptExecutor`` took ``cache_size`` (0.3.64); newer releases take
  ``cache_args`` and read ``cache_args["ram"]`` and ``["ram_inactive"]`` unguarded when a prompt runs.
- :func:`embedding_lookup_size` / :func:`embedding_found`: ``SDTokenizer._try_get_embedding`` returned
  ``(embed, leftover)`` (0.3.64); newer releases return and unpack ``(embed, name, leftover)``.
- :func:`dense_linear`: ``comfy.ops.cast_bias_weight`` dequantized fp8 weights to the input's dtype (0.3.64);
  newer releases may return a ``QuantizedTensor`` (its storage quantized) where the dtypes already match, which
  slicing would index in its quantized form.
- :func:`flux_rope_layout`: Qwen-Image's RoPE table was ``[n, tokens, 1, d / 2, 2, 2]``, applied to queries and
  keys laid out ``[n, tokens, heads, d]`` (0.3.64); 0.33.0 builds it as Flux does, ``[n, 1, tokens, d / 2, 2, 2]``,
  applied (``apply_rope1``) to ``[n, heads, tokens, d]``.
- :func:`dit_config`: a DiT's config as the host's detection would make it of a file: ``FluxParams`` and
  ``ChromaParams`` took no ``txt_ids_dims`` (0.3.64); 0.33.0 requires it (Flux.1: ``[]``), Chroma's
  ``vec_in_dim`` (None) and Chroma Radiance's ``use_x0`` and ``use_sequential_txt_ids``, which its
  ``comfy/model_detection.py`` reads off a checkpoint.
- :func:`pixels_per_latent`: every latent format was 8 image pixels a latent pixel (0.3.64, no attribute); 0.33.0's
  say so in ``spacial_downscale_ratio`` (Flux.2's 16).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

# A name no embedding file has: what a lookup returns for it shows the shape of its answer.
PROBE = "lr-shape-probe-no-such-embedding"
CLASSIC_CACHE_ARGS = {"lru": 0, "ram": 0, "ram_inactive": 0}  # newer main.py's values with --cache-classic


class HostShapeError(RuntimeError):
    """The running ComfyUI offers an internal in a shape this pack does not know."""


def flux_rope_layout(pe: Any) -> Any:
    """A RoPE table of a joint-attention call (``[n, 1, tokens, d / 2, 2, 2]``: Flux's, and Qwen-Image's from 0.33.0
    on; ``[n, tokens, 1, d / 2, 2, 2]``: Qwen-Image's in 0.3.64) in Flux's layout, which broadcasts over the heads
    of ``[n, heads, tokens, d]``."""
    if pe.ndim != 6 or pe.shape[-2:] != (2, 2) or 1 not in pe.shape[1:3]:
        raise HostShapeError(f"ComfyUI passes a RoPE table of shape {tuple(pe.shape)}; this pack knows [n, 1, tokens, "
                             "d/2, 2, 2] and [n, tokens, 1, d/2, 2, 2]. Update comfyui-layout-retouch, or report the "
                             "ComfyUI version you run.")
    return pe if pe.shape[1] == 1 else pe.transpose(1, 2)


# What ComfyUI 0.33.0's detection sets, for a Flux.1, Chroma or Chroma Radiance file (without the keys that mark
# x0 prediction or sequential text ids), in the fields 0.3.64's parameters lack.
DETECTED = {"txt_ids_dims": [], "vec_in_dim": None, "use_x0": False, "use_sequential_txt_ids": False}
PARAMS = {"flux": ("comfy.ldm.flux.model", "FluxParams"), "flux2": ("comfy.ldm.flux.model", "FluxParams"),
          "chroma": ("comfy.ldm.chroma.model", "ChromaParams"),
          "chroma_radiance": ("comfy.ldm.chroma_radiance.model", "ChromaRadianceParams")}


def dit_config(config: dict) -> dict:
    """``config`` (a DiT's ``unet_config``, e.g. written by hand for a model of another size) with the fields the
    running host's parameter class of its ``image_model`` requires and ``config`` lacks, as the host's detection
    fills them for a file of that family; families without a parameter class here come back as they are."""
    where = PARAMS.get(config.get("image_model"))
    if where is None:
        return dict(config)
    import dataclasses
    import importlib

    params = getattr(importlib.import_module(where[0]), where[1])
    required = [f.name for f in dataclasses.fields(params)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in config and name != "image_model"]
    unknown = [name for name in missing if name not in DETECTED]
    if unknown:
        raise HostShapeError(f"ComfyUI's {where[1]} requires {unknown}, which this pack does not know how to fill. "
                             "Update comfyui-layout-retouch, or report the ComfyUI version you run.")
    return {**config, **{name: DETECTED[name] for name in missing}}


def prompt_executor(server: Any, executor_class: type | None = None) -> Any:
    """ComfyUI's ``PromptExecutor`` for ``server`` with the classic cache (outputs kept while their inputs do not
    change: models load once), built the way the running host's constructor takes it."""
    import execution

    executor_class = executor_class or execution.PromptExecutor
    classic = getattr(getattr(execution, "CacheType", None), "CLASSIC", False)
    parameters = inspect.signature(executor_class).parameters
    if "cache_args" in parameters:
        return executor_class(server, cache_type=classic, cache_args=dict(CLASSIC_CACHE_ARGS))
    return executor_class(server, cache_type=classic)


def dense_linear(linear: Any, x: Any) -> tuple[Any, Any]:
    """A ComfyUI linear layer's weight and bias as ``x``'s dtype and device, dense (dequantized where the host
    returns them quantized) and with its patches applied, as the layer itself computes with them: tensors that can
    be sliced by output column."""
    import comfy.ops

    weight, bias = comfy.ops.cast_bias_weight(linear, x)[:2]
    return _dense(weight, x.dtype), None if bias is None else _dense(bias, x.dtype)


def _dense(tensor: Any, dtype: Any) -> Any:
    import torch

    if type(tensor) not in (torch.Tensor, torch.nn.Parameter) and hasattr(tensor, "dequantize"):
        tensor = tensor.dequantize()  # a QuantizedTensor (newer ComfyUI): its values, not its storage
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def embedding_lookup_size(lookup: Callable[[str], tuple]) -> int:
    """How many values the host's ``SDTokenizer._try_get_embedding`` (``lookup``, bound to a tokenizer whose
    embedding directories are a list) returns: 2 or 3. Asked once per tokenizer, with a name no file has."""
    size = len(lookup(PROBE))
    if size not in (2, 3):
        raise HostShapeError(f"ComfyUI's SDTokenizer._try_get_embedding returns {size} values; this pack knows 2 "
                             "(embed, leftover: ComfyUI 0.3.64) and 3 (embed, name, leftover: newer releases). "
                             "Update comfyui-layout-retouch, or report the ComfyUI version you run.")
    return size


def embedding_found(size: int, embed: Any, name: str, leftover: str) -> tuple:
    """A ``_try_get_embedding`` answer in the host's shape (``size`` from :func:`embedding_lookup_size`)."""
    return (embed, leftover) if size == 2 else (embed, name, leftover)


def pixels_per_latent(model) -> int:
    """Image pixels per latent pixel, each way, of a ModelPatcher's latent format (Flux.2: 16; 8 where the host's
    formats do not say: 0.3.64's, all of them 8)."""
    return getattr(model.get_model_object("latent_format"), "spacial_downscale_ratio", 8)
