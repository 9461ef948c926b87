"""host_api's adapters, each against the real call of the host that has its shape (ComfyUI 0.3.64 or 0.33.0: a test
of one host's shape is marked for it and runs there), and against a stand-in only for a shape neither host has,
written from ComfyUI's public source at the commit the test names."""

from __future__ import annotations

import pytest
import torch

from comfyui_layout_retouch import host_api
from comfyui_layout_retouch.headless import executor
from comfyui_layout_retouch.personalize import modifier_tokens

TOKEN = "<new1>"


@pytest.fixture
def vectors():
    return torch.randn(2, 768, generator=torch.Generator().manual_seed(3))


@pytest.mark.host("0.3.64")
def test_the_embedding_lookup_in_0_3_64s_shape(comfy, tiny, vectors):
    """The real tokenizer answers ``(embed, leftover)``: the modifier token answers in two too, and a prompt with
    the token encodes through ComfyUI's own tokenize."""
    clip = modifier_tokens.with_modifier_tokens(tiny.clip, {TOKEN: vectors})
    inner = clip.tokenizer.clip_l
    assert inner.embedding_lookup_size == 2
    embed, leftover = inner._try_get_embedding(f"{TOKEN} vase")
    assert torch.equal(embed, vectors) and leftover == "vase"
    tokens = clip.tokenize(f"a {TOKEN} vase")["l"][0]
    assert sum(isinstance(t, torch.Tensor) for t, _ in tokens) == 2  # the token's two vectors, in ComfyUI's batch
    assert len(inner._try_get_embedding("no_such_embedding")) == 2  # what is not ours: the host's own answer


@pytest.mark.host("0.33.0")
def test_the_embedding_lookup_in_0_33_0s_shape(comfy, tiny, vectors):
    """The real tokenizer answers ``(embed, name, leftover)`` and its tokenize unpacks three (the 2-value answer of
    before raised ValueError there): the modifier token answers in three, a prompt with it encodes through
    ComfyUI's own tokenize, and other names reach the host."""
    clip = modifier_tokens.with_modifier_tokens(tiny.clip, {TOKEN: vectors})
    inner = clip.tokenizer.clip_l
    assert inner.embedding_lookup_size == 3
    embed, name, leftover = inner._try_get_embedding(f"{TOKEN} vase")
    assert torch.equal(embed, vectors) and name == TOKEN and leftover == "vase"
    tokens = clip.tokenize(f"a {TOKEN} vase")["l"][0]
    assert sum(isinstance(t, torch.Tensor) for t, _ in tokens) == 2
    assert len(inner._try_get_embedding("no_such_embedding")) == 3 and \
        inner._try_get_embedding("no_such_embedding")[0] is None


def test_an_embedding_lookup_of_another_shape_is_named():
    with pytest.raises(host_api.HostShapeError, match="returns 4 values; this pack knows 2 .* and 3"):
        host_api.embedding_lookup_size(lambda name: (None, name, "", 0))


@pytest.mark.parametrize("argument", [pytest.param("cache_size", marks=pytest.mark.host("0.3.64")),
                                      pytest.param("cache_args", marks=pytest.mark.host("0.33.0"))])
def test_the_executor_in_its_hosts_shape(comfy, argument):
    """The host's own ``PromptExecutor`` (0.3.64: ``cache_size``; 0.33.0: ``cache_args``, whose ``ram`` and
    ``ram_inactive`` its ``execute`` reads unguarded), built by the adapter with the classic cache."""
    import inspect

    import execution

    assert argument in inspect.signature(execution.PromptExecutor).parameters
    real = host_api.prompt_executor(executor._Server())
    assert isinstance(real, execution.PromptExecutor)
    if argument == "cache_args":
        assert real.cache_args == host_api.CLASSIC_CACHE_ARGS and real.cache_type == execution.CacheType.CLASSIC
    else:
        assert real.cache_type == execution.CacheType.CLASSIC


def test_the_real_executor_runs_a_prompt(comfy, tiny_files):
    """The host's executor, built by the adapter, runs a graph (what headless/, eval and bench use)."""
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


def test_a_dit_config_gets_what_the_hosts_parameters_require(comfy):
    """A hand-written Flux.1 or Chroma config builds on the running host: the fields its parameter class requires
    and the config lacks (0.33.0: ``txt_ids_dims``, Chroma's ``vec_in_dim``) filled as its detection fills them for
    such a file, none added where the host does not take them (0.3.64)."""
    import dataclasses

    from comfy.ldm.chroma.model import ChromaParams
    from comfy.ldm.flux.model import FluxParams

    from comfyui_layout_retouch.benchmark.random_models import CHROMA_TINY, FLUX_TINY

    for config, params in ((FLUX_TINY, FluxParams), (CHROMA_TINY, ChromaParams)):
        filled = host_api.dit_config(config)
        fields = {f.name for f in dataclasses.fields(params)}
        assert set(filled) - set(config) == {"txt_ids_dims", "vec_in_dim"} & fields - set(config)
        params(**{k: v for k, v in filled.items() if k != "image_model"})  # the host's class takes it
    assert host_api.dit_config({"image_model": "qwen_image", "num_layers": 2}) == {"image_model": "qwen_image",
                                                                                    "num_layers": 2}


def test_a_dit_config_the_host_needs_more_of_is_refused(comfy, monkeypatch):
    from comfyui_layout_retouch.benchmark.random_models import FLUX_TINY

    monkeypatch.setattr(host_api, "DETECTED", {})
    with pytest.raises(host_api.HostShapeError, match=r"FluxParams requires \['theta'.*which this pack does not know"):
        host_api.dit_config({k: v for k, v in FLUX_TINY.items() if k != "theta"})


def qwen_image_rope_table():
    """The RoPE table a tiny Qwen-Image passes its blocks (what its ``("double_block", 0)`` patch receives), and
    the call's token count (text, then a 4x4 image grid)."""
    from comfyui_layout_retouch.benchmark.random_models import QWEN_IMAGE_TINY, dit_patcher, dit_state_dict

    model = dit_patcher(QWEN_IMAGE_TINY, dit_state_dict(QWEN_IMAGE_TINY, 1))
    seen = {}

    def patch(args, extra):
        seen["pe"] = args["pe"]
        return extra["original_block"](args)

    model.set_model_patch_replace(patch, "dit", "double_block", 0)
    dm = model.model.diffusion_model
    context = torch.randn(1, 5, dm.txt_in.in_features)
    x = torch.randn(1, 16, 1, 8, 8)
    dm(x, torch.tensor([0.5]), context, transformer_options=model.model_options["transformer_options"])
    return seen["pe"], 5 + 16


@pytest.mark.parametrize("layout", [pytest.param("[n, tokens, 1, d/2, 2, 2]", marks=pytest.mark.host("0.3.64")),
                                    pytest.param("[n, 1, tokens, d/2, 2, 2]", marks=pytest.mark.host("0.33.0"))])
def test_qwen_images_rope_table_in_fluxs_layout(comfy, layout):
    """The real table of the host's Qwen-Image (0.3.64: tokens on axis 1; 0.33.0: Flux's, tokens on axis 2) comes
    back in Flux's layout, the same numbers."""
    pe, tokens = qwen_image_rope_table()
    axis = 1 if layout.startswith("[n, tokens") else 2
    assert pe.shape[axis] == tokens and pe.shape[3 - axis] == 1
    table = host_api.flux_rope_layout(pe)
    assert table.shape == (1, 1, tokens, *pe.shape[3:]) and torch.equal(table.flatten(), pe.transpose(1, 2).flatten()
                                                                          if axis == 1 else pe.flatten())


def test_a_rope_table_of_another_layout_is_refused():
    with pytest.raises(host_api.HostShapeError, match=r"RoPE table of shape \(1, 21, 16, 2, 2\)"):
        host_api.flux_rope_layout(torch.zeros(1, 21, 16, 2, 2))
