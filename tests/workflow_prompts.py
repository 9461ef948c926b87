"""Shipped workflows as API prompts for the host tests: converted from the UI format, shrunk to the tiny models.

Shared by ``host/test_workflows.py`` (the shipped workflows run in-process), ``e2e/test_browser.py`` (every
one loads in the real frontend; :data:`EXECUTED_IN_BROWSER` run there, through the server, and not again
in-process) and ``host/test_misuse_through_the_executor.py`` (its cases edit these prompts).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from comfyui_layout_retouch.headless import ui_format

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
SHIPPED = sorted(p.name for p in WORKFLOWS.glob("*.json"))
# Run through the server from the real frontend: one of each method, with the most nodes of each (the
# runner's tests run the first again, in-process). The others run in-process (host/test_workflows.py).
EXECUTED_IN_BROWSER = ("layout_retouch_compact_dreambooth.json", "pick_and_draw_lora.json")
# A compact workflow whose API prompt equals its full workflow's (tested) runs as that one, not again.
RUN_AS = {"layout_retouch_compact_sdxl_dreambooth.json": "layout_retouch_full_sdxl_dreambooth.json"}
EXECUTED_IN_PROCESS = tuple(name for name in SHIPPED if name not in EXECUTED_IN_BROWSER and name not in RUN_AS)
COMPACT = {"layout_retouch_compact_dreambooth.json": "layout_retouch_full_dreambooth.json", **RUN_AS}
EXPECTED_IMAGES = {  # per workflow run on the tiny models: (saved images, previews)
    "layout_retouch_stage1_layout.json": (1, 0),
    "layout_retouch_stage2_retouch.json": (1, 3),
    "layout_retouch_full_dreambooth.json": (2, 3),
    "layout_retouch_compact_dreambooth.json": (2, 3),
    "layout_retouch_compact_sdxl_dreambooth.json": (2, 3),
    "layout_retouch_full_lora.json": (2, 3),
    "layout_retouch_full_embedding.json": (2, 3),
    "layout_retouch_full_sdxl_dreambooth.json": (2, 3),
    "layout_retouch_full_sdxl_lora.json": (2, 3),
    "pick_and_draw_dreambooth.json": (1, 0),
    "pick_and_draw_lora.json": (1, 0),
    "pick_and_draw_embedding.json": (1, 0),
    "pick_and_draw_plain_sd.json": (1, 0),
    "layout_retouch_flux_stage1.json": (1, 0),
    "layout_retouch_full_flux_lora.json": (2, 3),
    "layout_retouch_full_chroma_lora.json": (2, 3),
    "layout_retouch_full_qwen_image_lora.json": (2, 3),
    "layout_retouch_full_sd3_lora.json": (2, 3),
}
# Flux's runs: the 64-wide tiny Flux and a Flux CLIP stand-in (T5-XXL cannot be tiny) in place of UNETLoader
# and DualCLIPLoader (both load for real in validation and in host/test_flux_files.py), the stock LoRA loader,
# VAE loader, text encoding and FluxGuidance as shipped.
FLUX_STAND_INS = {"UNETLoader": "LRTest_TinyFluxModel", "DualCLIPLoader": "LRTest_FluxTextEncoders"}


# The other DiT families' runs: the family's tiny model (comfy_host.TinyDiT) and a text stand-in with its own
# tokenizer in place of UNETLoader and the text loader; Qwen-Image's Wan 2.1 VAE at its real size (ComfyUI's
# VAE class from a random state dict of the real format); a LoRA over the tiny model through the stock loader.
DIT_WORKFLOWS = {"chroma": "layout_retouch_full_chroma_lora.json", "qwen_image": "layout_retouch_full_qwen_image_lora.json",
                 "sd3": "layout_retouch_full_sd3_lora.json"}
TEXT_LOADERS = ("CLIPLoader", "DualCLIPLoader", "TripleCLIPLoader")


def dit_builder():
    """tools/build_dit_workflows.py, whose table the DiT workflows' settings are checked against."""
    import importlib
    import sys

    tools = str(WORKFLOWS.parent / "tools")
    if tools not in sys.path:
        sys.path.insert(0, tools)
    return importlib.import_module("build_dit_workflows")


def dit_family(name: str) -> str | None:
    """The DiT family a shipped workflow runs (None: SD1.x, SDXL or Flux's)."""
    return next((family for family, workflow in DIT_WORKFLOWS.items() if workflow == name), None)


def write_dit_lora(path: Path, state_dict: dict, seed: int, rank: int = 4) -> None:
    """A LoRA over a DiT's attention projections (every 2-D weight of an attention or ``qkv``/``linear1``), keyed
    ``diffusion_model.<module>.lora_up/lora_down.weight`` as ComfyUI's LoRA loader maps any model's keys."""
    import safetensors.torch
    import torch

    gen = torch.Generator().manual_seed(seed)
    lora = {}
    for key, tensor in state_dict.items():
        if tensor.ndim == 2 and key.endswith(".weight") and ("attn" in key or "linear1" in key):
            base = "diffusion_model." + key[: -len(".weight")]
            lora[f"{base}.lora_down.weight"] = torch.randn(rank, tensor.shape[1], generator=gen) * 0.05
            lora[f"{base}.lora_up.weight"] = torch.randn(tensor.shape[0], rank, generator=gen) * 0.05
            lora[f"{base}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(lora, str(path))


def wan_vae():
    """Qwen-Image's VAE (Wan 2.1's, 16 channels, a time axis) through ComfyUI's own VAE class, random weights of its
    real shapes in fp16."""
    import comfy.ldm.wan.vae
    import comfy.sd
    import torch

    from comfyui_layout_retouch.benchmark.random_models import fill

    with torch.device("meta"):
        meta = comfy.ldm.wan.vae.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                        temperal_downsample=[False, True, True], dropout=0.0)
    return comfy.sd.VAE(sd=fill(meta, 9, store=torch.float16))


def register_dit_stand_ins(comfy, tiny_dit, loras: Path) -> list[str]:
    """Test nodes for ``tiny_dit``'s family in place of its loaders (class names ``LRTest_<family>_<Loader>``: one a
    family, or ComfyUI's cache would hand one family's model to the next), and its LoRA
    ``tiny_<family>_lora.safetensors`` written into ``loras`` (a registered folder). Returns the class names, for
    the caller to drop when done (the classes hold the models: a VAE of Wan 2.1's size)."""
    import comfy_host

    write_dit_lora(loras / f"tiny_{tiny_dit.name}_lora.safetensors", tiny_dit.vanilla.model.diffusion_model.state_dict(), 5)
    vae = wan_vae() if tiny_dit.name == "qwen_image" else None

    def node(value):
        class StandIn:
            RETURN_TYPES, FUNCTION, CATEGORY = (type(value).__name__.upper(),), "load", "testing"

            @classmethod
            def INPUT_TYPES(cls):  # noqa: N802  (ComfyUI's V1 node interface)
                return {"required": {}}

            def load(self):
                return (value,)
        return StandIn

    model, text = node(tiny_dit.vanilla), node(comfy_host.FluxTextStandIn(tiny_dit))
    model.RETURN_TYPES, text.RETURN_TYPES = ("MODEL",), ("CLIP",)
    prefix = f"LRTest_{tiny_dit.name}_"
    comfy.NODE_CLASS_MAPPINGS.update({f"{prefix}UNETLoader": model, **{f"{prefix}{k}": text for k in TEXT_LOADERS}})
    if vae is not None:
        comfy.NODE_CLASS_MAPPINGS[f"{prefix}VAELoader"] = node(vae)
        comfy.NODE_CLASS_MAPPINGS[f"{prefix}VAELoader"].RETURN_TYPES = ("VAE",)
    return [name for name in comfy.NODE_CLASS_MAPPINGS if name.startswith(prefix)]


def dit_stand_ins(prompt: dict, family: str) -> None:
    """``prompt``'s loaders swapped for :func:`register_dit_stand_ins`' nodes and files."""
    for node in prompt.values():
        kind = node["class_type"]
        if kind == "UNETLoader" or kind in TEXT_LOADERS or (kind == "VAELoader" and family == "qwen_image"):
            node["class_type"], node["inputs"] = f"LRTest_{family}_{kind}", {}
        elif kind == "VAELoader":
            node["inputs"]["vae_name"] = "tiny_flux_vae.safetensors"  # Flux's VAE: Chroma's, and 16 channels as SD3's
        elif kind == "LoraLoaderModelOnly":
            node["inputs"]["lora_name"] = f"tiny_{family}_lora.safetensors"


def register_flux_stand_ins(comfy, tiny_flux) -> None:
    """Register the test nodes :data:`FLUX_STAND_INS` names with the host (the tiny Flux, the text stand-in)."""
    import comfy_host

    class TinyFluxModel:
        RETURN_TYPES, FUNCTION, CATEGORY = ("MODEL",), "load", "testing"

        @classmethod
        def INPUT_TYPES(cls):  # noqa: N802  (ComfyUI's V1 node interface)
            return {"required": {}}

        def load(self):
            return (tiny_flux.vanilla,)

    class FluxTextEncoders:
        RETURN_TYPES, FUNCTION, CATEGORY = ("CLIP",), "load", "testing"

        @classmethod
        def INPUT_TYPES(cls):  # noqa: N802
            return {"required": {}}

        def load(self):
            return (comfy_host.FluxTextStandIn(tiny_flux),)

    comfy.NODE_CLASS_MAPPINGS.update({FLUX_STAND_INS["UNETLoader"]: TinyFluxModel,
                                      FLUX_STAND_INS["DualCLIPLoader"]: FluxTextEncoders})
CHECKPOINTS = {"Vanilla": "tiny_vanilla.safetensors", "Model": "tiny_vanilla.safetensors",
               "Personalized": "tiny_personalized.safetensors"}
XL_CHECKPOINTS = {"Vanilla": "tiny_xl_vanilla.safetensors", "Personalized": "tiny_xl_personalized.safetensors"}


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())


def convert(comfy, name: str) -> dict:
    return ui_format.ui_to_prompt(load(name), comfy.NODE_CLASS_MAPPINGS)


def knobs_folded(prompt: dict) -> dict:
    """``prompt`` with every input linked to an Int primitive (a compact workflow's knobs) set to its value,
    and the primitives gone."""
    values = {node_id: node["inputs"]["value"] for node_id, node in prompt.items()
              if node["class_type"] == "PrimitiveInt"}
    return {node_id: {**node, "inputs": {k: values[v[0]] if isinstance(v, list) and v[0] in values else v
                                         for k, v in node["inputs"].items()}}
            for node_id, node in prompt.items() if node_id not in values}


def shrink(prompt: dict, steps: int = 6, family: str | None = None) -> dict:
    """Swap in the tiny models, a small size and few steps, as a user would edit the graph."""
    sizes = {"EmptyLatentImage": {"width": 64, "height": 64}, "ImageScale": {"width": 64, "height": 64}}
    settings = {"LR_MultiSourceAttentionSwap": {"lambda2": 2, "mask_start": 4},
                "LR_CrossAttentionMask": {"steps_to_average": 3}, "LR_SAMLoader": {"sam_name": "tiny_sam.pth"},
                "LoraLoader": {"lora_name": "tiny_lora.safetensors"},
                # Pick-and-Draw at 6 steps: layout 0-1 (the template up to 1), appearance 2-4, one update a step.
                "LR_ReferencePalette": {"appearance_start": 2, "appearance_end": 4},
                "LR_PickAndDrawSampler": {"layout_start": 0, "layout_end": 1, "appearance_start": 2,
                                          "appearance_end": 4, "iterations": 1},
                "LR_LayoutTemplate": {"last_step": 1}, "LR_NullTextInversion": {"iterations": 2}}
    xl = any(node["class_type"] == "CheckpointLoaderSimple" and "sd_xl" in node["inputs"]["ckpt_name"]
             for node in prompt.values())
    flux = {"VAELoader": {"vae_name": "tiny_flux_vae.safetensors"},
            "LoraLoaderModelOnly": {"lora_name": "tiny_flux_lora_narrow.safetensors"},
            "EmptySD3LatentImage": {"width": 64, "height": 64}}
    if family is not None:
        dit_stand_ins(prompt, family)
        flux = {"EmptySD3LatentImage": flux["EmptySD3LatentImage"]}
    for node in prompt.values():
        if node["class_type"] in FLUX_STAND_INS:
            node["class_type"], node["inputs"] = FLUX_STAND_INS[node["class_type"]], {}
        node["inputs"].update(flux.get(node["class_type"], {}))
    for node in prompt.values():
        inputs, title, kind = node["inputs"], node["_meta"]["title"], node["class_type"]
        if kind == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = next(v for k, v in (XL_CHECKPOINTS if xl else CHECKPOINTS).items()
                                       if title.startswith(k))
        inputs.update(sizes.get(kind, {}))
        inputs.update(settings.get(kind, {}))
        if xl and kind == "LoraLoader":
            inputs["lora_name"] = "tiny_xl_lora.safetensors"
        for name, value in inputs.items():
            if isinstance(value, str) and "embedding:my_vase" in value:
                inputs[name] = value.replace("embedding:my_vase", "embedding:tiny_concept")
        if "steps" in inputs:
            inputs["steps"] = steps
        if "lambda1" in inputs:
            inputs["lambda1"] = 2
    return prompt


def write_input_images(comfy) -> None:
    folder = Path(comfy.folder_paths.get_input_directory())
    gen = np.random.default_rng(0)
    for name in ("reference.png", "layout.png"):
        Image.fromarray(gen.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(folder / name)


def images_of(comfy, outputs: dict, kind: str) -> list[np.ndarray]:
    folder = Path(comfy.folder_paths.get_output_directory() if kind == "output" else
                  comfy.folder_paths.get_temp_directory())
    return [np.asarray(Image.open(folder / i["subfolder"] / i["filename"]))
            for node in outputs.values() for i in node.get("images", []) if i["type"] == kind]
