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
