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
