"""Locating the subject's tokens in a prompt with the CLIP model's own tokenizer.

The subject is written as in the prompt: a class noun for DreamBooth ("dog" in "a sks dog"),
the embedding for Textual Inversion ("embedding:my_cat"), or several words, whose tokens are
summed (as DreamMatcher does). Token positions count the start token as 0 and run on across
ComfyUI's 77-token chunks, matching the conditioning's token axis; on Flux they are T5's (no start
token), the text tokens of its joint attention.

SD3's conditioning puts CLIP-L and CLIP-G's tokens (77 a chunk) before T5's (ComfyUI's ``SD3ClipModel``), so
there T5's positions count on after them, where those encoders are loaded.

A chat-template text encoder (Qwen-Image's Qwen2.5-VL) wraps the prompt in a template and its encoder drops the
template's head from the conditioning (ComfyUI's ``QwenImageTEModel.encode_token_weights``: up to ``<|im_start|>user\n``),
so the conditioning's tokens start with the prompt's. Its BPE tokens carry the space before a word (`` dog`` is
not ``dog``), so the subject is found by its place in the prompt's text: its tokens are those the prompt gains from
the text before the word to the text through it.

Flux.2's encoders (Klein's Qwen3, dev's Mistral; ComfyUI's ``KleinTokenizer``, ``Flux2Tokenizer``) keep the whole
template, so the subject's tokens sit after the template's head (and Mistral's start token). Klein's tokenizer pads
the tokens to 512 at the end; the model pads shorter ones (Mistral's) to 512 at the front (``model_base.Flux2``).
Both keep a token's place counted from the conditioning's end, so there the positions are negative: counted from
the end of the text tokens, what indexes the attention's text axis in either case.
"""

from __future__ import annotations

import re

from ..errors import Problem
from ..records import keys_equal

EMBEDDING = "embedding:"  # ComfyUI's prefix of an embedding in a prompt
TEMPLATED = ("qwen25_7b",)  # tokenizers whose prompt sits in a chat template the encoder drops the head of
KEPT_TEMPLATE = ("qwen3_4b", "qwen3_8b", "mistral3_24b")  # Flux.2's: the whole template is encoded


def _chunks(tokens: dict) -> list:
    """The token chunks of the text encoder whose tokens are the conditioning's token axis: T5's where a
    prompt has them (Flux: CLIP-L gives only the pooled vector), else the first (SDXL's two CLIPs agree)."""
    return tokens["t5xxl"] if "t5xxl" in tokens else next(iter(tokens.values()))


def _word_tokens(clip, text: str) -> list:
    """The tokens of ``text``'s words (ints, or embedding vectors), without start, end and padding."""
    tokens = clip.tokenize(text, return_word_ids=True)
    chunks = _chunks(tokens)
    return [entry[0] for chunk in chunks for entry in chunk if entry[2] > 0]


def _words_in_prompt(prompt: str, words: list[str], count) -> list[int]:
    """The subject words' token positions among the prompt's own tokens, by their place in the prompt's text:
    ``count(text)`` is the templated text's token count, so the prompt gains a word's tokens from the text before
    it to the text through it (see the module docstring)."""
    empty, positions = count(""), []
    for word in words:
        starts = [m.start() for m in re.finditer(rf"(?<!\w){re.escape(word)}(?!\w)", prompt)]
        if not starts:
            raise KeyError(word)
        for start in starts:
            positions.extend(range(count(prompt[:start].rstrip()) - empty, count(prompt[:start + len(word)]) - empty))
    return positions


def _templated_positions(clip, prompt: str, words: list[str]) -> list[int]:
    """The subject words' token positions after a chat template's dropped head (see the module docstring)."""
    return _words_in_prompt(prompt, words, lambda text: sum(len(chunk) for chunk in _chunks(clip.tokenize(text))))


def _kept_template_positions(clip, prompt: str, words: list[str], tokens: dict) -> list[int]:
    """The subject words' positions under a kept chat template, from the text tokens' end (module docstring)."""
    (name,) = (key for key in tokens if key in KEPT_TEMPLATE)

    def count(text: str, **kwargs) -> int:  # tokens of the templated text, the tokenizer's padding left out
        return sum(len(chunk) for chunk in clip.tokenize(text, min_length=1, **kwargs)[name])

    head = count(clip.tokenizer.llama_template.split("{}")[0], llama_template="{}")  # with a start token, if any
    length = sum(len(chunk) for chunk in tokens[name])  # the conditioning's tokens, the tokenizer's padding in
    return [head + p - length for p in _words_in_prompt(prompt, words, count)]


def _offset(clip, tokens: dict) -> int:
    """Where T5's tokens start in the conditioning: after CLIP-L/G's on SD3 (its tokenizer gives ``g`` and ``t5xxl``;
    Flux's gives no ``g``), unless the loaded text encoder holds neither CLIP."""
    if "t5xxl" not in tokens or "g" not in tokens:
        return 0
    model = getattr(clip, "cond_stage_model", None)
    if model is not None and getattr(model, "clip_l", None) is None and getattr(model, "clip_g", None) is None:
        return 0
    return sum(len(chunk) for chunk in tokens["g"])


def subject_positions(clip, prompt: str, subject: str) -> list[int]:
    """Positions in the prompt's token sequence of every token of every subject word (from its end, negative,
    under Flux.2's kept templates).

    Raises:
        KeyError: a subject word does not occur in the prompt (the message names it).
    """
    tokens = clip.tokenize(prompt, return_word_ids=True)
    if any(key in tokens for key in KEPT_TEMPLATE):
        positions = _kept_template_positions(clip, prompt, subject.replace(",", " ").split(), tokens)
        if not positions:
            raise KeyError(subject)
        return sorted(set(positions))
    if any(key in tokens for key in TEMPLATED):
        positions = _templated_positions(clip, prompt, subject.replace(",", " ").split())
        if not positions:
            raise KeyError(subject)
        return sorted(set(positions))
    sequence = [entry[0] for chunk in _chunks(tokens) for entry in chunk]
    positions: list[int] = []
    for word in subject.replace(",", " ").split():
        needle = _word_tokens(clip, word)
        hits = [i for i in range(len(sequence) - len(needle) + 1)
                if needle and all(keys_equal(sequence[i + j], needle[j]) for j in range(len(needle)))]
        if not hits:
            raise KeyError(word)
        for i in hits:
            positions.extend(range(i, i + len(needle)))
    if not positions:
        raise KeyError(subject)
    offset = _offset(clip, tokens)
    return sorted({offset + p for p in positions})


def subject_problem(clip, prompt: str, subject: str) -> Problem | None:
    """Why the subject cannot be found in the prompt, or None."""
    if not subject.strip():
        return "is empty.", "write the subject's word as it appears in the prompt, e.g. 'dog' or 'embedding:my_cat'."
    try:
        subject_positions(clip, prompt, subject)
    except KeyError as e:
        word = e.args[0]
        if word.startswith(EMBEDDING) and not _word_tokens(clip, word):
            name = word[len(EMBEDDING):]
            return (f"'{word}': ComfyUI finds no embedding file '{name}' (models/embeddings), so neither the prompt "
                    "nor the subject has a token for it.",
                    f"put {name}.safetensors (or .pt, .bin) into models/embeddings, or fix the name after "
                    "'embedding:' in both the prompt and the subject.")
        return (f"'{word}' is not in the prompt '{prompt}'.",
                "write the subject word exactly as in the prompt (the class noun for DreamBooth, e.g. 'dog' in "
                "'a sks dog'; the embedding for Textual Inversion, e.g. 'embedding:my_cat').")
    return None
