"""The families with joint attention (:mod:`.flux`, :mod:`.qwen_image`, ...): what they share, as a base class.

Each block is one attention layer (``(name, i, 0)``), keyed ``(f"{name}_block", i)`` in ComfyUI's ``dit`` patches;
the patches are :mod:`.joint_attention`'s. A family names its blocks (:meth:`JointFamily.blocks`), its ``auto``
blocks (``vital``), where the subject map is read (``map_blocks``: blocks whose text and image tokens keep their
own streams), its projection (:class:`~.joint_attention.JointProjection`) and its RoPE.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..records import KEYS, SELF_IN, SELF_OUT, VALUES
from .joint_attention import PROJECTION_KEY, TOKENS_KEY, JointBlockSwap, JointMapCapture, JointProjection, JointRecord
from .layer_set import LayerSet


class TokensWrapper:
    """APPLY_MODEL wrapper: the call's token layout and the model's :class:`JointProjection` in its
    ``transformer_options`` (for :class:`JointMapCapture` and :class:`JointRecord`)."""

    def __init__(self, family: JointFamily) -> None:
        self.family = family

    def __deepcopy__(self, memo) -> TokensWrapper:
        return self  # stateless; rides in model_options, which ModelPatcher.clone() deep-copies

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                 **kwargs):
        options = dict(transformer_options or {})
        if c_crossattn is not None:
            options.setdefault(TOKENS_KEY, self.family.tokens(x, c_crossattn))
        options.setdefault(PROJECTION_KEY, self.family.projection(executor.class_obj.diffusion_model))
        return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)


class JointFamily:
    """A family with joint attention; a subclass gives what is marked so."""

    name = "DiT"
    key = ""  # a subclass's: its row in benchmark.dits.DITS and tests/comfy_host.TinyDiT.SPECS (bench --family KEY)
    models = ""
    cross_attention = False
    layout_reads = (KEYS, VALUES)  # the layout phase: the layout's image keys and values
    # What a source's record keeps for each path: the reference's keys and values, the layout's too (its layout
    # phase) and its attention output (the mask blend); keys and values as the block's attention input.
    record_kinds = {"reference": (SELF_IN,), "layout": (SELF_IN, SELF_OUT)}
    vital: frozenset = frozenset()
    map_blocks = ("double",)
    patch_size = 2  # latent pixels per image token, each way

    def recognises(self, diffusion_model) -> bool:
        raise NotImplementedError

    def blocks(self, diffusion_model) -> dict[str, Sequence]:
        """The block lists by name, in call order, e.g. ``{"double": dm.double_blocks, "single": ...}``."""
        raise NotImplementedError

    def projection(self, diffusion_model) -> JointProjection:
        raise NotImplementedError

    def rope(self, diffusion_model) -> tuple | None:
        """``(theta, axes_dim)`` of the model's RoPE (the width axis last), or None where keys carry no RoPE."""
        return None

    def width(self, diffusion_model) -> int:
        """The blocks' hidden width: their attention's input and output."""
        raise NotImplementedError

    def text_width(self, model) -> int | None:
        raise NotImplementedError

    def depths(self, model) -> dict[tuple[str, int], int]:
        return {(name, i): 1 for name, blocks in self.blocks(model.model.diffusion_model).items()
                for i in range(len(blocks))}

    def auto_layers(self, model) -> LayerSet:
        """``"auto"``: the family's vital blocks that the model has (every block if it has none of them)."""
        blocks = set(self.depths(model))
        return LayerSet(frozenset(self.vital & blocks or blocks))

    def map_layers(self, model) -> LayerSet:
        return LayerSet(frozenset(b for b in self.depths(model) if b[0] in self.map_blocks))

    def layers_at(self, model, resolution: int) -> tuple[tuple[str, int, int], ...]:
        """The map blocks, at any ``resolution``: every image token sits at latent size / ``patch_size`` (Flux's 1/2,
        Flux.2's 1/1), the one size a DiT has (the resolutions name a UNet's decoder levels)."""
        return tuple((*b, 0) for b in sorted(self.map_layers(model).blocks))

    def tokens(self, x: torch.Tensor, context: torch.Tensor) -> tuple[int, int, int]:
        """``(text tokens, image token rows, columns)`` of a call on latent ``x`` (patches padded)."""
        h, w = x.shape[-2:]
        p = self.patch_size
        return context.shape[1], -(-h // p), -(-w // p)

    def call_options(self, x: torch.Tensor, context: torch.Tensor) -> dict:
        return {TOKENS_KEY: self.tokens(x, context)}

    @staticmethod
    def join_texts(texts: list[torch.Tensor], error_for) -> torch.Tensor:
        """Repeated text tokens would weigh the text more in joint attention, so every row's count must agree."""
        lengths = [t.shape[1] for t in texts]
        if len(set(lengths)) > 1:
            raise error_for("model", (f"is sampled with prompts of {lengths[0]} text tokens but the sources' have "
                                      f"{sorted(set(lengths[1:]))}; in joint attention every row needs as many.",
                                      "encode all prompts with the same text encoder and the same length (shorter "
                                      "prompts: T5 pads them to one length)."))
        return torch.cat(texts)

    def attention_shapes(self, diffusion_model, layers: LayerSet, latent: tuple[int, int]) -> dict[tuple, tuple]:
        p, width = self.patch_size, self.width(diffusion_model)
        tokens = -(-latent[0] // p) * -(-latent[1] // p)
        return {(name, i, 0): (tokens, width, width) for name, blocks in self.blocks(diffusion_model).items()
                for i in range(len(blocks)) if (name, i) in layers}

    def _taken(self, model) -> dict:
        return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})

    def _wrap_tokens(self, clone) -> None:
        import comfy.patcher_extension as ext

        ext.add_wrapper_with_key(ext.WrappersMP.APPLY_MODEL, TOKENS_KEY, TokensWrapper(self), clone.model_options,
                                 is_model_options=True)

    def install_swap(self, clone, model, needs, spec, mask, positions: str = "shifted") -> None:
        """Put a :class:`JointBlockSwap` on every swapped block and on every block another patch holds."""
        taken = self._taken(model)
        rope = self.rope(model.model.diffusion_model) if positions == "shifted" else None
        swapped = {layer[:2] for layer in needs.self_layers}
        for block in self.depths(model):
            key = (f"{block[0]}_block", block[1])
            chained = taken.get(key)
            if block in swapped or chained is not None:
                clone.set_model_patch_replace(JointBlockSwap(block, spec, mask, chained, rope), "dit", *key)

    def install_recording(self, clone, record, sampling_sigmas: torch.Tensor, layers: LayerSet,
                          kinds: tuple[str, ...]) -> None:
        """Put a :class:`JointRecord` on every block in ``layers`` (chaining the patch on its key)."""
        taken = self._taken(clone)
        for block in sorted(layers.keys_in(set(self.depths(clone)))):
            key = (f"{block[0]}_block", block[1])
            clone.set_model_patch_replace(JointRecord(block, record, sampling_sigmas, taken.get(key), kinds), "dit",
                                          *key)
        self._wrap_tokens(clone)

    def install_map_capture(self, clone, model, store, layers: LayerSet, steps, resolution: int | None,
                            sampling_sigmas: torch.Tensor | None = None, self_kv: bool = False) -> None:
        """Put a :class:`JointMapCapture` on the map blocks in ``layers``, at any ``resolution`` (:meth:`layers_at`;
        ``self_kv``: a UNet's; joint attention has no separate self-attention to keep)."""
        taken = self._taken(model)
        for block in sorted(layers.keys_in(set(self.depths(model)))):
            if block[0] in self.map_blocks:
                key = (f"{block[0]}_block", block[1])
                clone.set_model_patch_replace(JointMapCapture(block, store, steps, taken.get(key), sampling_sigmas,
                                                              self.patch_size),
                                              "dit", *key)
        self._wrap_tokens(clone)
