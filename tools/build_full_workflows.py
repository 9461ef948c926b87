"""Writes the full two-stage workflows (UI format), one per kind of personalized model and family.

Run: python tools/build_full_workflows.py workflows/
"""
import sys
from pathlib import Path

from ui_workflow import WF, labels, mask_section

M, C, V = ("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")
COND = [("CONDITIONING", "CONDITIONING")]
LAT, IMG, MASK = ("LATENT", "LATENT"), ("IMAGE", "IMAGE"), ("MASK", "MASK")
STR = [("STRING", "STRING")]
SCENE = "a photo of a {} floating in a swimming pool, top view"


# Per family: the base checkpoint, the file names the notes ask for, the image size and the layers.
FAMILIES = {
    "sd1": {"base": ("v1-5-pruned-emaonly.safetensors", "plain SD 1.5"), "prefix": "my_subject", "size": 512,
            "layers": "output 6-11"},
    "sdxl": {"base": ("sd_xl_base_1.0.safetensors", "SDXL base 1.0"), "prefix": "my_subject_sdxl", "size": 1024,
             "layers": "auto"},
}


def build(kind: str, family: str = "sd1") -> WF:
    w = WF()
    f = FAMILIES[family]
    base, base_name, size, layers = *f["base"], f["size"], f["layers"]
    subject = {"dreambooth": "sks vase", "lora": "sks vase", "embedding": "embedding:my_vase"}[kind]
    word = "embedding:my_vase" if kind == "embedding" else "vase"
    # --- models ---
    if kind == "dreambooth":
        van = w.node("CheckpointLoaderSimple", (0, 0), [base], outputs=[M, C, V],
                     title=f"Vanilla model ({base_name})")
        per = w.node("CheckpointLoaderSimple", (0, 200), [f"{f['prefix']}_dreambooth.safetensors"], outputs=[M, C, V],
                     title="Personalized model (DreamBooth)")
        per_model, per_clip, vae = (per, 0), (per, 1), (per, 2)
    elif kind == "lora":
        van = w.node("CheckpointLoaderSimple", (0, 0), [base], outputs=[M, C, V],
                     title=f"Vanilla model ({base_name})")
        lora = w.node("LoraLoader", (0, 200), [f"{f['prefix']}_lora.safetensors", 1.0, 1.0],
                      inputs=[("model", "MODEL"), ("clip", "CLIP")], outputs=[M, C], title="Personalized model (LoRA)")
        w.link(van, 0, lora, "model"); w.link(van, 1, lora, "clip")
        per_model, per_clip, vae = (lora, 0), (lora, 1), (van, 2)
    else:
        van = w.node("CheckpointLoaderSimple", (0, 0), [base], outputs=[M, C, V],
                     title=f"Model ({base_name}; the embedding is in the personalized prompt)", size=(360, 120))
        per_model, per_clip, vae = (van, 0), (van, 1), (van, 2)
    # --- texts (column 1) and their encodings (column 2) ---
    vp_text = w.node("PrimitiveStringMultiline", (0, 420), [SCENE.format("red vase")], outputs=STR,
                     title="Vanilla prompt (no token)", size=(360, 110))
    pp_text = w.node("PrimitiveStringMultiline", (0, 560), [SCENE.format(subject)], outputs=STR,
                     title="Personalized prompt (with token)", size=(360, 110))
    rp_text = w.node("PrimitiveStringMultiline", (0, 700), [f"a photo of {subject}"], outputs=STR,
                     title="Reference prompt", size=(360, 90))
    word_node = w.node("PrimitiveString", (0, 820), [word], outputs=STR, title="Subject word (for the mask)",
                       size=(360, 60))
    enc = lambda pos, title, clip, text=None: _encode(w, pos, title, clip, text)  # noqa: E731
    vp = enc((420, 0), "Vanilla positive", (van, 1), vp_text)
    vn = enc((420, 130), "Vanilla negative", (van, 1))
    pp = enc((420, 260), "Personalized positive (y_p)", per_clip, pp_text)
    pn = enc((420, 390), "Personalized negative", per_clip)
    rp = enc((420, 700), "Reference positive (y_r)", per_clip, rp_text)
    # --- stage 1 (column 3): it records the layout's attention, and its trajectory is the layout path ---
    lat = w.node("EmptyLatentImage", (820, 0), [size, size, 1], outputs=[LAT], size=(340, 110))
    sb = w.node("LR_StepBlendedKSampler", (820, 150), [0, "randomize", 50, 5, 7.5, "ddim", "ddim_uniform", 1.0, True,
                                                       layers],
                inputs=[("vanilla_model", "MODEL"), ("personalized_model", "MODEL"), ("vanilla_positive", "CONDITIONING"),
                        ("vanilla_negative", "CONDITIONING"), ("personalized_positive", "CONDITIONING"),
                        ("personalized_negative", "CONDITIONING"), ("latent_image", "LATENT")],
                outputs=[("layout_latent", "LATENT"), ("trajectory", "LR_INVERSION"), ("start_latent", "LATENT")],
                size=(340, 420))
    w.link(van, 0, sb, "vanilla_model"); w.link(*per_model, sb, "personalized_model")
    for src, name in ((vp, "vanilla_positive"), (vn, "vanilla_negative"), (pp, "personalized_positive"),
                      (pn, "personalized_negative"), (lat, "latent_image")):
        w.link(src, 0, sb, name)
    lay_dec = w.node("VAEDecode", (1200, 0), [], inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[IMG],
                     size=(300, 50))
    w.link(sb, 0, lay_dec, "samples"); w.link(*vae, lay_dec, "vae")
    lay_save = w.node("SaveImage", (1200, 120), ["layout_retouch/layout"], inputs=[("images", "IMAGE")],
                      title="Layout image (stage 1)", size=(300, 330))
    w.link(lay_dec, 0, lay_save, "images")
    # --- the reference's inversion (columns 3-4, under stage 1), recording its attention ---
    ref_img = w.node("LoadImage", (820, 720), ["reference.png", "image"], outputs=[IMG, MASK],
                     title="Reference photo of the subject", size=(340, 320))
    ref_scale = w.node("ImageScale", (1200, 720), ["lanczos", size, size, "center"], inputs=[("image", "IMAGE")],
                       outputs=[IMG], title=f"Reference to {size}x{size}", size=(300, 130))
    ref_enc = w.node("VAEEncode", (1200, 890), [], inputs=[("pixels", "IMAGE"), ("vae", "VAE")], outputs=[LAT],
                     size=(300, 50))
    w.link(ref_img, 0, ref_scale, "image"); w.link(ref_scale, 0, ref_enc, "pixels"); w.link(*vae, ref_enc, "vae")
    # It records what the swap reads of a reference: the self-attention's input (keys and values projected from it).
    ref_inv = w.node("LR_DDIMInversion", (1200, 990), [50, "ddim_uniform", "ddim", 1.0, True, layers, labels.RECORD_REFERENCE],
                     inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("latent", "LATENT"),
                             ("negative", "CONDITIONING")],
                     outputs=[("inverted_latent", "LATENT"), ("inversion", "LR_INVERSION")],
                     title="DDIM Inversion (reference, computed once per photo)", size=(300, 250))
    # The swap's prompts for the reference: then the recorded attention is exactly what its rows would compute.
    w.link(*per_model, ref_inv, "model"); w.link(rp, 0, ref_inv, "positive"); w.link(ref_enc, 0, ref_inv, "latent")
    w.link(pn, 0, ref_inv, "negative")
    # --- stage 2: masks (columns 4-5) ---
    ada = mask_section(w, (1560, 0), per_model, (sb, 1), per_clip, pp_text, word_node, lay_dec, None,
                       SCENE.format(subject), word)
    # --- stage 2: swap (fast mode on stage 1's path) and the retouch sampler (columns 6-8) ---
    swap = w.node("LR_MultiSourceAttentionSwap", (2440, 0), [10, 30, layers, layers,
                  labels.FAST, labels.CACHE_RAM],
                  inputs=[("model", "MODEL"), ("reference_inversion", "LR_INVERSION"),
                          ("layout_inversion", "LR_INVERSION"), ("reference_positive", "CONDITIONING"),
                          ("reference_negative", "CONDITIONING"), ("layout_positive", "CONDITIONING"),
                          ("layout_negative", "CONDITIONING"), ("mask", "MASK")],
                  outputs=[("model", "MODEL")], size=(380, 360))
    w.link(*per_model, swap, "model"); w.link(ref_inv, 1, swap, "reference_inversion")
    w.link(sb, 1, swap, "layout_inversion"); w.link(rp, 0, swap, "reference_positive")
    w.link(pn, 0, swap, "reference_negative"); w.link(pp, 0, swap, "layout_positive")
    w.link(pn, 0, swap, "layout_negative"); w.link(ada, 0, swap, "mask")
    ks = w.node("KSamplerAdvanced", (2860, 0), ["disable", 0, "fixed", 50, 7.5, "ddim", "ddim_uniform", 0, 10000,
                "disable"], inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                ("latent_image", "LATENT")], outputs=[LAT], title="KSampler (Advanced): retouch", size=(340, 360))
    w.link(swap, 0, ks, "model"); w.link(rp, 0, ks, "positive"); w.link(pn, 0, ks, "negative")
    w.link(sb, 2, ks, "latent_image")
    dec = w.node("VAEDecode", (3240, 0), [], inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[IMG],
                 size=(300, 50))
    save = w.node("SaveImage", (3240, 120), ["layout_retouch/final"], inputs=[("images", "IMAGE")],
                  title="Final image (stage 2)", size=(400, 430))
    w.link(ks, 0, dec, "samples"); w.link(*vae, dec, "vae"); w.link(dec, 0, save, "images")
    # --- notes and groups ---
    how = {"dreambooth": "Put the base model and your DreamBooth checkpoint in `models/checkpoints`.",
           "lora": "Put the base model in `models/checkpoints` and your LoRA in `models/loras`.",
           "embedding": "Put the base model in `models/checkpoints` and your embedding in `models/embeddings`; "
                        "the personalized prompt and the subject word use `embedding:name`."}[kind]
    if family == "sdxl":
        how += (" SDXL at 1024x1024: the attention layers are `auto`, SDXL's decoder at 1/2 of the latent (output "
                "3-5); the records take about 3 GiB of RAM for the reference and 5.3 GiB for stage 1 at 50 steps "
                "(README, SDXL).")
    w.note("**Layout-and-Retouch** (two stages). " + how + " A Segment Anything checkpoint goes in `models/sams`. "
           "Write the prompts in the four text boxes on the left; the reference photo goes in the Load Image node.",
           (0, -260), size=(780, 120))
    w.note("**Stage 1, layout:** plain SD draws the first `lambda1` steps (5 of 50; 3 for hard layouts), so pose and "
           "place follow the prompt; the personalized model draws the rest. It records the layout's attention "
           "(`record_attention`) and its `trajectory` is the retouch's layout path: no layout inversion.",
           (820, -260), size=(680, 120))
    w.note("**Stage 2, retouch** (fast mode): the swapped model starts from stage 1's `start_latent`, copies the "
           "layout's attention for `lambda2` steps (structure), then takes the reference's self-attention (identity), "
           "and from `mask_start` keeps the layout outside the adaptive mask M. Both sources' attention is read from "
           "what stage 1 and the reference's inversion recorded. The reference's inversion runs once per photo: "
           "ComfyUI's cache reuses it across seeds and prompts. Keep steps and scheduler equal everywhere.",
           (1560, -260), size=(1300, 120))
    w.group("Prompts and models", (-20, -120, 800, 1060), color="#444")
    w.group("Stage 1: step-blended layout", (800, -120, 720, 740), color="#3f789e")
    w.group("Reference inversion (once per photo)", (800, 620, 720, 660), color="#8A8")
    w.group("Stage 2: retouch", (1540, -120, 2120, 1380), color="#8A8")
    return w


def _encode(w, pos, title, clip, text_node=None):
    n = w.node("CLIPTextEncode", pos, ["blurry, low quality" if text_node is None else ""],
               inputs=[("clip", "CLIP")], outputs=COND, title=title, size=(340, 100),
               widget_inputs=[("text", "STRING")] if text_node is not None else ())
    w.link(*clip, n, "clip")
    if text_node is not None:
        w.link(text_node, 0, n, "text")
    return n


if __name__ == "__main__":
    out = Path(sys.argv[1])
    for kind in ("dreambooth", "lora", "embedding"):
        build(kind).save(out / f"layout_retouch_full_{kind}.json")
    for kind in ("dreambooth", "lora"):
        build(kind, "sdxl").save(out / f"layout_retouch_full_sdxl_{kind}.json")
