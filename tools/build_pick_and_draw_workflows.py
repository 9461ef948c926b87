"""Writes the Pick-and-Draw workflows (UI format), one per kind of personalized model and one on plain SD.

Run: python tools/build_pick_and_draw_workflows.py workflows/

Columns, left to right: models and texts; their encodings; the shared sampling settings (one seed, sampler,
schedule and size for the template and the generation); the layout template; the Pick-and-Draw sampler; the
generation. The reference's palette (photo, DDIM Inversion, palette) runs along the bottom, with the paper's
Null-Text Inversion beside it, wired but for its output (one link to the palette's reference_inversion switches).
On plain SD there is no layout template: the generation's own vanilla run would be its template, where the
layout loss sits at its minimum and guides nothing.
"""
import sys
from pathlib import Path

from build_full_workflows import SCENE, _encode
from ui_workflow import WF, labels

M, C, V = ("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")
COND = [("CONDITIONING", "CONDITIONING")]
LAT, IMG, MASK = ("LATENT", "LATENT"), ("IMAGE", "IMAGE"), ("MASK", "MASK")
STR = [("STRING", "STRING")]
KINDS = ("dreambooth", "lora", "embedding", "plain_sd")
X = {col: 400 * col for col in range(6)}  # column x positions; nodes are 320-360 wide
GAP = 70  # between stacked nodes: a node's title bar (30) and a margin

HOW = {
    "dreambooth": "Put plain SD 1.5 and your DreamBooth checkpoint in `models/checkpoints`; the prompts use its "
                  "token (`sks`).",
    "lora": "Put plain SD 1.5 in `models/checkpoints` and your LoRA in `models/loras`; the prompts use its token "
            "(`sks`).",
    "embedding": "Put plain SD 1.5 in `models/checkpoints` and your Textual Inversion in `models/embeddings`; the "
                 "personalized and reference prompts and the subject word use `embedding:my_vase`, the template's "
                 "word is the class noun of the vanilla prompt.",
    "plain_sd": "The paper's Fig. 7: plain SD 1.5 (in `models/checkpoints`) for everything, one prompt without a "
                "token; the reference photo alone gives the subject's looks (best when the drawn subject has the "
                "reference's shape and size). There is no layout template: it would be the generation's own run, "
                "where the layout loss is at its minimum and does nothing.",
}


class Stack:
    """Nodes stacked down one column."""

    def __init__(self, x: int, y: int = 0):
        self.x, self.y = x, y

    def at(self, height: int, y: int | None = None) -> tuple[int, int]:
        self.y = self.y if y is None else max(self.y, y)
        pos = (self.x, self.y)
        self.y += height + GAP
        return pos


def build(kind: str) -> WF:
    w = WF()
    subject = {"dreambooth": "sks vase", "lora": "sks vase", "embedding": "embedding:my_vase",
               "plain_sd": "red vase"}[kind]
    word = "embedding:my_vase" if kind == "embedding" else "vase"
    # --- models (column 0) ---
    c0, c1, c2 = Stack(X[0]), Stack(X[1]), Stack(X[2])
    if kind in ("dreambooth", "lora"):
        van = w.node("CheckpointLoaderSimple", c0.at(100), ["v1-5-pruned-emaonly.safetensors"], outputs=[M, C, V],
                     title="Vanilla model (plain SD 1.5)", size=(360, 100))
        if kind == "dreambooth":
            per = w.node("CheckpointLoaderSimple", c0.at(100), ["my_subject_dreambooth.safetensors"],
                         outputs=[M, C, V], title="Personalized model (DreamBooth)", size=(360, 100))
            per_model, per_clip, vae = (per, 0), (per, 1), (per, 2)
        else:
            lora = w.node("LoraLoader", c0.at(130), ["my_subject_lora.safetensors", 1.0, 1.0],
                          inputs=[("model", "MODEL"), ("clip", "CLIP")], outputs=[M, C],
                          title="Personalized model (LoRA)", size=(360, 130))
            w.link(van, 0, lora, "model"); w.link(van, 1, lora, "clip")
            per_model, per_clip, vae = (lora, 0), (lora, 1), (van, 2)
    else:
        title = {"embedding": "Model (plain SD 1.5; the embedding is in the personalized prompt)",
                 "plain_sd": "Model (plain SD 1.5, for everything)"}[kind]
        van = w.node("CheckpointLoaderSimple", c0.at(100), ["v1-5-pruned-emaonly.safetensors"], outputs=[M, C, V],
                     title=title, size=(360, 100))
        per_model, per_clip, vae = (van, 0), (van, 1), (van, 2)
    one_model = per_model == (van, 0)
    # --- texts (column 0), typed once each, and their encodings (column 1) ---
    if kind == "plain_sd":
        vp_text = pp_text = w.node("PrimitiveStringMultiline", c0.at(110), [SCENE.format(subject)], outputs=STR,
                                   title="Vanilla prompt (no token; the template and the generation)", size=(360, 110))
        rp_text = w.node("PrimitiveStringMultiline", c0.at(90), [f"a photo of a {subject}"], outputs=STR,
                         title="Reference prompt (describes the photo)", size=(360, 90))
    else:
        vp_text = w.node("PrimitiveStringMultiline", c0.at(110), [SCENE.format("red vase")], outputs=STR,
                         title="Vanilla prompt (no token, for the template)", size=(360, 110))
        pp_text = w.node("PrimitiveStringMultiline", c0.at(110), [SCENE.format(subject)], outputs=STR,
                         title="Personalized prompt (with token)", size=(360, 110))
        rp_text = w.node("PrimitiveStringMultiline", c0.at(90), [f"a photo of {subject}"], outputs=STR,
                         title="Reference prompt (describes the photo)", size=(360, 90))
    word_node = w.node("PrimitiveString", c0.at(60), [word], outputs=STR,
                       title="Subject word (in the prompts)" if kind != "embedding" else
                       "Subject word (the embedding)", size=(360, 60))
    # The template finds the subject in the vanilla prompt: with an embedding, that is the class noun.
    van_word = word_node
    if kind == "embedding":
        van_word = w.node("PrimitiveString", c0.at(60), ["vase"], outputs=STR,
                          title="Vanilla subject word (class noun, for the template)", size=(360, 60))
    encode = lambda title, clip, text=None: _encode(w, c1.at(100), title, clip, text)  # noqa: E731
    if kind == "plain_sd":
        vp = pp = encode("Positive", (van, 1), vp_text)
        vn = pn = encode("Negative (empty, as in the paper)", (van, 1))
    elif one_model:
        vp = encode("Vanilla positive", (van, 1), vp_text)
        pp = encode("Personalized positive", per_clip, pp_text)
        vn = pn = encode("Negative (empty, as in the paper)", (van, 1))
    else:
        vp = encode("Vanilla positive", (van, 1), vp_text)
        vn = encode("Vanilla negative (empty, as in the paper)", (van, 1))
        pp = encode("Personalized positive", per_clip, pp_text)
        pn = encode("Personalized negative (empty, as in the paper)", per_clip)
    ref_y = w.nodes[rp_text - 1]["pos"][1]
    rp = _encode(w, c1.at(80, ref_y), "Reference positive", per_clip, rp_text)
    for n in (vn, pn):  # the paper's unconditional prompt: empty
        w.nodes[n - 1]["widgets_values"] = [""]
    # --- the guiders and the sampling settings both samplings share (column 2) ---
    guider = lambda model, pos, neg, title: w.node(  # noqa: E731
        "CFGGuider", c2.at(100), [7.5], inputs=[("model", "MODEL"), ("positive", "CONDITIONING"),
                                                ("negative", "CONDITIONING")],
        outputs=[("GUIDER", "GUIDER")], title=title, size=(320, 100))
    if kind == "plain_sd":
        van_guider = per_guider = guider((van, 0), vp, vn, "CFG Guider (template and generation)")
    else:
        van_guider = guider((van, 0), vp, vn, "CFG Guider: vanilla (template)")
        per_guider = guider(per_model, pp, pn, "CFG Guider: personalized (generation)")
    w.link(van, 0, van_guider, "model"); w.link(vp, 0, van_guider, "positive"); w.link(vn, 0, van_guider, "negative")
    if per_guider != van_guider:
        w.link(*per_model, per_guider, "model"); w.link(pp, 0, per_guider, "positive")
        w.link(pn, 0, per_guider, "negative")
    noise = w.node("RandomNoise", c2.at(80), [0, "randomize"], outputs=[("NOISE", "NOISE")],
                   title="RandomNoise (one seed for both)", size=(320, 80))
    select = w.node("KSamplerSelect", c2.at(60), ["ddim"], outputs=[("SAMPLER", "SAMPLER")], size=(320, 60))
    sched = w.node("BasicScheduler", c2.at(110), ["ddim_uniform", 50, 1.0], inputs=[("model", "MODEL")],
                   outputs=[("SIGMAS", "SIGMAS")], size=(320, 110))
    w.link(*per_model, sched, "model")
    lat = w.node("EmptyLatentImage", c2.at(110), [512, 512, 1], outputs=[LAT], size=(320, 110))
    # --- the layout template (column 3): the vanilla model's first steps with the generation's noise and sigmas ---
    text_of = lambda n: w.nodes[n - 1]["widgets_values"][0]  # noqa: E731
    template = None
    if kind != "plain_sd":
        template = w.node("LR_LayoutTemplate", (X[3], 0), [text_of(vp_text), text_of(van_word), 9],
                          inputs=[("noise", "NOISE"), ("guider", "GUIDER"), ("sampler", "SAMPLER"),
                                  ("sigmas", "SIGMAS"), ("latent_image", "LATENT"), ("clip", "CLIP")],
                          outputs=[("template", "LR_LAYOUT_TEMPLATE")], title="Layout Template (vanilla, steps 0-9)",
                          size=(340, 250), widget_inputs=[("prompt", "STRING"), ("subject", "STRING")])
        w.link(noise, 0, template, "noise"); w.link(van_guider, 0, template, "guider")
        w.link(select, 0, template, "sampler"); w.link(sched, 0, template, "sigmas")
        w.link(lat, 0, template, "latent_image"); w.link(van, 1, template, "clip")
        w.link(vp_text, 0, template, "prompt"); w.link(van_word, 0, template, "subject")
    # --- the reference's palette (bottom row, columns 0-3), computed once per photo ---
    bottom = max(c0.y, c1.y, c2.y) + 40
    ref_img = w.node("LoadImage", (X[0], bottom + 80), ["reference.png", "image"], outputs=[IMG, MASK],
                     title="Reference photo of the subject", size=(360, 320))
    ref_scale = w.node("ImageScale", (X[1], bottom + 80), ["lanczos", 512, 512, "center"],
                       inputs=[("image", "IMAGE")], outputs=[IMG], title="Reference to 512x512", size=(340, 130))
    ref_enc = w.node("VAEEncode", (X[1], bottom + 280), [], inputs=[("pixels", "IMAGE"), ("vae", "VAE")],
                     outputs=[LAT], size=(340, 50))
    w.link(ref_img, 0, ref_scale, "image"); w.link(ref_scale, 0, ref_enc, "pixels"); w.link(*vae, ref_enc, "vae")
    # The palette's path: the reference's DDIM Inversion (docs/pick-and-draw.md: the same palette as the paper's
    # null-text path at a fraction of its cost); the paper's Null-Text Inversion beside it, its output free.
    ddim = w.node("LR_DDIMInversion", (X[2], bottom + 80), [50, "ddim_uniform", "ddim", 1.0, False, "auto", labels.RECORD_BOTH],
                  inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("latent", "LATENT"),
                          ("negative", "CONDITIONING")],
                  outputs=[("inverted_latent", "LATENT"), ("inversion", "LR_INVERSION")],
                  title="DDIM Inversion (reference, for the palette)", size=(320, 250))
    w.link(*per_model, ddim, "model"); w.link(rp, 0, ddim, "positive"); w.link(ref_enc, 0, ddim, "latent")
    null_text = w.node("LR_NullTextInversion", (X[2], bottom + 400), [50, "ddim_uniform", "ddim", 7.5, 10, 0.01, 1e-5],
                       inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                               ("latent", "LATENT")],
                       outputs=[("inverted_latent", "LATENT"), ("inversion", "LR_INVERSION"),
                                ("null_negative", "CONDITIONING")],
                       title="Null-Text Inversion (the paper's palette path: link its inversion to the palette)",
                       size=(320, 280))
    w.link(*per_model, null_text, "model"); w.link(rp, 0, null_text, "positive")
    w.link(pn, 0, null_text, "negative"); w.link(ref_enc, 0, null_text, "latent")
    palette = w.node("LR_ReferencePalette", (X[3], bottom + 80), [text_of(rp_text), word, 10, 19, "auto", 0.1],
                     inputs=[("model", "MODEL"), ("reference_inversion", "LR_INVERSION"), ("clip", "CLIP"),
                             ("sigmas", "SIGMAS")],
                     outputs=[("palette", "LR_PALETTE")], title="Reference Palette (steps 10-19)", size=(340, 250),
                     widget_inputs=[("prompt", "STRING"), ("subject", "STRING")])
    w.link(*per_model, palette, "model"); w.link(ddim, 1, palette, "reference_inversion")
    w.link(*per_clip, palette, "clip"); w.link(rp_text, 0, palette, "prompt"); w.link(word_node, 0, palette, "subject")
    w.link(sched, 0, palette, "sigmas")  # the appearance steps count on the generation's schedule
    # --- the generation (columns 4-5): ddim with Pick-and-Draw's guidance, on the personalized model ---
    pnd = w.node("LR_PickAndDrawSampler", (X[4], 300), [text_of(pp_text), word, 10.0, 10.0, 100.0, 0, 9, 10, 19, 3,
                                                         0.1],
                 inputs=[("sampler", "SAMPLER"), ("clip", "CLIP"), ("palette", "LR_PALETTE"),
                         ("template", "LR_LAYOUT_TEMPLATE")],
                 outputs=[("sampler", "SAMPLER")], size=(340, 400),
                 widget_inputs=[("prompt", "STRING"), ("subject", "STRING")])
    w.link(select, 0, pnd, "sampler"); w.link(*per_clip, pnd, "clip"); w.link(palette, 0, pnd, "palette")
    if template is not None:
        w.link(template, 0, pnd, "template")
    w.link(pp_text, 0, pnd, "prompt"); w.link(word_node, 0, pnd, "subject")
    sca = w.node("SamplerCustomAdvanced", (X[5], 0), [],
                 inputs=[("noise", "NOISE"), ("guider", "GUIDER"), ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"),
                         ("latent_image", "LATENT")],
                 outputs=[("output", "LATENT"), ("denoised_output", "LATENT")], size=(320, 130))
    w.link(noise, 0, sca, "noise"); w.link(per_guider, 0, sca, "guider"); w.link(pnd, 0, sca, "sampler")
    w.link(sched, 0, sca, "sigmas"); w.link(lat, 0, sca, "latent_image")
    dec = w.node("VAEDecode", (X[5], 200), [], inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=[IMG],
                 size=(320, 50))
    save = w.node("SaveImage", (X[5], 320), ["pick_and_draw/image"], inputs=[("images", "IMAGE")],
                  title="Pick-and-Draw image", size=(420, 440))
    w.link(sca, 0, dec, "samples"); w.link(*vae, dec, "vae"); w.link(dec, 0, save, "images")
    # --- the note and the groups ---
    note_y = 880
    template_text = ("The **Layout Template** samples steps 0-9 with the vanilla model and prompt, from the "
                     "generation's own seed, sampler, sigmas and latent, and keeps the subject's cross-attention maps. "
                     if template is not None else "")
    w.note("**Pick-and-Draw** (Lv et al., ACM MM 2024), training-free guidance with one reference photo. "
           + HOW[kind] + " The photo goes in the Load Image node.\n\n" + template_text +
           "The **Reference Palette** reads the photo's decoder features inside its subject mask (tau 0.1) at steps "
           "10-19 along its **DDIM Inversion**; the paper's **Null-Text Inversion** (10 iterations a step, learning "
           "rate 0.01) is beside it: link its inversion to the palette for the paper's path (about 10x the cost, "
           "README: Pick-and-Draw). The **Pick-and-Draw Sampler** wraps DDIM and moves the latent 3 times a step, "
           "z <- z - eta grad(alpha L_app + beta L_lay)"
           + (": layout in steps 0-9, appearance in 10-19" if template is not None else " in steps 10-19") +
           "; eta 10, alpha 10, beta 100, tau 0.1; each step at most as far as the loss's linearised minimum "
           "(its log line says how far).\n\n"
           "Keep 50 steps, `ddim_uniform` and cfg 7.5 equal in the scheduler, the guiders and the inversions. "
           "ComfyUI's cache keeps the inversion and the palette per photo.",
           (X[4], note_y), size=(780, 360))
    w.group("Models and prompts", (X[0] - 20, -80, 800, bottom + 60), color="#444")
    w.group("Shared sampling", (X[2] - 20, -80, 360, bottom + 60), color="#444")
    if template is not None:
        w.group("Layout template", (X[3] - 20, -80, 380, 400), color="#3f789e")
    w.group("Reference palette (once per photo)", (X[0] - 20, bottom, 1580, 760), color="#8A8")
    w.group("Pick-and-Draw generation", (X[4] - 20, -80, 840, 900), color="#a1309b")
    return w


if __name__ == "__main__":
    out = Path(sys.argv[1])
    for kind in KINDS:
        build(kind).save(out / f"pick_and_draw_{kind}.json")
