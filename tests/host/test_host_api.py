"""host_api's adapters, each against the pinned host's real call (ComfyUI 0.3.64) and against a stand-in with the
newer shape, written from ComfyUI's public source at the commit each test names (no newer host runs here)."""

from __future__ import annotations

import pytest
import torch

from comfyui_layout_retouch import host_api
from comfyui_layout_retouch.headless import executor
from comfyui_layout_retouch.personalize import modifier_tokens

TOKEN = "<new1>"


def newer_try_get_embedding(self, embedding_name: str):
    """``SDTokenizer._try_get_embedding`` as Comfy-Org/ComfyUI has it at commit
    443393b48e19da8601fb947eea05b5d57574cc7a (comfy/sd1_clip.py): the cleaned name is returned too, and text from
    the first ``<`` or ``[`` on is left over (so the host itself would not find ``<new1>``)."""
    import re

    from comfy.sd1_clip import load_embed

    split_embed = embedding_name.split()
    embedding_name = split_embed[0]
    leftover = " ".join(split_embed[1:])
    match = re.search(r"[<\[]", embedding_name)
    if match is not None:
        leftover = embedding_name[match.start():] + (" " + leftover if leftover else "")
        embedding_name = embedding_name[:match.start()]
    embed = load_embed(embedding_name, self.embedding_directory, self.embedding_size, self.embedding_key)
    if embed is None:
        stripped = embedding_name.strip(",")
        if len(stripped) < len(embedding_name):
            embed = load_embed(stripped, self.embedding_directory, self.embedding_size, self.embedding_key)
            return (embed, embedding_name, f"{embedding_name[len(stripped):]} {leftover}")
    return (embed, embedding_name, leftover)


def newer_words(tokenizer, text: str) -> list:
    """The embedding branch of the newer ``tokenize_with_weights`` (same commit): ``embed, name, leftover =
    self._try_get_embedding(...)``, three values unpacked; what each ``embedding:`` word becomes."""
    found = []
    for word in text.split():
        if word.startswith(tokenizer.embedding_identifier):
            embed, name, leftover = tokenizer._try_get_embedding(word[len(tokenizer.embedding_identifier):])
            found.append((name, embed, leftover))
    return found


@pytest.fixture
def vectors():
    return torch.randn(2, 768, generator=torch.Generator().manual_seed(3))


def test_the_embedding_lookup_in_0_3_64s_shape(comfy, tiny, vectors):
    """The real tokenizer: two values, and a prompt with the token encodes through ComfyUI's own tokenize."""
    clip = modifier_tokens.with_modifier_tokens(tiny.clip, {TOKEN: vectors})
    inner = clip.tokenizer.clip_l
    assert inner.embedding_lookup_size == 2
    embed, leftover = inner._try_get_embedding(f"{TOKEN} vase")
    assert torch.equal(embed, vectors) and leftover == "vase"
    tokens = clip.tokenize(f"a {TOKEN} vase")["l"][0]
    assert sum(isinstance(t, torch.Tensor) for t, _ in tokens) == 2  # the token's two vectors, in ComfyUI's batch
    assert len(inner._try_get_embedding("no_such_embedding")) == 2  # what is not ours: the host's own answer


def test_the_embedding_lookup_in_the_newer_shape(comfy, tiny, vectors, monkeypatch):
    """A tokenizer whose lookup returns three values, as newer ComfyUI's: the modifier token answers in three too
    (the 2-value answer of before raised ValueError in the newer tokenize), and other names reach the host."""
    base = type(tiny.clip.tokenizer.clip_l)
    newer = type("NewerSDTokenizer", (base,), {"_try_get_embedding": newer_try_get_embedding})
    monkeypatch.setattr(tiny.clip.tokenizer.clip_l, "__class__", newer)
    clip = modifier_tokens.with_modifier_tokens(tiny.clip, {TOKEN: vectors})
    inner = clip.tokenizer.clip_l
    assert isinstance(inner, newer) and inner.embedding_lookup_size == 3
    [(name, embed, leftover)] = newer_words(inner, f"a embedding:{TOKEN} vase")
    assert name == TOKEN and torch.equal(embed, vectors) and leftover == ""
    assert newer_words(inner, "embedding:no_such_embedding") == [("no_such_embedding", None, "")]


def test_an_embedding_lookup_of_another_shape_is_named():
    with pytest.raises(host_api.HostShapeError, match="returns 4 values; this pack knows 2 .* and 3"):
        host_api.embedding_lookup_size(lambda name: (None, name, "", 0))


class _Stand:
    """What an executor keeps of its arguments."""

    def __init__(self, server, **kwargs):
        self.server, self.kwargs = server, kwargs


class NewerPromptExecutor(_Stand):
    """``execution.PromptExecutor``'s constructor as Comfy-Org/ComfyUI has it at commit
    04e2a914334246661a77665aa14068a0670e3321 (execution.py): ``cache_args`` beside ``cache_type`` (and an asset
    manager); ``execute_async`` reads ``cache_args["ram"]`` and ``cache_args["ram_inactive"]`` unguarded."""

    def __init__(self, server, cache_type=False, cache_args=None, asset_manager=None):
        super().__init__(server, cache_type=cache_type, cache_args=cache_args)

    def execute(self, prompt, prompt_id, extra_data={}, execute_outputs=[]):  # noqa: B006 (the host's signature)
        args = self.kwargs["cache_args"]
        return int(args["ram"] * 1024**3), int(args["ram_inactive"] * 1024**3)


class OlderPromptExecutor(_Stand):
    """ComfyUI 0.3.64's constructor (execution.py): ``cache_size``, no ``cache_args``."""

    def __init__(self, server, cache_type=False, cache_size=None):
        super().__init__(server, cache_type=cache_type, cache_size=cache_size)


def test_the_executor_in_both_shapes(comfy):
    import execution

    server = executor._Server()
    newer = host_api.prompt_executor(server, NewerPromptExecutor)
    assert newer.kwargs["cache_type"] == execution.CacheType.CLASSIC
    assert newer.execute({}, "id") == (0, 0)  # the keys the newer execute reads are there (0: the classic cache)
    older = host_api.prompt_executor(server, OlderPromptExecutor)
    assert older.kwargs == {"cache_type": execution.CacheType.CLASSIC, "cache_size": None}
    real = host_api.prompt_executor(server)  # 0.3.64's own class
    assert isinstance(real, execution.PromptExecutor) and real.cache_type == execution.CacheType.CLASSIC


def test_the_real_executor_runs_a_prompt(comfy, tiny_files):
    """The pinned host's executor, built by the adapter, runs a graph (what headless/, eval and bench use)."""
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_vanilla.safetensors"}},
              "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
              "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}
    outputs = executor.execute(prompt)
    assert list(outputs) == ["4"] and outputs["4"]["images"]


class StandInQuantized(torch.Tensor):
    """What newer ComfyUI's ``cast_bias_weight`` may return for a quantized layer (Comfy-Org/ComfyUI commit
    0271a469fe29524fafe5872b737123d65a63e5fc, comfy/ops.py: ``post_cast`` dequantizes only where the dtypes differ):
    a tensor whose storage is quantized (fp8 e4m3fn here, with a scale) and whose values come from ``dequantize``."""

    scale: float

    def dequantize(self) -> torch.Tensor:
        return self.as_subclass(torch.Tensor).to(torch.float32) * self.scale


def fp8_linear(seed: int = 0):
    import comfy.ops

    gen = torch.Generator().manual_seed(seed)
    linear = comfy.ops.manual_cast.Linear(8, 12)
    linear.weight = torch.nn.Parameter((torch.randn(12, 8, generator=gen) * 0.3).to(torch.float8_e4m3fn),
                                       requires_grad=False)
    linear.bias = torch.nn.Parameter(torch.randn(12, generator=gen).to(torch.float8_e4m3fn), requires_grad=False)
    return linear


def test_a_linear_layers_weights_dense_in_0_3_64s_shape(comfy):
    """The real cast_bias_weight on fp8 e4m3fn weights (on the CPU): float32 values, sliceable by column, and what
    the layer itself computes."""
    linear, x = fp8_linear(), torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    weight, bias = host_api.dense_linear(linear, x)
    assert weight.dtype == bias.dtype == torch.float32
    assert torch.equal(weight, linear.weight.to(torch.float32)) and torch.equal(bias, linear.bias.to(torch.float32))
    part = slice(4, 8)
    assert torch.equal(torch.nn.functional.linear(x, weight[part], bias[part]), linear(x)[:, part])


def test_a_linear_layers_weights_dense_in_the_newer_shape(comfy, monkeypatch):
    """A cast that hands back the quantized weight itself: its values are dequantized before any slice."""
    import comfy.ops

    linear, x = fp8_linear(), torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    quantized = torch.Tensor._make_subclass(StandInQuantized, linear.weight.data)
    quantized.scale = 0.5

    def newer_cast(s, input=None, *args, **kwargs):
        return quantized, s.bias.to(input.dtype)

    monkeypatch.setattr(comfy.ops, "cast_bias_weight", newer_cast)
    weight, bias = host_api.dense_linear(linear, x)
    assert type(weight) is torch.Tensor and weight.dtype == torch.float32
    assert torch.equal(weight, linear.weight.to(torch.float32) * 0.5)  # the values, not the fp8 storage's bytes
    assert torch.equal(weight[4:8], (linear.weight.to(torch.float32) * 0.5)[4:8])
