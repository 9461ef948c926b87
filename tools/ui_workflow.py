"""A small builder for UI-format workflows, used to write the files in workflows/ (not shipped to users).

``labels``: the nodes' combo labels (the pack's ``nodes/labels.py``), so the builders write what the nodes offer.
"""
import importlib
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_pack() -> None:
    """Import the pack under its own name (its folder's name may not be importable), once; tools share it."""
    if "comfyui_layout_retouch" not in sys.modules:
        spec = importlib.util.spec_from_file_location("comfyui_layout_retouch", ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules["comfyui_layout_retouch"] = pack
        spec.loader.exec_module(pack)


load_pack()
labels = importlib.import_module("comfyui_layout_retouch.nodes.labels")  # no ComfyUI needed; torch is


class WF:
    def __init__(self):
        self.nodes, self.links, self.groups = [], [], []
    def node(self, type_, pos, widgets=None, inputs=(), outputs=(), title=None, size=(320, 120), color=None,
             widget_inputs=()):
        """widget_inputs: widgets given a socket, to be linked from a primitive (e.g. ("text", "STRING"))."""
        nid = len(self.nodes) + 1
        n = {"id": nid, "type": type_, "pos": list(pos), "size": list(size), "flags": {}, "order": nid - 1, "mode": 0,
             "inputs": [{"name": n_, "type": t, "link": None} for n_, t in inputs]
             + [{"name": n_, "type": t, "widget": {"name": n_}, "link": None} for n_, t in widget_inputs],
             "outputs": [{"name": n_, "type": t, "links": [], "slot_index": i} for i, (n_, t) in enumerate(outputs)],
             "properties": {"Node name for S&R": type_}, "widgets_values": list(widgets or [])}
        if title: n["title"] = title
        if color: n["color"], n["bgcolor"] = color
        self.nodes.append(n)
        return nid
    def link(self, a, a_slot, b, b_input):
        src = self.nodes[a - 1]; dst = self.nodes[b - 1]
        slot = [i for i, x in enumerate(dst["inputs"]) if x["name"] == b_input][0]
        t = src["outputs"][a_slot]["type"]
        lid = len(self.links) + 1
        self.links.append([lid, a, a_slot, b, slot, t])
        src["outputs"][a_slot]["links"].append(lid)
        dst["inputs"][slot]["link"] = lid
    def group(self, title, bounding, color="#3f789e"):
        self.groups.append({"title": title, "bounding": list(bounding), "color": color, "font_size": 24, "flags": {}})
    def note(self, text, pos, size=(380, 160)):
        return self.node("MarkdownNote", pos, [text], size=size, color=("#432", "#653"))
    def save(self, path):
        d = {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes, "links": self.links,
             "groups": self.groups, "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}
        with open(path, "w") as f:
            json.dump(d, f, indent=1)
            f.write("\n")


def mask_section(w: WF, pos, model, layout_inversion, clip, prompt_node, word_node, layout_image, title: str | None,
                 prompt: str, word: str = "vase"):
    """The stage-2 masks: M^c (Cross-Attention Mask on the layout's path, its prompt and subject from the given
    primitives), M^SAM (SAM from that mask on the layout image), M (Adaptive Mask), each previewed. ``model``,
    ``layout_inversion`` and ``clip`` are (node, slot); the others nodes. Returns the Adaptive Mask node."""
    x, y = pos
    mc = w.node("LR_CrossAttentionMask", (x, y), [prompt, word, labels.HALF, 10, 0.1],
                inputs=[("model", "MODEL"), ("layout_inversion", "LR_INVERSION"), ("clip", "CLIP")],
                outputs=[("soft_map", "MASK"), ("mask", "MASK")], title=title,
                size=(360, 250), widget_inputs=[("prompt", "STRING"), ("subject", "STRING")])
    w.link(*model, mc, "model"); w.link(*layout_inversion, mc, "layout_inversion"); w.link(*clip, mc, "clip")
    w.link(prompt_node, 0, mc, "prompt"); w.link(word_node, 0, mc, "subject")
    sam = w.node("LR_SAMLoader", (x, y + 300), ["sam_vit_h_4b8939.pth"], outputs=[("sam", "LR_SAM")], size=(360, 60))
    seg = w.node("LR_SAMSegment", (x, y + 410), ["", "", 0.01], inputs=[("image", "IMAGE"), ("sam", "LR_SAM"),
                 ("prompt_mask", "MASK")], outputs=[("mask", "MASK")], title="SAM Segment from Mask (M^SAM)",
                 size=(360, 170))
    w.link(layout_image, 0, seg, "image"); w.link(sam, 0, seg, "sam"); w.link(mc, 1, seg, "prompt_mask")
    ada = w.node("LR_AdaptiveMask", (x + 420, y), [0.5, 0.01, 0.5, 1.0, True],
                 inputs=[("cross_attention_mask", "MASK"), ("sam_mask", "MASK")],
                 outputs=[("mask", "MASK"), ("union", "MASK"), ("distance", "MASK"), ("components", "MASK")],
                 size=(340, 250))
    w.link(mc, 1, ada, "cross_attention_mask"); w.link(seg, 0, ada, "sam_mask")
    for (name, dy), (src, slot) in zip((("M^c (cross-attention)", 300), ("M^SAM", 610), ("M (adaptive)", 920)),
                                       ((mc, 1), (seg, 0), (ada, 0)), strict=True):
        m2i = w.node("MaskToImage", (x + 420, y + dy), [], inputs=[("mask", "MASK")], outputs=[("IMAGE", "IMAGE")],
                     size=(200, 50))
        prev = w.node("PreviewImage", (x + 640, y + dy), [], inputs=[("images", "IMAGE")], title=f"Preview: {name}",
                      size=(220, 270))
        w.link(src, slot, m2i, "mask"); w.link(m2i, 0, prev, "images")
    return ada
