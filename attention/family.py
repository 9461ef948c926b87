"""The contract of a model family: what the swap, the layer sets, the masks and the records ask of a model.

A family is one module of ``attention/`` (``unet.py``, ``flux.py``, ...) holding one object that fulfils
:class:`Family`; :mod:`.families` lists them, and the rest of the pack asks ``family_of(model)``, never a family
module. What differs between families sits behind these members; everything else (rows, phases, records, the
reference cache, the run's checks) is shared.

A *family* here is an attention architecture (a UNet with separate self- and cross-attention; Flux's, Qwen-Image's
or SD3's joint attention). Which checkpoint a model was made from (SD1.5 or SDXL, both UNets) is its *base model*
(:func:`~..records.base_model`), what records are checked against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from ..errors import Problem, public
from .layer_set import LayerSet

# Where a DiT's reference keys sit (its RoPE positions): moved off the target's, or at their own (Stable Flow's).
POSITIONS = ("shifted", "shared")


@public
class UnsupportedModel(ValueError):
    """A diffusion model of no family the pack supports (e.g. Flux.2, Z-Image, Wan)."""


@runtime_checkable
class Family(Protocol):
    """One model family. ``model`` is a ComfyUI ModelPatcher; ``diffusion_model`` its ``model.diffusion_model``.

    Attributes:
        name: what errors and reports call it (``"UNet"``, ``"Flux"``).
        models: the base models it covers, for the list of supported models in errors.
        record_kinds: per source path (``"layout"``, ``"reference"``), what a record keeps for the swap
            (:mod:`~..records` kinds).
        layout_reads: what the target reads from the layout path in the layout phase on a swapped layer: its
            self-attention output (copied; a UNet) or its image keys and values (joint attention).
        cross_attention: whether the model has separate cross-attention layers (the swap's layout phase copies
            them; Pick-and-Draw's losses read them).
    """

    name: str
    models: str
    record_kinds: dict[str, tuple[str, ...]]
    layout_reads: tuple[str, ...]
    cross_attention: bool

    def recognises(self, diffusion_model) -> bool:
        """Whether ``diffusion_model`` is of this family (its blocks as the family's patches call them)."""

    def depths(self, model) -> dict[tuple[str, int], int]:
        """Its attention blocks ``(block_name, block_id)`` and the attention layers each holds: the layer keys
        are ``(block_name, block_id, index)``."""

    def auto_layers(self, model) -> LayerSet:
        """The ``"auto"`` layer set."""

    def map_layers(self, model) -> LayerSet:
        """Where the subject map is read."""

    def layers_at(self, model, resolution: int) -> tuple[tuple[str, int, int], ...]:
        """The layer keys whose image tokens are at latent size / ``resolution``, where the subject map and
        Pick-and-Draw's features are read."""

    def text_width(self, model) -> int | None:
        """The width of the text embedding the model reads (None: not known)."""

    def join_texts(self, texts: list[torch.Tensor], error_for: Callable[[str, Problem], Exception]) -> torch.Tensor:
        """One call's rows' text embeddings ``[1, tokens, width]`` each, joined to ``[rows, tokens, width]``."""

    def call_options(self, x: torch.Tensor, context: torch.Tensor) -> dict:
        """What the family's patches read in a call's ``transformer_options`` (a DiT's token layout)."""

    def projection(self, diffusion_model) -> Callable:
        """``project(layer, kind, input)``: a recorded attention input's keys or values."""

    def attention_shapes(self, diffusion_model, layers: LayerSet, latent: tuple[int, int]) -> dict[tuple, tuple]:
        """Per layer key in ``layers``: ``(image tokens, width of the kept attention input, width of the
        attention's output)`` at a latent of ``latent`` (height, width), from the model's shapes alone (a model
        on the meta device will do): what records take."""

    def install_swap(self, clone, model, needs, spec, mask, positions: str) -> None:
        """The swap's patches on ``clone`` (a clone of ``model``), chaining the patches already there."""

    def install_recording(self, clone, record, sampling_sigmas: torch.Tensor, layers: LayerSet,
                          kinds: tuple[str, ...]) -> None:
        """Patches on ``clone`` that record ``kinds`` on ``layers`` at the steps starting at ``sampling_sigmas``."""

    def install_map_capture(self, clone, model, store, layers: LayerSet, steps, resolution: int | None,
                            sampling_sigmas: torch.Tensor | None = None, self_kv: bool = False) -> None:
        """Patches on ``clone`` that add the subject's cross-attention maps of ``layers`` to ``store``."""
