"""What a record's validity depends on: keys of a model (its weights, patches and options) and of a prompt,
compared by value where they hold tensors and by identity where they hold objects."""

from __future__ import annotations

import weakref

import torch


def keys_equal(a, b) -> bool:
    """Equality for cache keys: tensors by value, other objects by ``==``."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu()))
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(keys_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


class Same:
    """Compares equal only to the very same object (held, so its id cannot be reused)."""

    def __init__(self, obj) -> None:
        self.obj = obj

    def __eq__(self, other) -> bool:
        return isinstance(other, Same) and other.obj is self.obj

    def __deepcopy__(self, memo) -> Same:
        return self  # ModelPatcher.clone() deep-copies model_options, where keys travel


def _options_key(value, skip: str):
    """A key of a model_options value: dicts and lists by content, anything else by identity."""
    if isinstance(value, dict):
        return tuple(sorted(((repr(k), _options_key(v, skip)) for k, v in value.items() if k != skip),
                            key=lambda kv: kv[0]))
    if isinstance(value, (list, tuple)):
        return tuple(_options_key(v, skip) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return value
    return Same(value)


def model_key(model, skip: str) -> tuple:
    """What the source rows' attention depends on in a ModelPatcher: its weights (the diffusion
    model object, its weight patches and object patches) and its options (patches, wrappers),
    leaving out the entries named ``skip`` (the swap's own)."""
    base = model.model
    return (
        weakref.ref(base), model.patches_uuid, _options_key(dict(model.object_patches), skip),
        _options_key(model.model_options, skip), str(base.get_dtype()), str(getattr(base, "manual_cast_dtype", None)),
    )


def map_key(model, positive) -> tuple:
    """What a cross-attention map depends on: the model (:func:`model_key`) and the positive
    CONDITIONING (tensors by value)."""
    return model_key(model, ""), _options_key(positive, "")
