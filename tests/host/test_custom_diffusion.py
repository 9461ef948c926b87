"""Custom Diffusion loader on the real host: diffusers' file formats, the weights ComfyUI patches in, the
modifier token in prompts, the caller's model and CLIP unchanged, and the errors.

The files are written as diffusers' ``train_custom_diffusion.py`` writes them (``unet.save_attn_procs``,
``save_new_embed``): keys named by the attention processor, for the tiny SD1.x UNet's 16 cross-attention
layers, with to_k/to_v = the tiny model's weight + a known delta. The diffusers -> ComfyUI layer names are
written out here by hand (SD1.5's layout), not taken from the code under test.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path

import pytest
import safetensors.torch
import torch

from comfyui_layout_retouch.attention.tokens import subject_positions

NODE_ID = "LR_CustomDiffusionLoader"
TOKEN = "<new1>"
# diffusers' attention module -> ComfyUI's SpatialTransformer, for SD1.5's block layout.
LAYERS = {
    **{f"down_blocks.{b}.attentions.{a}": f"input_blocks.{1 + 3 * b + a}.1" for b in range(3) for a in range(2)},
    "mid_block.attentions.0": "middle_block.1",
    **{f"up_blocks.{u}.attentions.{a}": f"output_blocks.{3 * u + a}.1" for u in range(1, 4) for a in range(3)},
}


def diffusers_key(layer: str, proj: str) -> str:
    return f"{layer}.transformer_blocks.0.attn2.processor.{proj}_custom_diffusion.weight"


def comfy_key(layer: str, proj: str) -> str:
    return f"diffusion_model.{LAYERS[layer]}.transformer_blocks.0.attn2.{proj}.weight"


def save(tensors: dict, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt"})  # as diffusers does
    else:
        torch.save(tensors, str(path))


@pytest.fixture(scope="module")
def files(comfy, tiny, tmp_path_factory):
    """A concept in models/custom_diffusion/cat (safetensors), the same in .bin, and broken files."""
    import folder_paths

    root = tmp_path_factory.mktemp("custom_diffusion")
    base = {k: v.clone() for k, v in tiny.vanilla.model.state_dict().items()}
    gen = torch.Generator().manual_seed(17)
    trained = {}  # ComfyUI key -> the file's matrix
    sd = {}
    for layer in LAYERS:
        for proj in ("to_k", "to_v"):
            w = base[comfy_key(layer, proj)].float()
            trained[comfy_key(layer, proj)] = w + 0.1 * torch.randn(w.shape, generator=gen)
            sd[diffusers_key(layer, proj)] = trained[comfy_key(layer, proj)]
    vectors = {t: torch.randn(768, generator=gen) * 0.02 for t in (TOKEN, "<new2>")}
    save(sd, root / "cat" / "pytorch_custom_diffusion_weights.safetensors")
    for t, v in vectors.items():
        save({t: v}, root / "cat" / f"{t}.safetensors")
    # The .bin variant keeps diffusers' empty dicts for the parameterless self-attention processors.
    empties = {f"{layer}.transformer_blocks.0.attn1.processor": {} for layer in LAYERS}
    save({**sd, **empties}, root / "cat_bin" / "pytorch_custom_diffusion_weights.bin")
    save({TOKEN: vectors[TOKEN]}, root / "cat_bin" / f"{TOKEN}.bin")
    # SDXL's second down level: 640 wide, 2048-wide text, and a second transformer SD1.x lacks.
    save({"down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_k_custom_diffusion.weight":
          torch.zeros(640, 2048)}, root / "sdxl" / "pytorch_custom_diffusion_weights.safetensors")
    save({"down_blocks.1.attentions.0.transformer_blocks.1.attn2.processor.to_k_custom_diffusion.weight":
          torch.zeros(320, 768)}, root / "deeper" / "pytorch_custom_diffusion_weights.safetensors")
    save(sd, root / "wide" / "pytorch_custom_diffusion_weights.safetensors")
    save({TOKEN: torch.zeros(1024)}, root / "wide" / f"{TOKEN}.safetensors")
    save({"lora_unet_x.lora_up.weight": torch.zeros(4, 2), "lora_unet_x.lora_down.weight": torch.zeros(2, 4)}, root / "other" / "lora.safetensors")
    (root / "other" / "corrupt.bin").write_bytes(b"not a torch file")
    folder_paths.add_model_folder_path("custom_diffusion", str(root), is_default=True)
    # The same vector as a stock Textual Inversion embedding, for ComfyUI's own 'embedding:' path, in a folder of
    # its own (a CLIP reads the embedding folders registered when it was loaded: see stock_clip).
    embeddings = tmp_path_factory.mktemp("cd_embeddings")
    safetensors.torch.save_file({"emb_params": vectors[TOKEN][None]}, str(embeddings / "cd_new1.safetensors"))
    return {"root": root, "base": base, "trained": trained, "vectors": vectors, "embeddings": embeddings}


def stock_clip(clip, embeddings: Path):
    """``clip`` whose tokenizer finds ``embedding:`` names in ``embeddings`` alone (ComfyUI's SDTokenizer keeps the
    folder list it was made with, whatever other tests register later)."""
    out = clip.clone()
    out.tokenizer = copy.deepcopy(clip.tokenizer)
    out.tokenizer.clip_l.embedding_directory = [str(embeddings)]
    return out


def load(comfy, tiny, weights="cat/pytorch_custom_diffusion_weights.safetensors", token=TOKEN, strength=1.0):
    node = comfy.NODE_CLASS_MAPPINGS[NODE_ID]
    return node.execute(model=tiny.vanilla, clip=tiny.clip, weights_name=weights, modifier_token=token,
                        strength=strength).result


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal byte for byte (an unused, uninitialised tensor may hold NaN, which torch.equal calls unequal)."""
    return (a.shape == b.shape and a.dtype == b.dtype
            and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))


def patched_weights(model) -> dict[str, torch.Tensor]:
    """The UNet weights once ComfyUI has loaded the model with its patches (then unloaded again).

    Through ComfyUI's model management, as a sampler loads it: a bare ``patch_model()`` finds the
    weights marked patched while another patcher of the same UNet (an earlier test's) is loaded.
    """
    import comfy.model_management as mm

    mm.load_models_gpu([model], force_full_load=True)
    try:
        return {k: v.detach().clone() for k, v in model.model.state_dict().items()}
    finally:
        mm.unload_all_models()


def test_trained_weights_land_and_nothing_else(comfy, tiny, files, measured):
    before = {k: v.clone() for k, v in tiny.vanilla.model.state_dict().items()}
    caller_patches = dict(tiny.vanilla.patches)
    model, _ = load(comfy, tiny)
    assert set(model.patches) == set(files["trained"])  # 16 layers x (to_k, to_v)
    weights = patched_weights(model)
    errors = [float((weights[k] - w).abs().max()) for k, w in files["trained"].items()]
    measured(f"custom diffusion: patched to_k/to_v vs the file's matrices, max abs error {max(errors):.2e}")
    assert max(errors) < 1e-6
    assert all(same_bytes(weights[k], before[k]) for k in before if k not in files["trained"])
    after = tiny.vanilla.model.state_dict()
    assert all(same_bytes(after[k], before[k]) for k in before)  # the caller's weights, after unpatching
    assert tiny.vanilla.patches == caller_patches


@pytest.mark.parametrize("strength", [0.0, 0.5])
def test_strength_scales_the_change(comfy, tiny, files, strength):
    weights = patched_weights(load(comfy, tiny, strength=strength)[0])
    for key, trained in files["trained"].items():
        expected = files["base"][key] + strength * (trained - files["base"][key])
        if strength == 0.0:
            assert torch.equal(weights[key], files["base"][key])
        else:
            torch.testing.assert_close(weights[key], expected, atol=1e-6, rtol=0)


def test_bin_format_reads_the_same(comfy, tiny, files):
    model_st, clip_st = load(comfy, tiny)
    model_bin, clip_bin = load(comfy, tiny, weights="cat_bin/pytorch_custom_diffusion_weights.bin")
    assert set(model_bin.patches) == set(model_st.patches)
    for key in model_st.patches:
        assert torch.equal(model_bin.patches[key][0][1][1][0], model_st.patches[key][0][1][1][0])
    assert clip_bin.tokenize("a <new1> cat")["l"][0][2][0].equal(clip_st.tokenize("a <new1> cat")["l"][0][2][0])


def test_token_encodes_to_the_learned_embedding(comfy, tiny, files):
    caller_tokenizer = tiny.clip.tokenizer
    caller_tokens = tiny.clip.tokenize("a <new1> cat")
    caller_clip_sd = {k: v.clone() for k, v in tiny.clip.cond_stage_model.state_dict().items()}
    _, clip = load(comfy, tiny)
    vector = files["vectors"][TOKEN]

    tokens = clip.tokenize("a <new1> cat")["l"][0]
    plain = tiny.clip.tokenize("a cat")["l"][0]
    assert torch.equal(tokens[2][0], vector)  # [start, a, <new1>, cat, end, pad...]
    assert [t for t, _ in tokens[:2] + tokens[3:5]] == [t for t, _ in plain[:4]]
    embeds = clip.cond_stage_model.clip_l.process_tokens([[t for t, _ in tokens]], torch.device("cpu"))[0]
    assert torch.equal(embeds[0, 2], vector)

    encode = comfy.CLIPTextEncode().encode
    ours = encode(clip, "a photo of a <new1> cat, on a beach")[0][0][0]
    stock = encode(stock_clip(tiny.clip, files["embeddings"]), "a photo of a embedding:cd_new1 cat, on a beach")[0][0][0]
    assert torch.equal(ours, stock)  # ComfyUI's own Textual Inversion path with the same vector
    assert torch.equal(encode(clip, "a cat on a beach")[0][0][0], encode(tiny.clip, "a cat on a beach")[0][0][0])
    weighted = clip.tokenize("a (<new1>:1.2) cat")["l"][0]
    assert torch.equal(weighted[2][0], vector) and weighted[2][1] == pytest.approx(1.2)
    assert subject_positions(clip, "a photo of a <new1> cat", "<new1>") == [5]  # the Cross-Attention Mask's subject

    # The caller's CLIP: same tokenizer object, of its own class, reading '<new1>' as plain text; same weights.
    assert tiny.clip.tokenizer is caller_tokenizer and clip.tokenizer is not caller_tokenizer
    assert type(tiny.clip.tokenizer.clip_l) is importlib.import_module("comfy.sd1_clip").SDTokenizer
    assert tiny.clip.tokenize("a <new1> cat") == caller_tokens
    assert all(isinstance(t, int) for t, _ in caller_tokens["l"][0])
    after = tiny.clip.cond_stage_model.state_dict()
    assert all(same_bytes(after[k], v) for k, v in caller_clip_sd.items())


def test_two_tokens(comfy, tiny, files):
    _, clip = load(comfy, tiny, token="<new1>+<new2>")
    tokens = clip.tokenize("<new2> and <new1>")["l"][0]
    assert torch.equal(tokens[1][0], files["vectors"]["<new2>"]) and torch.equal(tokens[3][0], files["vectors"][TOKEN])


def test_chained_loaders_keep_both_tokens(comfy, tiny, files):
    node = comfy.NODE_CLASS_MAPPINGS[NODE_ID]
    model, first = load(comfy, tiny)
    _, second = node.execute(model=model, clip=first, weights_name="cat/pytorch_custom_diffusion_weights.safetensors",
                             modifier_token="<new2>", strength=1.0).result
    tokens = second.tokenize("<new1> <new2>")["l"][0]
    assert torch.equal(tokens[1][0], files["vectors"][TOKEN]) and torch.equal(tokens[2][0], files["vectors"]["<new2>"])
    assert all(isinstance(t, int) for t, _ in first.tokenize("<new2>")["l"][0])  # the first copy is unchanged


def test_empty_token_keeps_the_clip(comfy, tiny, files):
    model, clip = load(comfy, tiny, token="")
    assert clip is tiny.clip and model is not tiny.vanilla


@pytest.mark.parametrize("weights,token,said", [
    ("cat/<new1>.safetensors", TOKEN, r"input 'weights_name': '<new1>.safetensors' holds no Custom Diffusion weights "
     r".*looks like a modifier token.*Fix: choose pytorch_custom_diffusion_weights.safetensors"),
    ("other/lora.safetensors", TOKEN, r"input 'weights_name': .*no Custom Diffusion weights.*looks like a LoRA"),
    ("other/corrupt.bin", TOKEN, r"input 'weights_name': 'corrupt.bin' cannot be read"),
    ("sdxl/pytorch_custom_diffusion_weights.safetensors", TOKEN,
     r"input 'weights_name': .*does not fit this SD15 model \(trained for 2048-wide text: SDXL; this model's is 768\): "
     r"down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight is \[640, 2048\] in the file but \[320, 768\] "
     r"in the model.*Fix: connect the base model"),
    ("deeper/pytorch_custom_diffusion_weights.safetensors", TOKEN,
     r"input 'weights_name': .*has layers this SD15 model lacks: "
     r"down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k.weight"),
    ("cat/pytorch_custom_diffusion_weights.safetensors", "<new9>",
     r"input 'modifier_token': no file for the modifier token '<new9>'.*\(it holds <new1>.safetensors, "
     r"<new2>.safetensors\).*Fix: put the <new9>.safetensors"),
    ("cat/pytorch_custom_diffusion_weights.safetensors", "../x",
     r"input 'modifier_token': '../x' is not a token name.*Fix: write the token"),
    ("wide/pytorch_custom_diffusion_weights.safetensors", TOKEN,
     r"input 'clip': takes 768-wide token vectors \(SD1.x\), but the modifier token '<new1>' is 1024 wide "
     r"\(SD2.x\).*Fix: connect the CLIP"),
])
def test_errors_name_input_and_fix(comfy, tiny, files, weights, token, said):
    with pytest.raises(ValueError, match="Custom Diffusion Loader: " + said):
        load(comfy, tiny, weights=weights, token=token)


def test_checked_at_validation(comfy, files):
    node = comfy.NODE_CLASS_MAPPINGS[NODE_ID]
    assert node.validate_inputs(weights_name="cat/pytorch_custom_diffusion_weights.safetensors") is True
    message = node.validate_inputs(weights_name="nope.safetensors")
    assert message.startswith("Custom Diffusion Loader: input 'weights_name': 'nope.safetensors' is not in ")
    assert "Fix: put pytorch_custom_diffusion_weights.safetensors" in message
