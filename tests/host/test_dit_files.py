"""Chroma and Qwen-Image through ComfyUI's stock loaders, each test once per family: a diffusion model in the
family's file format at the real width, loaded by ``comfy.sd.load_diffusion_model_state_dict`` (UNETLoader's
function: detection, model config, weights), and a LoRA file in a format the family's LoRAs ship in through
LoraLoaderModelOnly. The pack recognises the family, its blocks and its text width, and the swap patches the chosen
block of the LoRA model.

ComfyUI's detection fixes both widths (``comfy/model_detection.py``): Chroma 3072 wide with 24 heads and a 5-layer,
5120-wide ``distilled_guidance_layer``; Qwen-Image 24 heads of 128 reading Qwen2.5-VL's 3584-wide text. So the files
hold one block of each kind at that width, in bf16 (ComfyUI stores them so and computes in float32 on the CPU, its
manual cast): Chroma 0.63 billion parameters (the guidance layer alone 0.26), Qwen-Image 0.36. A Chroma call runs its
guidance layer over 344 rows whatever the image size, about 2 s on 2 cores: the run's cost, so 2 steps, one latent
inverted for both sources and 4 image tokens."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

STEPS = 2
SAMPLER, SCHEDULER, CFG = "euler", "simple", 1.0
N_TXT = 8  # text tokens: a short prompt's
RANK = 4


@dataclass(frozen=True)
class FileSpec:
    """A family's file as ComfyUI reads it, and what the pack should make of it."""

    config: str  # the full-size config in benchmark.random_models
    depths: dict  # its block counts, cut to one block of each kind
    model_config: str  # ComfyUI's model config class for it (comfy/supported_models.py)
    family: str  # the pack's family name (attention/families.py)
    text_width: int  # the text encoder's width: T5-XXL's, Qwen2.5-VL's
    extra: dict  # what the family's conditioning carries besides the tokens
    file_keys: tuple[str, ...]  # keys of the real files (no prefix), by which ComfyUI detects the family
    lora_modules: tuple[str, ...]  # the module names the LoRA covers end with these
    lora_format: tuple[str, str, str]  # the LoRA's key prefix, its up and down names
    blocks: frozenset  # the file's blocks, as the pack names them


SPECS = {
    "chroma": FileSpec(
        "CHROMA_FULL", {"depth": 1, "depth_single_blocks": 1}, "Chroma", "Chroma", 4096,
        {"pooled_output": None, "guidance": 0.0},
        ("double_blocks.0.img_attn.qkv.weight", "double_blocks.0.img_attn.norm.key_norm.scale",
         "single_blocks.0.linear1.weight", "distilled_guidance_layer.norms.0.scale",
         "distilled_guidance_layer.layers.4.in_layer.weight", "img_in.weight", "txt_in.weight"),
        (".qkv", ".proj", ".linear1"), ("diffusion_model.", "lora_up", "lora_down"),  # ComfyUI's own LoRA format
        frozenset({("double", 0), ("single", 0)})),
    "qwen_image": FileSpec(
        "QWEN_IMAGE_FULL", {"num_layers": 1}, "QwenImage", "Qwen-Image", 3584, {"pooled_output": None},
        ("transformer_blocks.0.attn.to_q.weight", "transformer_blocks.0.attn.add_k_proj.weight",
         "transformer_blocks.0.img_mod.1.weight", "txt_norm.weight", "txt_in.weight", "img_in.weight"),
        (".to_q", ".to_k", ".to_v", ".to_out.0", ".add_q_proj", ".add_k_proj", ".add_v_proj", ".to_add_out"),
        ("transformer.", "lora_B", "lora_A"),  # diffusers' (PEFT) format, as Qwen-Image trainers save
        frozenset({("double", 0)})),
}


def lora_state_dict(sd: dict[str, torch.Tensor], spec: FileSpec, seed: int) -> dict[str, torch.Tensor]:
    """A rank-``RANK`` LoRA in bf16 over the 2-D weights of ``sd`` whose module ends with one of the spec's modules,
    keyed ``<prefix><module>.<up>.weight``, ``.<down>.weight``, ``.alpha``."""
    prefix, up, down = spec.lora_format
    gen = torch.Generator().manual_seed(seed)
    lora = {}
    for key, tensor in sd.items():
        module = key.removesuffix(".weight")
        if module != key and module.endswith(spec.lora_modules) and tensor.ndim == 2:
            lora[f"{prefix}{module}.{down}.weight"] = (torch.randn(RANK, tensor.shape[1], generator=gen) * 0.05).bfloat16()
            lora[f"{prefix}{module}.{up}.weight"] = (torch.randn(tensor.shape[0], RANK, generator=gen) * 0.05).bfloat16()
            lora[f"{prefix}{module}.alpha"] = torch.tensor(float(RANK))
    return lora


@pytest.fixture(scope="module", params=list(SPECS))
def loaded(request, comfy, tmp_path_factory):
    """The family's file loaded and the LoRA over it, prompts of the family's shapes; freed when the family's tests
    end. Of the file's state dict (which the loader empties as it loads) only its key names are kept."""
    import comfy_host
    import safetensors.torch
    from comfy.sd import load_diffusion_model_state_dict

    from comfyui_layout_retouch.benchmark import random_models

    name, spec = request.param, SPECS[request.param]
    sd = random_models.dit_state_dict(dict(getattr(random_models, spec.config), **spec.depths), 1, dtype=torch.bfloat16,
                                      as_file=True)
    root = tmp_path_factory.mktemp(f"models_{name}")
    (root / "loras").mkdir()
    lora_name = f"tiny_{name}_lora.safetensors"
    safetensors.torch.save_file(lora_state_dict(sd, spec, 6), str(root / "loras" / lora_name))
    comfy_host.register(root, ("loras",))
    keys = set(sd)
    vanilla = load_diffusion_model_state_dict(sd, model_options={"dtype": torch.bfloat16})
    del sd
    personalized = comfy.LoraLoaderModelOnly().load_lora_model_only(vanilla, lora_name, 1.0)[0]

    def encode(text: str):
        import zlib

        gen = torch.Generator().manual_seed(zlib.crc32(text.encode()))
        return [[torch.randn(1, N_TXT, spec.text_width, generator=gen), dict(spec.extra)]]

    state = {"spec": spec, "keys": keys, "vanilla": vanilla, "personalized": personalized,
             "reference": encode("a photo of sks vase"), "layout": encode("a sks vase on a beach"), "empty": encode("")}
    yield state
    state.clear()
    del vanilla, personalized
    comfy_host.free_memory()


def lora_keys(loaded) -> set[str]:
    """The model's keys of the weights the LoRA covers."""
    return {"diffusion_model." + k for k in loaded["keys"]
            if k.endswith(".weight") and k.removesuffix(".weight").endswith(loaded["spec"].lora_modules)}


def test_detected_as_the_family_from_its_file_keys(loaded):
    from comfyui_layout_retouch.attention.families import family_of
    from comfyui_layout_retouch.attention.layers import attention_blocks, auto_layers, text_width

    spec, model = loaded["spec"], loaded["vanilla"]
    assert set(spec.file_keys) <= loaded["keys"]
    dm = model.model.diffusion_model
    # Every key of the file is a module's, through the host's own conversion (0.33.0 renames BFL's "scale"s)
    assert set(dm.state_dict()) == set(model.model.model_config.process_unet_state_dict(dict.fromkeys(loaded["keys"])))
    assert type(model.model.model_config).__name__ == spec.model_config
    assert {p.dtype for p in dm.parameters()} == {torch.bfloat16}
    for m in (model, loaded["personalized"]):
        assert family_of(m).name == spec.family
        assert attention_blocks(m) == spec.blocks
        assert auto_layers(m).blocks == frozenset({("double", 0)})  # of the family's auto blocks, those it has
        assert text_width(m) == spec.text_width


def test_the_lora_loads_as_patches_on_its_keys(loaded):
    from comfy.lora import calculate_weight

    vanilla, personalized = loaded["vanilla"], loaded["personalized"]
    keys = lora_keys(loaded)
    assert len(keys) == {"Chroma": 5, "QwenImage": 8}[loaded["spec"].model_config]  # both streams' and linear1
    assert set(personalized.patches) == keys and not vanilla.patches
    assert personalized.model is vanilla.model  # patches on a clone, not a copy of the weights
    key = min(keys, key=lambda k: vanilla.model.state_dict()[k].numel())
    weight = vanilla.model.state_dict()[key].float()
    patched = calculate_weight(personalized.patches[key], weight.clone(), key)
    assert float((patched - weight).abs().max()) > 1e-3  # the LoRA acts on the weights it covers


def test_the_swap_on_the_lora_model(comfy, loaded):
    """The inversion to sigma 1 (one latent as both sources, with their own prompts), the swap on the ``auto`` block
    (a layout step, then a reference step blended with a mask), the retouch from the layout's inverted latent:
    finite, and not the unswapped LoRA model's. The LoRA model the caller holds keeps its options, and the loaded
    model's weights are the file's again once ComfyUI unloads it."""
    from comfy.model_management import unload_all_models
    from comfy.sample import sample_custom
    from comfy.samplers import sampler_object

    model = loaded["personalized"]
    key = min(lora_keys(loaded), key=lambda k: model.model.state_dict()[k].numel())
    file_weight = model.model.state_dict()[key].clone()
    lat = {"samples": torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))}
    inverted, lay = comfy.NODE_CLASS_MAPPINGS["LR_DDIMInversion"].execute(
        model=model, positive=loaded["empty"], latent=lat, steps=STEPS, scheduler=SCHEDULER, sampler_name=SAMPLER,
        cfg=CFG).result
    options = repr(model.model_options)
    y, p = loaded["reference"], loaded["layout"]
    patched = comfy.NODE_CLASS_MAPPINGS["LR_MultiSourceAttentionSwap"].execute(
        model=model, reference_inversion=lay, layout_inversion=lay, reference_positive=y, reference_negative=y,
        layout_positive=p, layout_negative=p, lambda2=1, mask_start=1, layout_layers="auto", reference_layers="auto",
        source_paths="recorded", reference_cache="off", mask=torch.full((1, 32, 32), 0.5)).result[0]
    assert set(patched.model_options["transformer_options"]["patches_replace"]["dit"]) == {("double_block", 0)}
    out = comfy.KSamplerAdvanced().sample(patched, "disable", 0, STEPS, CFG, SAMPLER, SCHEDULER, y, y, inverted, 0,
                                          10000, "disable")[0]["samples"]
    # The same start without the swap: the inverted latent as a flow sampler's noise at sigma 1.
    plain = sample_custom(model, lay.latents[-1], CFG, sampler_object(SAMPLER), lay.sigmas.flip(0), y, y,
                          torch.zeros_like(lay.latents[0]), seed=0)
    assert torch.isfinite(out).all() and torch.isfinite(plain).all()
    assert float((out.reshape(plain.shape) - plain).abs().max() / plain.abs().max()) > 1e-3  # Chroma 0.26, Qwen 0.06
    assert repr(model.model_options) == options
    assert not torch.equal(model.model.state_dict()[key], file_weight)  # loaded with the LoRA merged in
    unload_all_models()
    assert torch.equal(model.model.state_dict()[key], file_weight)
