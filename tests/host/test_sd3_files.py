"""SD3 through ComfyUI's own loader: a tiny SD3.5-style MMDiT (2 joint blocks, RMS-normed q and k, block 0 with
SD3.5 Medium's second, image-only attention) as a state dict in SD3's single-file format (``model.diffusion_model.``
and SD3's key names), loaded by ``comfy.sd.load_diffusion_model_state_dict``, whose detection infers its config; the
family is recognised and the swap patches its blocks, acting on the joint attention and passing the image-only
one through."""

from __future__ import annotations

import pytest
import torch

STEPS = 3
SAMPLER, SCHEDULER, CFG = "euler", "simple", 1.0
N_TXT, IMG = 8, 16  # 8 text tokens (a short prompt's cost); an 8x8 latent is 4x4 image tokens


def encode(text: str):
    """SD3's conditioning shapes: CLIP-L/G and T5 tokens at 4096 wide, CLIP-L and CLIP-G pooled (2048)."""
    import zlib

    gen = torch.Generator().manual_seed(zlib.crc32(text.encode()))
    return [[torch.randn(1, N_TXT, 4096, generator=gen), {"pooled_output": torch.randn(1, 2048, generator=gen)}]]


@pytest.fixture(scope="module")
def file_sd():
    from comfyui_layout_retouch.benchmark.random_models import SD3_TINY, dit_state_dict

    return {"model.diffusion_model." + k: v for k, v in dit_state_dict(SD3_TINY, 3).items()}


@pytest.fixture(scope="module")
def model(comfy, file_sd):
    import comfy.sd

    return comfy.sd.load_diffusion_model_state_dict(dict(file_sd))


def invert(comfy, model, seed: int, **record):
    node = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"]
    lat = {"samples": torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(seed))}
    return node.execute(model=model, positive=encode(""), latent=lat, steps=STEPS, scheduler=SCHEDULER,
                        sampler_name=SAMPLER, cfg=CFG, **record).result


def swap(comfy, model, ref, lay, layers: str, **options):
    y = encode("a photo of sks vase")
    settings = dict(lambda2=1, mask_start=2, source_paths="recorded", reference_cache="off") | options
    return comfy.NODE_CLASS_MAPPINGS["LR_MultiSourceAttentionSwap"].execute(
        model=model, reference_inversion=ref, layout_inversion=lay, reference_positive=y, reference_negative=y,
        layout_positive=y, layout_negative=y, layout_layers=layers, reference_layers=layers, **settings).result[0]


def retouch(comfy, model, inverted):
    y = encode("a photo of sks vase")
    return comfy.KSamplerAdvanced().sample(model, "disable", 0, STEPS, CFG, SAMPLER, SCHEDULER, y, y, inverted, 0, 10000,
                                           "disable")[0]["samples"]


def logging_attention(model, calls: list):
    """A clone of ``model`` whose attention override (the one the pack's patches chain) logs every call's
    ``(tokens, rows, k, v, out)``."""
    def log(func, q, k, v, heads, *args, **kwargs):
        out = func(q, k, v, heads, *args, **kwargs)
        calls.append((q.shape[1], q.shape[0], k, v, out))
        return out

    logged = model.clone()
    logged.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = log
    return logged


def test_detected_as_sd3_from_its_file_keys(model, file_sd):
    from comfyui_layout_retouch.attention.families import family_of
    from comfyui_layout_retouch.attention.layers import attention_blocks, auto_layers, text_width
    from comfyui_layout_retouch.benchmark.random_models import SD3_TINY
    from comfyui_layout_retouch.records import base_model

    for key in ("joint_blocks.0.x_block.attn.qkv.weight", "joint_blocks.0.x_block.attn.ln_k.weight",
                "joint_blocks.0.x_block.attn2.qkv.weight", "joint_blocks.1.context_block.adaLN_modulation.1.weight",
                "context_embedder.weight", "y_embedder.mlp.0.weight", "pos_embed"):  # SD3.5's names
        assert "model.diffusion_model." + key in file_sd
    assert model is not None and base_model(model) == "SD3" and family_of(model).name == "SD3"
    detected = model.model.model_config.unet_config
    assert {k: detected.get(k) for k in SD3_TINY} == SD3_TINY  # what the tests' tiny SD3 is built from
    dm = model.model.diffusion_model
    assert dm.hidden_size == 128 and dm.num_heads == 2 and dm.joint_blocks[0].x_block.x_block_self_attn
    assert not dm.joint_blocks[1].x_block.x_block_self_attn and dm.joint_blocks[1].context_block.pre_only
    assert attention_blocks(model) == {("double", 0), ("double", 1)}
    assert auto_layers(model).blocks == frozenset({("double", 0), ("double", 1)}) and text_width(model) == 4096


def test_auto_is_stable_flows_vital_layers_at_the_models_depth():
    from comfyui_layout_retouch.attention.sd3 import vital_blocks

    assert sorted(i for _, i in vital_blocks(24)) == [0, 7, 8, 11, 12, 22, 23]  # SD3 Medium, SD3.5 Medium
    assert sorted(i for _, i in vital_blocks(38)) == [0, 1, 11, 12, 17, 19, 35, 36, 37]  # SD3.5 Large


def test_the_swap_patches_its_blocks(comfy, model):
    (inverted, lay), (_, ref) = invert(comfy, model, 0), invert(comfy, model, 1)
    options = repr(model.model_options)
    patched = swap(comfy, model, ref, lay, "double 0, double 1", mask=torch.full((1, 64, 64), 0.5))
    assert set(patched.model_options["transformer_options"]["patches_replace"]["dit"]) == {
        ("double_block", 0), ("double_block", 1)}
    from comfy.sample import sample_custom
    from comfy.samplers import sampler_object

    out = retouch(comfy, patched, inverted)
    y = encode("a photo of sks vase")  # the same start without the swap: a flow sampler's noise at sigma 1
    plain = sample_custom(model, lay.latents[-1], CFG, sampler_object(SAMPLER), lay.sigmas.flip(0), y, y,
                          torch.zeros_like(lay.latents[0]), seed=0)
    assert torch.isfinite(out).all() and float((out - plain).abs().max()) > 1e-4
    assert repr(model.model_options) == options


def test_the_image_only_attention_passes_through_the_swap(comfy, model):
    """Block 0's joint attention is split into the sources' rows and the target's (their keys swapped); its
    image-only attention comes through whole, every row of the call at once, as block 1's unswapped joint one."""
    (inverted, lay), (_, ref) = invert(comfy, model, 0), invert(comfy, model, 1)
    calls = []
    retouch(comfy, swap(comfy, logging_attention(model, calls), ref, lay, "double 0", lambda2=0), inverted)
    assert len(calls) == 4 * STEPS  # per model call: block 0 joint (sources, target), block 0 image-only, block 1
    for step in range(STEPS):
        (t0, sources, *_), (t1, target, *_), (t2, whole, *_), (t3, block_1, *_) = calls[4 * step:4 * step + 4]
        assert (t0, t1, t2, t3) == (N_TXT + IMG, N_TXT + IMG, IMG, N_TXT + IMG)
        assert whole == block_1 == sources + target and target == 1


def test_a_record_of_a_block_with_two_attentions_keeps_the_joint_ones(comfy, model):
    """Recording the layout path on block 0: its kept attention output is the joint attention's image tokens (not
    the image-only attention's), and its kept input projects to the joint attention's image keys and values."""
    from comfyui_layout_retouch.attention.sd3 import SD3Projection
    from comfyui_layout_retouch.records import KEYS, SELF_IN, SELF_OUT, VALUES

    calls = []
    _, traj = invert(comfy, logging_attention(model, calls), 0, record_attention=True, attention_layers="double 0",
                     record_for="layout")
    kept = traj.attention.tensors
    joint = [(k, v, out) for _, _, k, v, out in calls[0::3]]  # each model call: block 0 joint, image-only, block 1
    assert all(tokens == IMG for tokens, *_ in calls[1::3])
    assert {key[0] for key in kept} == set(range(STEPS)) and {key[3] for key in kept} == {SELF_IN, SELF_OUT}
    project = SD3Projection(model.model.diffusion_model)
    assert len(joint) == STEPS + 1  # the inversion's first call, near sigma 0, starts no step
    for step in range(STEPS):  # steps count along the sampling schedule: the inversion's last call is step 0
        k, v, out = joint[STEPS - step]
        assert torch.equal(kept[(step, 0, ("double", 0, 0), SELF_OUT)], out[:, N_TXT:])
        kept_in = kept[(step, 0, ("double", 0, 0), SELF_IN)]
        for kind, want in ((KEYS, k[:, N_TXT:]), (VALUES, v[:, N_TXT:].flatten(2))):  # SD3's values: [n, t, heads, d]
            assert torch.allclose(project(("double", 0, 0), kind, kept_in, None), want, rtol=1e-5, atol=1e-6), kind


def test_the_subject_s_t5_tokens_count_after_the_clip_tokens(comfy):
    """SD3's conditioning is CLIP-L/G's 77 tokens, then T5's (ComfyUI's SD3ClipModel): the subject's positions are
    T5's own, shifted past them; with no CLIP loaded they are T5's own."""
    from comfy.text_encoders.sd3_clip import SD3Tokenizer

    from comfyui_layout_retouch.attention.tokens import subject_positions

    class Clip:
        def __init__(self, clip_l) -> None:
            self.tokenizer = SD3Tokenizer()
            self.cond_stage_model = type("SD3ClipModel", (), {"clip_l": clip_l, "clip_g": clip_l})()

        def tokenize(self, text, return_word_ids=False):
            return self.tokenizer.tokenize_with_weights(text, return_word_ids)

    prompt = "a sks dog on a beach"
    t5 = [entry[0] for entry in Clip(None).tokenize(prompt)["t5xxl"][0]]
    dog = [entry[0] for entry in Clip(None).tokenize("dog")["t5xxl"][0]]
    dog = dog[:dog.index(1)]  # up to T5's end token
    own = subject_positions(Clip(None), prompt, "dog")
    assert [t5[i] for i in own] == dog
    assert subject_positions(Clip(object()), prompt, "dog") == [77 + i for i in own]
