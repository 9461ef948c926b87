"""The modifier token V* of Custom Diffusion (Kumari et al., CVPR 2023, Sec. 3.1), on a copy of the tokenizer.

Custom Diffusion adds a new word (``<new1>``) to the tokenizer and learns its input embedding;
prompts then read ``a <new1> cat``. ComfyUI's tokenizer (``comfy/sd1_clip.py``, ``SDTokenizer``)
has no added words, but it already puts a precomputed vector into the token sequence for
``embedding:name`` (Textual Inversion): ``tokenize_with_weights`` splits the prompt at
``embedding_identifier`` and asks ``_try_get_embedding`` for the vector, and the text encoder
(``SDClipModel.process_tokens``) uses that vector as the input embedding at its position.

:func:`with_modifier_tokens` reuses that path on a **copy**: the copy's inner ``SDTokenizer``
belongs to a subclass (:class:`ModifierTokenizer` mixed into the original class, so
``isinstance`` checks still hold) that (1) marks every occurrence of a modifier token in the
prompt as ``embedding:<new1>`` (spaces around it, as diffusers' added token splits words
wherever it occurs) and (2) answers ``_try_get_embedding`` for those names from its own table
before looking for files. ``clip.clone()`` shares the tokenizer object, so the copy is put on
the clone; the caller's CLIP and tokenizer are never changed. Chaining two loaders merges their
tables (a later token of the same name wins).

When the caller's tokenizer has no embedding folder (``embedding_directory`` None) the copy gets
an empty list, since ComfyUI only looks up ``embedding:`` words when it has one; an unknown
``embedding:name`` then logs ComfyUI's warning on the copy instead of being read as plain words.
"""

from __future__ import annotations

import copy
import re

import comfy.sd1_clip
import torch

from .. import host_api
from ..errors import Problem

TEXT_WIDTH_BASES = {768: "SD1.x", 1024: "SD2.x", 1280: "SDXL's CLIP-G", 2048: "SDXL"}


def base_name(width: int) -> str:
    """The base family a text width belongs to, for messages ('SD1.x'), or 'unknown'."""
    return TEXT_WIDTH_BASES.get(width, "unknown")


class ModifierTokenizer:
    """Mixin over an ``SDTokenizer`` class: modifier tokens resolve to learned input embeddings.

    ``modifier_embeddings`` maps a token's text (``<new1>``) to its vectors ``[n, width]`` (float32, CPU).
    """

    modifier_embeddings: dict[str, torch.Tensor]
    embedding_lookup_size: int  # what the host's lookup returns: 2 or 3 values (host_api)

    def mark_modifier_tokens(self, text: str) -> str:
        """``text`` with every modifier token written as a spaced ``embedding:<token>`` word."""
        if not self.modifier_embeddings:
            return text
        ident = self.embedding_identifier
        names = "|".join(re.escape(t) for t in sorted(self.modifier_embeddings, key=len, reverse=True))
        return re.sub(f"(?<!{re.escape(ident)})(?:{names})", lambda m: f" {ident}{m.group(0)} ", text)

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs):
        return super().tokenize_with_weights(self.mark_modifier_tokens(text), return_word_ids, **kwargs)

    def _try_get_embedding(self, embedding_name: str):
        words = embedding_name.split()
        if words and words[0] in self.modifier_embeddings:
            return host_api.embedding_found(self.embedding_lookup_size, self.modifier_embeddings[words[0]], words[0],
                                            " ".join(words[1:]))
        return super()._try_get_embedding(embedding_name)


_CLASSES: dict[type, type] = {}


def _modifier_class(base: type) -> type:
    """``base`` with :class:`ModifierTokenizer` mixed in (one class per base, reused)."""
    if issubclass(base, ModifierTokenizer):
        return base
    if base not in _CLASSES:
        _CLASSES[base] = type(f"ModifierToken{base.__name__}", (ModifierTokenizer, base), {"__module__": __name__})
    return _CLASSES[base]


def text_tokenizers(tokenizer) -> dict[str | None, comfy.sd1_clip.SDTokenizer]:
    """The ``SDTokenizer`` objects inside a CLIP's tokenizer, by attribute name (None: the tokenizer itself)."""
    if isinstance(tokenizer, comfy.sd1_clip.SDTokenizer):
        return {None: tokenizer}
    return {name: v for name, v in vars(tokenizer).items() if isinstance(v, comfy.sd1_clip.SDTokenizer)}


def width_problem(clip, embeddings: dict[str, torch.Tensor]) -> Problem | None:
    """Why the token vectors ``{token: [n, width]}`` cannot go into ``clip``'s prompts, or None."""
    widths = {name: t.embedding_size for name, t in text_tokenizers(clip.tokenizer).items()}
    if not widths:
        return (f"has no CLIP text tokenizer ({type(clip.tokenizer).__name__}), so it cannot take a modifier token.",
                "connect the CLIP of the SD1.x or SD2.x checkpoint the concept was trained on.")
    for token, vectors in embeddings.items():
        width = vectors.shape[-1]
        if set(widths.values()) != {width}:
            if len(widths) == 1:
                have = f"{next(iter(widths.values()))}-wide token vectors ({base_name(next(iter(widths.values())))})"
            else:
                have = "token vectors " + " and ".join(f"{w} wide in {name}" for name, w in widths.items())
            return (f"takes {have}, but the modifier token '{token}' is {width} wide ({base_name(width)}).",
                    "connect the CLIP of the checkpoint the concept was trained on (the same one as the model).")
    return None


def with_modifier_tokens(clip, embeddings: dict[str, torch.Tensor]):
    """A clone of ``clip`` whose prompts turn each token of ``embeddings`` (``{'<new1>': [n, width]}``)
    into its vectors; ``clip`` and its tokenizer are left as they were.

    Raises:
        ValueError: the widths do not fit (check :func:`width_problem` first for the message).
    """
    problem = width_problem(clip, embeddings)
    if problem is not None:
        raise ValueError(" ".join(problem))
    out = clip.clone()
    inner = text_tokenizers(clip.tokenizer)
    outer = None if None in inner else copy.copy(clip.tokenizer)
    for name, tokenizer in inner.items():
        new = copy.copy(tokenizer)
        new.__class__ = _modifier_class(type(tokenizer))
        new.modifier_embeddings = {**getattr(tokenizer, "modifier_embeddings", {}),
                                   **{t: v.detach().to("cpu", torch.float32) for t, v in embeddings.items()}}
        if new.embedding_directory is None:
            new.embedding_directory = []
        new.embedding_lookup_size = host_api.embedding_lookup_size(super(ModifierTokenizer, new)._try_get_embedding)
        if name is None:
            outer = new
        else:
            setattr(outer, name, new)
    out.tokenizer = outer
    return out
