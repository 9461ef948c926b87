"""Writes the shipped workflow (UI format). Run: python tools/build_stage1_workflow.py workflows/NAME.json"""
import sys

from ui_workflow import WF

w = WF()
M, C, V = ("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")
van = w.node("CheckpointLoaderSimple", (0, 0), ["v1-5-pruned-emaonly.safetensors"], outputs=[M, C, V], title="Vanilla model (plain SD 1.5)")
per = w.node("CheckpointLoaderSimple", (0, 420), ["my_subject_dreambooth.safetensors"], outputs=[M, C, V], title="Personalized model (DreamBooth)")
cond = [("CONDITIONING", "CONDITIONING")]
vp = w.node("CLIPTextEncode", (380, 0), ["a photo of a vase floating in a swimming pool, top view"], inputs=[("clip", "CLIP")], outputs=cond, title="Vanilla prompt (no token)", size=(400, 150))
vn = w.node("CLIPTextEncode", (380, 190), ["blurry, low quality"], inputs=[("clip", "CLIP")], outputs=cond, title="Vanilla negative", size=(400, 110))
pp = w.node("CLIPTextEncode", (380, 420), ["a photo of a sks vase floating in a swimming pool, top view"], inputs=[("clip", "CLIP")], outputs=cond, title="Personalized prompt (with token)", size=(400, 150))
pn = w.node("CLIPTextEncode", (380, 610), ["blurry, low quality"], inputs=[("clip", "CLIP")], outputs=cond, title="Personalized negative", size=(400, 110))
lat = w.node("EmptyLatentImage", (380, 770), [512, 512, 1], outputs=[("LATENT", "LATENT")], size=(320, 110))
sb = w.node("LR_StepBlendedKSampler", (840, 200), [0, "randomize", 50, 5, 7.5, "ddim", "ddim_uniform", 1.0, False, "output 6-11"],
            inputs=[("vanilla_model", "MODEL"), ("personalized_model", "MODEL"), ("vanilla_positive", "CONDITIONING"),
                    ("vanilla_negative", "CONDITIONING"), ("personalized_positive", "CONDITIONING"),
                    ("personalized_negative", "CONDITIONING"), ("latent_image", "LATENT")],
            outputs=[("layout_latent", "LATENT"), ("trajectory", "LR_INVERSION"), ("start_latent", "LATENT")], size=(340, 420))
dec = w.node("VAEDecode", (1220, 200), [], inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[("IMAGE", "IMAGE")], size=(220, 50))
save = w.node("SaveImage", (1480, 200), ["layout_retouch/layout"], inputs=[("images", "IMAGE")], size=(420, 460))
w.link(van, 0, sb, "vanilla_model"); w.link(per, 0, sb, "personalized_model")
w.link(van, 1, vp, "clip"); w.link(van, 1, vn, "clip"); w.link(per, 1, pp, "clip"); w.link(per, 1, pn, "clip")
w.link(vp, 0, sb, "vanilla_positive"); w.link(vn, 0, sb, "vanilla_negative")
w.link(pp, 0, sb, "personalized_positive"); w.link(pn, 0, sb, "personalized_negative")
w.link(lat, 0, sb, "latent_image"); w.link(sb, 0, dec, "samples"); w.link(per, 2, dec, "vae"); w.link(dec, 0, save, "images")
w.note("**Layout-and-Retouch, stage 1: the layout.**\n\nThe vanilla model draws the first `lambda1` steps (5 of 50; 3 for hard layouts), so the pose and place follow the prompt; the personalized model draws the rest, so the subject is yours. Put your DreamBooth checkpoint in `models/checkpoints`. For a LoRA, feed the vanilla model through a LoRA loader into `personalized_model`; for a Textual Inversion, use the vanilla model for both and write `embedding:name` in the personalized prompt.", (840, 680), size=(520, 220))
w.group("Stage 1: step-blended layout", (-20, -80, 1940, 1000))
w.save(sys.argv[1])
