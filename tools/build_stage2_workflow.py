"""Writes the shipped workflow (UI format). Run: python tools/build_stage2_workflow.py workflows/NAME.json"""
import sys

from ui_workflow import WF, labels

w = WF()
M, C, V = ("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")
cond = [("CONDITIONING", "CONDITIONING")]
LAT, INV, IMG, MASK = ("LATENT", "LATENT"), ("inversion", "LR_INVERSION"), ("IMAGE", "IMAGE"), ("MASK", "MASK")
ck = w.node("CheckpointLoaderSimple", (0, 0), ["my_subject_dreambooth.safetensors"], outputs=[M, C, V], title="Personalized model (DreamBooth)")
ref_img = w.node("LoadImage", (0, 200), ["reference.png", "image"], outputs=[IMG, MASK], title="Reference photo of the subject", size=(320, 320))
lay_img = w.node("LoadImage", (0, 560), ["layout.png", "image"], outputs=[IMG, MASK], title="Layout image (from stage 1)", size=(320, 320))
ref_scale = w.node("ImageScale", (360, 200), ["lanczos", 512, 512, "center"], inputs=[("image", "IMAGE")], outputs=[IMG], title="Reference to 512x512")
lay_scale = w.node("ImageScale", (360, 560), ["lanczos", 512, 512, "center"], inputs=[("image", "IMAGE")], outputs=[IMG], title="Layout to 512x512")
ref_enc = w.node("VAEEncode", (700, 200), [], inputs=[("pixels", "IMAGE"), ("vae", "VAE")], outputs=[LAT], size=(220, 50))
lay_enc = w.node("VAEEncode", (700, 560), [], inputs=[("pixels", "IMAGE"), ("vae", "VAE")], outputs=[LAT], size=(220, 50))
empty = w.node("CLIPTextEncode", (360, 0), [""], inputs=[("clip", "CLIP")], outputs=cond, title="Inversion prompt (empty)", size=(300, 100))
inv_widgets = [50, "ddim_uniform", "ddim", 1.0, False, "output 6-11", labels.RECORD_BOTH]
inv_inputs = [("model", "MODEL"), ("positive", "CONDITIONING"), ("latent", "LATENT"), ("negative", "CONDITIONING")]
ref_inv = w.node("LR_DDIMInversion", (960, 160), inv_widgets, inputs=inv_inputs, outputs=[("inverted_latent", "LATENT"), INV], title="DDIM Inversion (reference)", size=(320, 200))
lay_inv = w.node("LR_DDIMInversion", (960, 520), inv_widgets, inputs=inv_inputs, outputs=[("inverted_latent", "LATENT"), INV], title="DDIM Inversion (layout)", size=(320, 200))
y_r = w.node("CLIPTextEncode", (960, -260), ["a photo of sks vase"], inputs=[("clip", "CLIP")], outputs=cond, title="Reference prompt y_r", size=(360, 110))
y_p = w.node("CLIPTextEncode", (960, -120), ["a photo of a sks vase floating in a swimming pool, top view"], inputs=[("clip", "CLIP")], outputs=cond, title="Layout prompt y_p (stage 1's personalized prompt)", size=(360, 110))
neg = w.node("CLIPTextEncode", (960, 20), ["blurry, low quality"], inputs=[("clip", "CLIP")], outputs=cond, title="Negative prompt", size=(360, 100))
mc = w.node("LR_CrossAttentionMask", (1340, 520), ["a photo of a sks vase floating in a swimming pool, top view", "vase", labels.HALF, 10, 0.1],
            inputs=[("model", "MODEL"), ("layout_inversion", "LR_INVERSION"), ("clip", "CLIP")],
            outputs=[("soft_map", "MASK"), ("mask", "MASK")], size=(360, 260))
swap = w.node("LR_MultiSourceAttentionSwap", (1740, 60), [10, 30, "output 6-11", "output 6-11", labels.RECORDED, labels.CACHE_RAM],
              inputs=[("model", "MODEL"), ("reference_inversion", "LR_INVERSION"), ("layout_inversion", "LR_INVERSION"),
                      ("reference_positive", "CONDITIONING"), ("reference_negative", "CONDITIONING"),
                      ("layout_positive", "CONDITIONING"), ("layout_negative", "CONDITIONING"), ("mask", "MASK")],
              outputs=[("model", "MODEL")], size=(360, 330))
ks = w.node("KSamplerAdvanced", (2140, 60), ["disable", 0, "fixed", 50, 7.5, "ddim", "ddim_uniform", 0, 10000, "disable"],
            inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
            outputs=[LAT], title="KSampler (Advanced): retouch", size=(320, 340))
dec = w.node("VAEDecode", (2500, 60), [], inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[IMG], size=(220, 50))
save = w.node("SaveImage", (2760, 60), ["layout_retouch/retouched"], inputs=[("images", "IMAGE")], size=(420, 460))
sam = w.node("LR_SAMLoader", (1340, 820), ["sam_vit_h_4b8939.pth"], outputs=[("sam", "LR_SAM")], size=(320, 60))
seg = w.node("LR_SAMSegment", (1340, 920), ["", "", 0.01], inputs=[("image", "IMAGE"), ("sam", "LR_SAM"), ("prompt_mask", "MASK")],
             outputs=[("mask", "MASK")], title="SAM Segment from Mask (M^SAM)", size=(320, 160))
ada = w.node("LR_AdaptiveMask", (1740, 820), [0.5, 0.01, 0.5, 1.0, True], inputs=[("cross_attention_mask", "MASK"), ("sam_mask", "MASK")],
             outputs=[("mask", "MASK"), ("union", "MASK"), ("distance", "MASK"), ("components", "MASK")], size=(320, 230))
previews = []
for title, x in (("M^c (cross-attention)", 2140), ("M^SAM", 2400), ("M (adaptive)", 2660)):
    m2i = w.node("MaskToImage", (x, 820), [], inputs=[("mask", "MASK")], outputs=[IMG], size=(220, 50))
    prev = w.node("PreviewImage", (x, 900), [], inputs=[("images", "IMAGE")], title=f"Preview: {title}", size=(240, 260))
    w.link(m2i, 0, prev, "images")
    previews.append(m2i)
w.link(ref_img, 0, ref_scale, "image"); w.link(lay_img, 0, lay_scale, "image")
w.link(ref_scale, 0, ref_enc, "pixels"); w.link(lay_scale, 0, lay_enc, "pixels")
w.link(ck, 2, ref_enc, "vae"); w.link(ck, 2, lay_enc, "vae"); w.link(ck, 2, dec, "vae")
for n in (empty, y_r, y_p, neg): w.link(ck, 1, n, "clip")
for inv, enc in ((ref_inv, ref_enc), (lay_inv, lay_enc)):
    w.link(ck, 0, inv, "model"); w.link(empty, 0, inv, "positive"); w.link(enc, 0, inv, "latent")
w.link(ck, 0, mc, "model"); w.link(lay_inv, 1, mc, "layout_inversion"); w.link(ck, 1, mc, "clip")
w.link(ck, 0, swap, "model"); w.link(ref_inv, 1, swap, "reference_inversion"); w.link(lay_inv, 1, swap, "layout_inversion")
w.link(y_r, 0, swap, "reference_positive"); w.link(neg, 0, swap, "reference_negative")
w.link(y_p, 0, swap, "layout_positive"); w.link(neg, 0, swap, "layout_negative")
w.link(lay_scale, 0, seg, "image"); w.link(sam, 0, seg, "sam"); w.link(mc, 1, seg, "prompt_mask")
w.link(mc, 1, ada, "cross_attention_mask"); w.link(seg, 0, ada, "sam_mask"); w.link(ada, 0, swap, "mask")
w.link(mc, 1, previews[0], "mask"); w.link(seg, 0, previews[1], "mask"); w.link(ada, 0, previews[2], "mask")
w.link(swap, 0, ks, "model"); w.link(y_r, 0, ks, "positive"); w.link(neg, 0, ks, "negative"); w.link(lay_inv, 0, ks, "latent_image")
w.link(ks, 0, dec, "samples"); w.link(dec, 0, save, "images")
w.note("**Layout-and-Retouch, stage 2: the retouch.**\n\nBoth images are DDIM-inverted with the empty prompt. The patched model samples the target from the layout's inverted latent: for the first `lambda2` steps (10 of 50) it copies the layout's attention (structure), later it takes the reference's self-attention keys and values (identity), and from `mask_start` (30) it keeps the layout outside the adaptive mask M (from the cross-attention mask M^c and Segment Anything's M^SAM; put a SAM checkpoint in `models/sams`). Keep the sampler's steps and scheduler equal to the inversions', add_noise disabled, and give the Cross-Attention Mask the same text as the layout prompt.", (2140, 460), size=(520, 260))
w.group("Stage 2: retouch", (-20, -320, 3220, 1540))
w.save(sys.argv[1])
