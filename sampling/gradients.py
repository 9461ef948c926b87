"""Gradients through ComfyUI's model while ComfyUI runs nodes under ``torch.inference_mode()``.

ComfyUI's executor runs every node inside ``torch.inference_mode()`` (``execution.py``), so the
weights its loaders create or move are *inference tensors*. Autograd refuses to save an inference
tensor for backward ("Inference tensors cannot be saved for backward"), and a linear layer's
backward with respect to its input needs its weight, so the plain way,
``with torch.inference_mode(False), torch.enable_grad(): model(x).backward()``, fails at the first
layer. Turning inference mode off does not help either: the weights stay inference tensors.

The sound way used here: :func:`gradients_enabled` turns inference mode off and gradients on for
its block only, and installs a ``TorchFunctionMode`` for that block which, for every torch call
that will record autograd (some tensor argument requires grad), replaces the inference-tensor
arguments by normal clones (``torch.Tensor.clone`` outside inference mode gives a normal tensor
with the same values). The clones are exact copies, so the gradient is exact; they live only as
long as the autograd graph that saved them. Nothing global is switched: the mode and the grad
state are restored when the block ends, also on errors, and the model's weights are untouched
(no ``.data`` swap, no weight wrappers, so no reload of the model). The cost is one copy of each
weight used in a differentiated pass, held until its backward (about the model's size at peak).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map


def _normal(value):
    return value.clone() if isinstance(value, torch.Tensor) and value.is_inference() else value


class _NormalTensorsForAutograd(TorchFunctionMode):
    """Clones inference-tensor arguments of calls that will record autograd."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.is_grad_enabled():
            flat, _ = tree_flatten((args, kwargs))
            tensors = [v for v in flat if isinstance(v, torch.Tensor)]
            if any(t.requires_grad for t in tensors) and any(t.is_inference() for t in tensors):
                args, kwargs = tree_map(_normal, (args, kwargs))
        return func(*args, **kwargs)


@contextlib.contextmanager
def gradients_enabled() -> Iterator[None]:
    """A block where autograd works through ComfyUI's model, also inside ComfyUI's inference mode."""
    with torch.inference_mode(False), torch.enable_grad(), _NormalTensorsForAutograd():
        yield


def normal_tensor(x: torch.Tensor) -> torch.Tensor:
    """A normal (non-inference) copy of ``x`` that autograd may use as a leaf; call it inside
    :func:`gradients_enabled`."""
    return x.detach().clone()
