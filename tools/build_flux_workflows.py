"""Writes the Flux workflows (UI format): stage 1 alone, and both stages with a Flux LoRA.

Run: python tools/build_flux_workflows.py workflows/
"""
import sys
from pathlib import Path

from ui_workflow import WF, labels

M, C, V = ("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")
COND = [("CONDITIONING", "CONDITIONING")]
LAT, IMG, MASK = ("LATENT", "LATENT"), ("IMAGE", "IMAGE"), ("MASK", "MASK")
STR = [("STRING", "STRING")]
SCENE = "a photo of a {} floating in a swimming pool, top view"
SIZE, STEPS = 1024, 28  # Flux.1-dev's usual size and step count
# The paper's 5, 10 and 30 of 50 steps (L&R B.1), scaled to 28 steps.
LAMBDA1, LAMBDA2, MASK_START = 3, 6, 17
GUIDANCE = 3.5  # FluxGuidance's default, Flux.1-dev's
FILES = {"unet": "flux1-dev.safetensors", "clip_l": "clip_l.safetensors", "t5": "t5xxl_fp16.safetensors",
         "vae": "ae.safetensors", "lora": "my_subject_flux_lora.safetensors"}


def models(w: WF, lora: bool):
    """The Flux loaders; returns (vanilla model, personalized model, clip, vae) as (node, slot)."""
    unet = w.node("UNETLoader", (0, 0), [FILES["unet"], "default"], outputs=[M], title="Vanilla model (Flux.1-dev)",
                  size=(360, 90))
    clip = w.node("DualCLIPLoader", (0, 130), [FILES["clip_l"], FILES["t5"], "flux", "default"], outputs=[C],
                  title="Text encoders (CLIP-L and T5-XXL)", size=(360, 130))
    vae = w.node("VAELoader", (0, 300), [FILES["vae"]], outputs=[V], title="Flux VAE", size=(360, 60))
    per = (unet, 0)
    if lora:
        node = w.node("LoraLoaderModelOnly", (0, 400), [FILES["lora"], 1.0], inputs=[("model", "MODEL")], outputs=[M],
                      title="Personalized model (Flux LoRA)", size=(360, 90))
        w.link(unet, 0, node, "model")
        per = (node, 0)
    return (unet, 0), per, (clip, 0), (vae, 0)


def encode(w: WF, pos, title: str, clip, text_node=None, text: str = ""):
    """CLIPTextEncode then FluxGuidance (cfg 1: the guidance is embedded, as Flux.1-dev's workflows do)."""
    enc = w.node("CLIPTextEncode", pos, [text], inputs=[("clip", "CLIP")], outputs=COND, title=title, size=(300, 90),
                 widget_inputs=[("text", "STRING")] if text_node is not None else ())
    w.link(*clip, enc, "clip")
    if text_node is not None:
        w.link(text_node, 0, enc, "text")
    guided = w.node("FluxGuidance", (pos[0] + 320, pos[1]), [GUIDANCE], inputs=[("conditioning", "CONDITIONING")],
                    outputs=COND, size=(240, 60))
    w.link(enc, 0, guided, "conditioning")
    return guided


def stage1(w: WF, vanilla, personalized, vp, pp, neg, x: int = 1000, record: bool = False):
    lat = w.node("EmptySD3LatentImage", (x, 0), [SIZE, SIZE, 1], outputs=[LAT], size=(300, 110))
    sb = w.node("LR_StepBlendedKSampler", (x, 150), [0, "randomize", STEPS, LAMBDA1, 1.0, "euler", "simple", 1.0,
                                                     record, "auto"],
                inputs=[("vanilla_model", "MODEL"), ("personalized_model", "MODEL"),
                        ("vanilla_positive", "CONDITIONING"), ("vanilla_negative", "CONDITIONING"),
                        ("personalized_positive", "CONDITIONING"), ("personalized_negative", "CONDITIONING"),
                        ("latent_image", "LATENT")],
                outputs=[("layout_latent", "LATENT"), ("trajectory", "LR_INVERSION"), ("start_latent", "LATENT")],
                size=(340, 440))
    w.link(*vanilla, sb, "vanilla_model"); w.link(*personalized, sb, "personalized_model")
    for src, name in ((vp, "vanilla_positive"), (neg, "vanilla_negative"), (pp, "personalized_positive"),
                      (neg, "personalized_negative"), (lat, "latent_image")):
        w.link(src, 0, sb, name)
    return sb


def build_stage1() -> WF:
    w = WF()
    vanilla, personalized, clip, vae = models(w, lora=True)
    vp = encode(w, (420, 0), "Vanilla prompt (no token)", clip, text=SCENE.format("red vase"))
    pp = encode(w, (420, 130), "Personalized prompt (with token)", clip, text=SCENE.format("sks vase"))
    neg = encode(w, (420, 260), "Negative (unused at cfg 1)", clip)
    sb = stage1(w, vanilla, personalized, vp, pp, neg)
    dec = w.node("VAEDecode", (1380, 0), [], inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[IMG],
                 size=(300, 50))
    save = w.node("SaveImage", (1380, 100), ["layout_retouch/flux_layout"], inputs=[("images", "IMAGE")],
                  title="Layout image (stage 1)", size=(400, 430))
    w.link(sb, 0, dec, "samples"); w.link(*vae, dec, "vae"); w.link(dec, 0, save, "images")
    w.note("**Stage 1 on Flux.1-dev** (Layout-and-Retouch's step-blended denoising): the vanilla Flux draws the first "
           f"`lambda1` steps ({LAMBDA1} of {STEPS}), so pose and place follow the prompt; your LoRA draws the rest. "
           f"Files: `models/diffusion_models/{FILES['unet']}`, `models/text_encoders/{FILES['clip_l']}` and "
           f"`{FILES['t5']}`, `models/vae/{FILES['vae']}`, your LoRA in `models/loras`. Flux's settings: euler, "
           "simple, cfg 1 with FluxGuidance 3.5 on the prompts.", (0, -200), size=(780, 140))
    w.group("Models and prompts", (-20, -40, 1000, 560), color="#444")
    w.group("Stage 1: step-blended layout", (980, -40, 820, 660), color="#3f789e")
    return w


def build_full_lora() -> WF:
    w = WF()
    vanilla, personalized, clip, vae = models(w, lora=True)
    pp_text = w.node("PrimitiveStringMultiline", (0, 540), [SCENE.format("sks vase")], outputs=STR,
                     title="Personalized prompt (with token)", size=(360, 110))
    word = w.node("PrimitiveString", (0, 680), ["vase"], outputs=STR, title="Subject word (for the mask)",
                  size=(360, 60))
    vp = encode(w, (420, 0), "Vanilla prompt (no token)", clip, text=SCENE.format("red vase"))
    pp = encode(w, (420, 130), "Personalized prompt (y_p)", clip, pp_text)
    rp = encode(w, (420, 260), "Reference prompt (y_r)", clip, text="a photo of sks vase")
    neg = encode(w, (420, 390), "Negative (unused at cfg 1)", clip)
    empty = encode(w, (420, 520), "Empty prompt (the reference's inversion)", clip)
    sb = stage1(w, vanilla, personalized, vp, pp, neg)
    lay_dec = w.node("VAEDecode", (1380, 0), [], inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[IMG],
                     size=(300, 50))
    lay_save = w.node("SaveImage", (1380, 100), ["layout_retouch/flux_layout"], inputs=[("images", "IMAGE")],
                      title="Layout image (stage 1)", size=(300, 330))
    w.link(sb, 0, lay_dec, "samples"); w.link(*vae, lay_dec, "vae"); w.link(lay_dec, 0, lay_save, "images")
    # --- the reference's inversion (once per photo; ComfyUI's cache keeps it) ---
    ref_img = w.node("LoadImage", (1000, 700), ["reference.png", "image"], outputs=[IMG, MASK],
                     title="Reference photo of the subject", size=(340, 320))
    ref_scale = w.node("ImageScale", (1380, 700), ["lanczos", SIZE, SIZE, "center"], inputs=[("image", "IMAGE")],
                       outputs=[IMG], title=f"Reference to {SIZE}x{SIZE}", size=(300, 130))
    ref_enc = w.node("VAEEncode", (1380, 870), [], inputs=[("pixels", "IMAGE"), ("vae", "VAE")], outputs=[LAT],
                     size=(300, 50))
    w.link(ref_img, 0, ref_scale, "image"); w.link(ref_scale, 0, ref_enc, "pixels"); w.link(*vae, ref_enc, "vae")
    ref_inv = w.node("LR_DDIMInversion", (1380, 970), [STEPS, "simple", "euler", 1.0, False, "auto", labels.RECORD_REFERENCE],
                     inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("latent", "LATENT"),
                             ("negative", "CONDITIONING")],
                     outputs=[("inverted_latent", "LATENT"), ("inversion", "LR_INVERSION")],
                     title="DDIM Inversion (reference; inverse Euler to sigma 1)", size=(300, 250))
    w.link(*personalized, ref_inv, "model"); w.link(empty, 0, ref_inv, "positive"); w.link(ref_enc, 0, ref_inv, "latent")
    # --- masks ---
    mc = w.node("LR_CrossAttentionMask", (1740, 0), [SCENE.format("sks vase"), "vase",
                labels.HALF, 10, 0.1],
                inputs=[("model", "MODEL"), ("layout_inversion", "LR_INVERSION"), ("clip", "CLIP")],
                outputs=[("soft_map", "MASK"), ("mask", "MASK")], title="Cross-Attention Mask (T5 tokens, double blocks)",
                size=(360, 250), widget_inputs=[("prompt", "STRING"), ("subject", "STRING")])
    w.link(*personalized, mc, "model"); w.link(sb, 1, mc, "layout_inversion"); w.link(*clip, mc, "clip")
    w.link(pp_text, 0, mc, "prompt"); w.link(word, 0, mc, "subject")
    sam = w.node("LR_SAMLoader", (1740, 300), ["sam_vit_h_4b8939.pth"], outputs=[("sam", "LR_SAM")], size=(360, 60))
    seg = w.node("LR_SAMSegment", (1740, 410), ["", "", 0.01], inputs=[("image", "IMAGE"), ("sam", "LR_SAM"),
                 ("prompt_mask", "MASK")], outputs=[("mask", "MASK")], title="SAM Segment from Mask (M^SAM)",
                 size=(360, 170))
    w.link(lay_dec, 0, seg, "image"); w.link(sam, 0, seg, "sam"); w.link(mc, 1, seg, "prompt_mask")
    ada = w.node("LR_AdaptiveMask", (2160, 0), [0.5, 0.01, 0.5, 1.0, True],
                 inputs=[("cross_attention_mask", "MASK"), ("sam_mask", "MASK")],
                 outputs=[("mask", "MASK"), ("union", "MASK"), ("distance", "MASK"), ("components", "MASK")],
                 size=(340, 250))
    w.link(mc, 1, ada, "cross_attention_mask"); w.link(seg, 0, ada, "sam_mask")
    for (title, y), (src, slot) in zip((("M^c (cross-attention)", 300), ("M^SAM", 610), ("M (adaptive)", 920)),
                                       ((mc, 1), (seg, 0), (ada, 0)), strict=True):
        m2i = w.node("MaskToImage", (2160, y), [], inputs=[("mask", "MASK")], outputs=[IMG], size=(200, 50))
        prev = w.node("PreviewImage", (2380, y), [], inputs=[("images", "IMAGE")], title=f"Preview: {title}",
                      size=(220, 270))
        w.link(src, slot, m2i, "mask"); w.link(m2i, 0, prev, "images")
    # --- the swap (recorded mode on stage 1's path, the reference cache on) and the retouch sampler ---
    swap = w.node("LR_MultiSourceAttentionSwap", (2620, 0), [LAMBDA2, MASK_START, "auto", "auto", labels.RECORDED,
                                                             labels.CACHE_RAM, labels.SHIFTED],
                  inputs=[("model", "MODEL"), ("reference_inversion", "LR_INVERSION"),
                          ("layout_inversion", "LR_INVERSION"), ("reference_positive", "CONDITIONING"),
                          ("reference_negative", "CONDITIONING"), ("layout_positive", "CONDITIONING"),
                          ("layout_negative", "CONDITIONING"), ("mask", "MASK")],
                  outputs=[("model", "MODEL")], size=(380, 380))
    w.link(*personalized, swap, "model"); w.link(ref_inv, 1, swap, "reference_inversion")
    w.link(sb, 1, swap, "layout_inversion"); w.link(rp, 0, swap, "reference_positive")
    w.link(neg, 0, swap, "reference_negative"); w.link(pp, 0, swap, "layout_positive")
    w.link(neg, 0, swap, "layout_negative"); w.link(ada, 0, swap, "mask")
    ks = w.node("KSamplerAdvanced", (3040, 0), ["disable", 0, "fixed", STEPS, 1.0, "euler", "simple", 0, 10000,
                "disable"], inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                ("latent_image", "LATENT")], outputs=[LAT], title="KSampler (Advanced): retouch", size=(340, 360))
    w.link(swap, 0, ks, "model"); w.link(rp, 0, ks, "positive"); w.link(neg, 0, ks, "negative")
    w.link(sb, 2, ks, "latent_image")
    dec = w.node("VAEDecode", (3420, 0), [], inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[IMG],
                 size=(300, 50))
    save = w.node("SaveImage", (3420, 120), ["layout_retouch/flux_final"], inputs=[("images", "IMAGE")],
                  title="Final image (stage 2)", size=(400, 430))
    w.link(ks, 0, dec, "samples"); w.link(*vae, dec, "vae"); w.link(dec, 0, save, "images")
    w.note("**Layout-and-Retouch on Flux.1-dev with your Flux LoRA.** Files: "
           f"`models/diffusion_models/{FILES['unet']}`, `models/text_encoders/{FILES['clip_l']}` and `{FILES['t5']}`, "
           f"`models/vae/{FILES['vae']}`, your LoRA in `models/loras`, a Segment Anything checkpoint in `models/sams`. "
           "Write the prompts in the boxes on the left; the reference photo goes in the Load Image node. Flux's "
           "settings everywhere: euler, simple, 28 steps, cfg 1, FluxGuidance 3.5.", (0, -220), size=(960, 140))
    w.note(f"**Stage 1, layout:** the vanilla Flux draws the first `lambda1` steps ({LAMBDA1} of {STEPS}); the "
           "LoRA the rest. Its `trajectory` is the retouch's layout path (no layout inversion), its `start_latent` "
           "the retouch's start.", (1000, -220), size=(700, 140))
    w.note("**Stage 2, retouch:** in the `auto` blocks (Stable Flow's vital layers) the target's image tokens take "
           f"the layout's keys and values for `lambda2` steps ({LAMBDA2}), then the reference's, moved off the "
           "target's RoPE positions (`shifted`: the subject's look without the photo's layout); from `mask_start` "
           f"({MASK_START}) the layout is kept outside the adaptive mask. The mask reads the subject's T5 tokens in the "
           "double blocks. The reference cache keeps the reference's attention for the next image: 4.6 GiB of RAM at "
           "1024x1024 (README, Flux); set it off to spare the RAM.",
           (1740, -220), size=(1300, 140))
    w.group("Models and prompts", (-20, -60, 1000, 860), color="#444")
    w.group("Stage 1: step-blended layout", (980, -60, 740, 700), color="#3f789e")
    w.group("Reference inversion (once per photo)", (980, 660, 740, 580), color="#8A8")
    w.group("Stage 2: retouch", (1720, -60, 2120, 1300), color="#8A8")
    return w


if __name__ == "__main__":
    out = Path(sys.argv[1])
    build_stage1().save(out / "layout_retouch_flux_stage1.json")
    build_full_lora().save(out / "layout_retouch_full_flux_lora.json")
