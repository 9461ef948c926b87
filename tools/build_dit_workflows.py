"""Writes the DiT families' workflows (UI format): both stages with a LoRA, per family, and Flux's stage 1 alone.

One table row a family (:data:`FAMILIES`): its stock loaders and files, its sampling (size, steps, cfg, and the
paper's 5, 10 and 30 of 50 steps scaled to its steps), how a prompt is encoded (Flux: FluxGuidance on the
conditioning, cfg 1; the others a real negative prompt), and whether the reference cache is on.

Run: python tools/build_dit_workflows.py workflows/
"""
import sys
from dataclasses import dataclass
from pathlib import Path

from ui_workflow import WF, labels, mask_section

M, C, V = ("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")
COND = [("CONDITIONING", "CONDITIONING")]
LAT, IMG, MASK = ("LATENT", "LATENT"), ("IMAGE", "IMAGE"), ("MASK", "MASK")
STR = [("STRING", "STRING")]
SCENE = "a photo of a {} floating in a swimming pool, top view"


@dataclass(frozen=True)
class Family:
    name: str  # what the notes call it
    short: str  # the family, in node titles
    stem: str  # the workflow's file name part
    unet: str
    text_loader: str
    text_widgets: list
    text_title: str
    vae: str
    lora: str
    size: int
    steps: int
    cfg: float
    guidance: float | None  # FluxGuidance on every prompt (cfg 1), or None (a negative prompt instead)
    negative: str
    cache: str
    tokens: str  # the text tokens the subject map reads
    note: str  # what differs on this family, for the retouch note

    @property
    def lambdas(self) -> tuple[int, int, int]:
        """The paper's 5, 10 and 30 of 50 steps (L&R B.1), scaled to this family's steps."""
        return round(self.steps / 10), round(self.steps / 5), round(0.6 * self.steps)


FAMILIES = {
    "flux": Family("Flux.1-dev", "Flux", "flux", "flux1-dev.safetensors", "DualCLIPLoader",
                   ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"],
                   "Text encoders (CLIP-L and T5-XXL)", "ae.safetensors", "my_subject_flux_lora.safetensors", 1024, 28,
                   1.0, 3.5, "", labels.CACHE_RAM, "T5 tokens, double blocks",
                   "in the `auto` blocks (Stable Flow's vital layers) the target's image tokens take the layout's keys "
                   "and values, then the reference's, moved off the target's RoPE positions (`shifted`: the subject's "
                   "look without the photo's layout). The reference cache keeps the reference's attention for the next "
                   "image: 4.6 GiB of RAM at 1024x1024 (README, Model families); set it off to spare the RAM."),
    "chroma": Family("Chroma1-HD", "Chroma", "chroma", "Chroma1-HD.safetensors", "CLIPLoader",
                     ["t5xxl_fp16.safetensors", "chroma", "default"], "Text encoder (T5-XXL)", "ae.safetensors",
                     "my_subject_chroma_lora.safetensors", 1024, 40, 4.0, None,
                     "low quality, ugly, unfinished, out of focus, deformed, disfigure, blurry, smudged",
                     labels.CACHE_OFF, "T5 tokens, double blocks",
                     "in the `auto` blocks (Flux's vital layers: Chroma keeps Flux's blocks) the target's image tokens "
                     "take the layout's keys and values, then the reference's, moved off the target's RoPE positions "
                     "(`shifted`). The reference cache is off: with a negative prompt every step has two CFG halves, "
                     "13.5 GiB at 1024x1024 and 40 steps (README, Model families)."),
    "qwen_image": Family("Qwen-Image", "Qwen-Image", "qwen_image", "qwen_image_fp8_e4m3fn.safetensors", "CLIPLoader",
                         ["qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image", "default"],
                         "Text encoder (Qwen2.5-VL 7B)", "qwen_image_vae.safetensors",
                         "my_subject_qwen_image_lora.safetensors", 1328, 30, 2.5, None, "", labels.CACHE_OFF,
                         "Qwen2.5-VL tokens, every block",
                         "in the `auto` blocks (Stable Flow's vital layers at the same relative depth of Qwen-Image's "
                         "60 blocks) the target's image tokens take the layout's keys and values, then the reference's, "
                         "moved off the target's RoPE positions (`shifted`). The reference cache is off: at 1328x1328 "
                         "with two CFG halves it would take 17 GiB at 30 steps (README, Model families)."),
    "sd3": Family("SD3.5 Large", "SD3.5", "sd3", "sd3.5_large.safetensors", "TripleCLIPLoader",
                  ["clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"],
                  "Text encoders (CLIP-L, CLIP-G, T5-XXL)", "sd3.5_vae.safetensors", "my_subject_sd3_lora.safetensors",
                  1024, 28, 4.5, None, "blurry, low quality", labels.CACHE_OFF, "T5 tokens after CLIP's, every block",
                  "in the `auto` blocks (Stable Flow's vital layers at the same relative depth of SD3.5's joint "
                  "blocks) the target's image tokens take the layout's keys and values, then the reference's; SD3's "
                  "keys carry their positions in their content (no RoPE), so `reference_positions` has nothing to "
                  "move. The reference cache is off (two CFG halves a step)."),
}


def models(w: WF, f: Family):
    """The stock loaders; returns (vanilla model, personalized model, clip, vae) as (node, slot)."""
    unet = w.node("UNETLoader", (0, 0), [f.unet, "default"], outputs=[M], title=f"Vanilla model ({f.name})",
                  size=(360, 90))
    clip = w.node(f.text_loader, (0, 130), f.text_widgets, outputs=[C], title=f.text_title, size=(360, 130))
    vae = w.node("VAELoader", (0, 300), [f.vae], outputs=[V], title=f"{f.short} VAE", size=(360, 60))
    lora = w.node("LoraLoaderModelOnly", (0, 400), [f.lora, 1.0], inputs=[("model", "MODEL")], outputs=[M],
                  title=f"Personalized model ({f.short} LoRA)", size=(360, 90))
    w.link(unet, 0, lora, "model")
    return (unet, 0), (lora, 0), (clip, 0), (vae, 0)


def encode(w: WF, f: Family, pos, title: str, clip, text_node=None, text: str = ""):
    """CLIPTextEncode, then FluxGuidance where the family embeds its guidance (Flux.1-dev: cfg 1)."""
    enc = w.node("CLIPTextEncode", pos, [text], inputs=[("clip", "CLIP")], outputs=COND, title=title, size=(300, 90),
                 widget_inputs=[("text", "STRING")] if text_node is not None else ())
    w.link(*clip, enc, "clip")
    if text_node is not None:
        w.link(text_node, 0, enc, "text")
    if f.guidance is None:
        return enc
    guided = w.node("FluxGuidance", (pos[0] + 320, pos[1]), [f.guidance], inputs=[("conditioning", "CONDITIONING")],
                    outputs=COND, size=(240, 60))
    w.link(enc, 0, guided, "conditioning")
    return guided


def stage1(w: WF, f: Family, vanilla, personalized, vp, pp, neg, x: int = 1000):
    lat = w.node("EmptySD3LatentImage", (x, 0), [f.size, f.size, 1], outputs=[LAT], size=(300, 110))
    sb = w.node("LR_StepBlendedKSampler", (x, 150), [0, "randomize", f.steps, f.lambdas[0], f.cfg, "euler", "simple",
                                                     1.0, False, "auto"],
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


def negative_title(f: Family) -> str:
    return "Negative (unused at cfg 1)" if f.cfg == 1.0 else "Negative prompt"


def files_line(f: Family) -> str:
    first, *rest = [f"`{name}`" for name in f.text_widgets if name.endswith(".safetensors")]
    texts = f"`models/text_encoders/{first[1:]}" + "".join(
        (" and " if i == len(rest) - 1 else ", ") + name for i, name in enumerate(rest))
    return f"Files: `models/diffusion_models/{f.unet}`, {texts}, `models/vae/{f.vae}`, your LoRA in `models/loras`"


def build_stage1(f: Family) -> WF:
    w = WF()
    vanilla, personalized, clip, vae = models(w, f)
    vp = encode(w, f, (420, 0), "Vanilla prompt (no token)", clip, text=SCENE.format("red vase"))
    pp = encode(w, f, (420, 130), "Personalized prompt (with token)", clip, text=SCENE.format("sks vase"))
    neg = encode(w, f, (420, 260), negative_title(f), clip, text=f.negative)
    sb = stage1(w, f, vanilla, personalized, vp, pp, neg)
    dec = w.node("VAEDecode", (1380, 0), [], inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[IMG],
                 size=(300, 50))
    save = w.node("SaveImage", (1380, 100), [f"layout_retouch/{f.stem}_layout"], inputs=[("images", "IMAGE")],
                  title="Layout image (stage 1)", size=(400, 430))
    w.link(sb, 0, dec, "samples"); w.link(*vae, dec, "vae"); w.link(dec, 0, save, "images")
    w.note(f"**Stage 1 on {f.name}** (Layout-and-Retouch's step-blended denoising): the vanilla model draws the first "
           f"`lambda1` steps ({f.lambdas[0]} of {f.steps}), so pose and place follow the prompt; your LoRA draws the "
           f"rest. {files_line(f)}. Settings: euler, simple, cfg {f.cfg:g}"
           f"{f' with FluxGuidance {f.guidance:g} on the prompts' if f.guidance else ''}.", (0, -200), size=(780, 140))
    w.group("Models and prompts", (-20, -40, 1000, 560), color="#444")
    w.group("Stage 1: step-blended layout", (980, -40, 820, 660), color="#3f789e")
    return w


def build_full_lora(f: Family) -> WF:
    w = WF()
    vanilla, personalized, clip, vae = models(w, f)
    pp_text = w.node("PrimitiveStringMultiline", (0, 540), [SCENE.format("sks vase")], outputs=STR,
                     title="Personalized prompt (with token)", size=(360, 110))
    word = w.node("PrimitiveString", (0, 680), ["vase"], outputs=STR, title="Subject word (for the mask)",
                  size=(360, 60))
    vp = encode(w, f, (420, 0), "Vanilla prompt (no token)", clip, text=SCENE.format("red vase"))
    pp = encode(w, f, (420, 130), "Personalized prompt (y_p)", clip, pp_text)
    rp = encode(w, f, (420, 260), "Reference prompt (y_r)", clip, text="a photo of sks vase")
    neg = encode(w, f, (420, 390), negative_title(f), clip, text=f.negative)
    empty = encode(w, f, (420, 520), "Empty prompt (the reference's inversion)", clip)
    sb = stage1(w, f, vanilla, personalized, vp, pp, neg)
    lay_dec = w.node("VAEDecode", (1380, 0), [], inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[IMG],
                     size=(300, 50))
    lay_save = w.node("SaveImage", (1380, 100), [f"layout_retouch/{f.stem}_layout"], inputs=[("images", "IMAGE")],
                      title="Layout image (stage 1)", size=(300, 330))
    w.link(sb, 0, lay_dec, "samples"); w.link(*vae, lay_dec, "vae"); w.link(lay_dec, 0, lay_save, "images")
    # --- the reference's inversion (once per photo; ComfyUI's cache keeps it) ---
    ref_img = w.node("LoadImage", (1000, 700), ["reference.png", "image"], outputs=[IMG, MASK],
                     title="Reference photo of the subject", size=(340, 320))
    ref_scale = w.node("ImageScale", (1380, 700), ["lanczos", f.size, f.size, "center"], inputs=[("image", "IMAGE")],
                       outputs=[IMG], title=f"Reference to {f.size}x{f.size}", size=(300, 130))
    ref_enc = w.node("VAEEncode", (1380, 870), [], inputs=[("pixels", "IMAGE"), ("vae", "VAE")], outputs=[LAT],
                     size=(300, 50))
    w.link(ref_img, 0, ref_scale, "image"); w.link(ref_scale, 0, ref_enc, "pixels"); w.link(*vae, ref_enc, "vae")
    ref_inv = w.node("LR_DDIMInversion", (1380, 970), [f.steps, "simple", "euler", 1.0, False, "auto",
                                                       labels.RECORD_REFERENCE],
                     inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("latent", "LATENT"),
                             ("negative", "CONDITIONING")],
                     outputs=[("inverted_latent", "LATENT"), ("inversion", "LR_INVERSION")],
                     title="DDIM Inversion (reference; inverse Euler to sigma 1)", size=(300, 250))
    w.link(*personalized, ref_inv, "model"); w.link(empty, 0, ref_inv, "positive"); w.link(ref_enc, 0, ref_inv, "latent")
    ada = mask_section(w, (1740, 0), personalized, (sb, 1), clip, pp_text, word, lay_dec,
                       f"Cross-Attention Mask ({f.tokens})", SCENE.format("sks vase"))
    # --- the swap (recorded mode on stage 1's path) and the retouch sampler ---
    _, lambda2, mask_start = f.lambdas
    swap = w.node("LR_MultiSourceAttentionSwap", (2620, 0), [lambda2, mask_start, "auto", "auto", labels.RECORDED,
                                                             f.cache, labels.SHIFTED],
                  inputs=[("model", "MODEL"), ("reference_inversion", "LR_INVERSION"),
                          ("layout_inversion", "LR_INVERSION"), ("reference_positive", "CONDITIONING"),
                          ("reference_negative", "CONDITIONING"), ("layout_positive", "CONDITIONING"),
                          ("layout_negative", "CONDITIONING"), ("mask", "MASK")],
                  outputs=[("model", "MODEL")], size=(380, 380))
    w.link(*personalized, swap, "model"); w.link(ref_inv, 1, swap, "reference_inversion")
    w.link(sb, 1, swap, "layout_inversion"); w.link(rp, 0, swap, "reference_positive")
    w.link(neg, 0, swap, "reference_negative"); w.link(pp, 0, swap, "layout_positive")
    w.link(neg, 0, swap, "layout_negative"); w.link(ada, 0, swap, "mask")
    ks = w.node("KSamplerAdvanced", (3040, 0), ["disable", 0, "fixed", f.steps, f.cfg, "euler", "simple", 0, 10000,
                "disable"], inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                ("latent_image", "LATENT")], outputs=[LAT], title="KSampler (Advanced): retouch", size=(340, 360))
    w.link(swap, 0, ks, "model"); w.link(rp, 0, ks, "positive"); w.link(neg, 0, ks, "negative")
    w.link(sb, 2, ks, "latent_image")
    dec = w.node("VAEDecode", (3420, 0), [], inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[IMG],
                 size=(300, 50))
    save = w.node("SaveImage", (3420, 120), [f"layout_retouch/{f.stem}_final"], inputs=[("images", "IMAGE")],
                  title="Final image (stage 2)", size=(400, 430))
    w.link(ks, 0, dec, "samples"); w.link(*vae, dec, "vae"); w.link(dec, 0, save, "images")
    guidance = f", FluxGuidance {f.guidance:g}" if f.guidance else ""
    w.note(f"**Layout-and-Retouch on {f.name} with your {f.short} LoRA.** {files_line(f)}, a Segment Anything "
           "checkpoint in `models/sams`. Write the prompts in the boxes on the left; the reference photo goes in the "
           f"Load Image node. Settings everywhere: euler, simple, {f.steps} steps, cfg {f.cfg:g}{guidance}.",
           (0, -220), size=(960, 140))
    w.note(f"**Stage 1, layout:** the vanilla model draws the first `lambda1` steps ({f.lambdas[0]} of {f.steps}); "
           "the LoRA the rest. Its `trajectory` is the retouch's layout path (no layout inversion), its `start_latent` "
           "the retouch's start.", (1000, -220), size=(700, 140))
    w.note(f"**Stage 2, retouch:** {f.note} The target follows the layout for `lambda2` steps ({lambda2}); from "
           f"`mask_start` ({mask_start}) the layout is kept outside the adaptive mask, which reads the subject's "
           f"{f.tokens}.", (1740, -220), size=(1300, 140))
    w.group("Models and prompts", (-20, -60, 1000, 860), color="#444")
    w.group("Stage 1: step-blended layout", (980, -60, 740, 700), color="#3f789e")
    w.group("Reference inversion (once per photo)", (980, 660, 740, 580), color="#8A8")
    w.group("Stage 2: retouch", (1720, -60, 2120, 1300), color="#8A8")
    return w


if __name__ == "__main__":
    out = Path(sys.argv[1])
    build_stage1(FAMILIES["flux"]).save(out / "layout_retouch_flux_stage1.json")
    for family in FAMILIES.values():
        build_full_lora(family).save(out / f"layout_retouch_full_{family.stem}_lora.json")
