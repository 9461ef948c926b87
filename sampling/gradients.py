"""Gradients through ComfyUI's model while ComfyUI runs nodes under ``torch.inference_mode()``.

ComfyUI's executor runs every node inside ``torch.inference_mode()`` (``execution.py``), so the
weights its loaders create or move are *inference tensors*. Autograd refuses to save an inference
tensor for backward ("Inference tensors cannot be saved for backward"), and a linear layer's
backward with respect to its input needs its weight, so the plain way,
``with torch.inference_mode(False), torch.enable_grad(): model(x).backward()``, fails at the first
layer. Turning inference mode off does not help either: the weights stay inference tensors.

The sound way used here: :func:`gradients_enabled` turns inference mode off and gradients on for
its block only, and installs a ``TorchFunctionMode`` for that block. For every torch call that
will record autograd (some tensor argument requires grad) with an inference-tensor argument, it
runs a linear layer or a convolution whose input alone needs a gradient (the weights never do)
through a small ``autograd.Function`` that keeps the weight as an attribute, not as a saved
tensor, and computes the input's gradient from it (no copy); any other such call gets normal
clones of its inference-tensor arguments (``torch.Tensor.clone`` outside inference mode gives a
normal tensor with the same values). Both are exact. Nothing global is switched: the mode and the
grad state are restored when the block ends, also on errors, and the model's weights are
untouched (no ``.data`` swap, no weight wrappers, so no reload of the model).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def _normal(value):
    return value.clone() if isinstance(value, torch.Tensor) and value.is_inference() else value


def _tensors(values):
    """The tensors among call arguments, one level of lists and tuples deep (as torch's ops take them)."""
    for v in values:
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from (w for w in v if isinstance(w, torch.Tensor))


def _normal_arguments(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    def one(v):
        return [_normal(w) for w in v] if isinstance(v, list) else tuple(map(_normal, v)) if isinstance(v, tuple) \
            else _normal(v)
    return tuple(map(one, args)), {k: one(v) for k, v in kwargs.items()}


class _Linear(torch.autograd.Function):
    """``F.linear`` differentiated with respect to its input only, the weight held, not saved."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.weight = weight  # an attribute: autograd's check of saved tensors does not apply
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        return grad.matmul(ctx.weight.to(grad.dtype)), None, None


class _Conv2d(torch.autograd.Function):
    """``F.conv2d`` differentiated with respect to its input only, the weight held, not saved."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.weight, ctx.shape, ctx.settings = weight, x.shape, (stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        x_grad = torch.nn.grad.conv2d_input(ctx.shape, ctx.weight.to(grad.dtype), grad, *ctx.settings)
        return x_grad, None, None, None, None, None, None


def _constant(t) -> bool:
    return t is None or (isinstance(t, torch.Tensor) and not t.requires_grad)


class _NormalTensorsForAutograd(TorchFunctionMode):
    """Runs calls that will record autograd without saving inference tensors: linear layers and
    convolutions whose input alone needs a gradient through :class:`_Linear` / :class:`_Conv2d`
    (no copy), any other call with its inference-tensor arguments cloned."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not torch.is_grad_enabled():
            return func(*args, **kwargs)
        tensors = list(_tensors(args))
        if kwargs:
            tensors += _tensors(kwargs.values())
        if not (any(t.is_inference() for t in tensors) and any(t.requires_grad for t in tensors)):
            return func(*args, **kwargs)
        if func is F.linear and not kwargs and len(args) in (2, 3):
            x, weight, bias = (*args, None)[:3]
            if x.requires_grad and _constant(weight) and _constant(bias):
                return _Linear.apply(x, weight, bias)
        if func is F.conv2d and not kwargs and len(args) == 7 and not isinstance(args[4], str):
            x, weight, bias = args[:3]
            if x.requires_grad and _constant(weight) and _constant(bias):
                return _Conv2d.apply(*args)
        args, kwargs = _normal_arguments(args, kwargs)
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
