"""Compact variants of the full SD1.5 and SDXL workflows: each stage one ComfyUI subgraph (Layout, Reference,
Retouch, and the prompts' encoding), with the models, the prompts, the reference photo and the main knobs (lambda1, lambda2, mask_start)
outside, so an artist sees a handful of nodes and can open a stage to see the rest.

Made from the full workflows in the frontend's subgraph format (workflow version 0.4, ``definitions.subgraphs``,
each stage's boundary links through its input node -10 and output node -20), as its "Convert to Subgraph"
writes it: one subgraph input per input socket fed from outside, one output per inner output read outside.
Run: python tools/build_compact_workflows.py workflows/
"""

import copy
import json
import sys
import uuid
from pathlib import Path

# compact workflow: the full workflow it is made from
SOURCES = {"layout_retouch_compact_dreambooth": "layout_retouch_full_dreambooth",
           "layout_retouch_compact_sdxl_dreambooth": "layout_retouch_full_sdxl_dreambooth"}
# subgraph name: the title of the full workflow's group whose nodes it takes (the photo's loader stays outside),
# and the node types it takes there (None: all); the prompts' encoders make a fourth, small subgraph.
STAGES = (("Prompts", "Prompts and models", {"CLIPTextEncode"}), ("Layout", "Stage 1", None),
          ("Reference", "Reference inversion", None), ("Retouch", "Stage 2", None))
# Where each subgraph node sits: left to right, the reference below the layout, beside the photo.
PLACES = {"Prompts": (440, 0), "Layout": (1120, 0), "Reference": (1120, 520), "Retouch": (1560, 0)}
KEEP_OUTSIDE = {"LoadImage"}
# The main knobs, moved out as Int primitives: (node type, widget, its index in widgets_values, title)
KNOBS = (("LR_StepBlendedKSampler", "lambda1", 3, "lambda1 (vanilla steps of the layout)"),
         ("LR_MultiSourceAttentionSwap", "lambda2", 0, "lambda2 (steps that copy the layout)"),
         ("LR_MultiSourceAttentionSwap", "mask_start", 1, "mask_start (first step of the mask blend)"))
NAMESPACE = uuid.UUID("6f1d2a52-5d1b-4e55-9a53-1c1f3d0e9b7a")  # the subgraphs' ids: the same on every run


def _inside(node: dict, bounding: list) -> bool:
    x, y, w, h = bounding
    return x <= node["pos"][0] <= x + w and y <= node["pos"][1] <= y + h


def _socket(name: str, type_: str, **more) -> dict:
    return {"name": name, "type": type_, "localized_name": name, **more}


def add_knobs(wf: dict) -> None:
    """Each knob's widget fed by an Int primitive left of the graph, titled for the runner's --set."""
    x = min(n["pos"][0] for n in wf["nodes"]) - 400
    for row, (kind, widget, index, title) in enumerate(KNOBS):
        target = next(n for n in wf["nodes"] if n["type"] == kind)
        wf["last_node_id"] += 1
        wf["last_link_id"] += 1
        nid, lid = wf["last_node_id"], wf["last_link_id"]
        wf["nodes"].append({"id": nid, "type": "PrimitiveInt", "pos": [x, 120 * row], "size": [340, 82], "flags": {},
                            "order": 0, "mode": 0, "inputs": [],
                            "outputs": [_socket("INT", "INT", links=[lid], slot_index=0)],
                            "title": title, "properties": {"Node name for S&R": "PrimitiveInt"},
                            "widgets_values": [target["widgets_values"][index], "fixed"]})
        target["inputs"].append(_socket(widget, "INT", widget={"name": widget}, link=lid))
        wf["links"].append([lid, nid, 0, target["id"], len(target["inputs"]) - 1, "INT"])


def to_subgraph(wf: dict, members: set[int], name: str) -> None:
    """Replace the nodes ``members`` of ``wf`` by one subgraph node named ``name``."""
    by_id = {n["id"]: n for n in wf["nodes"]}
    links = [list(link) for link in wf["links"]]
    inner = [n for n in wf["nodes"] if n["id"] in members]
    entering = [link for link in links if link[3] in members and link[1] not in members]
    leaving = [link for link in links if link[1] in members and link[3] not in members]
    sub_id = str(uuid.uuid5(NAMESPACE, f"{wf['_name']}/{name}"))
    wf["last_node_id"] += 1
    node_id = wf["last_node_id"]
    inputs, outputs, inner_links, outer_inputs, outer_outputs = [], [], [], [], []
    fed: dict[tuple[int, int], int] = {}  # an outer output read inside -> its input slot: one input per source
    for link in entering:
        lid, origin, oslot, target, tslot, type_ = link
        if (origin, oslot) not in fed:
            fed[(origin, oslot)] = len(inputs)
            socket_name = by_id[target]["inputs"][tslot]["name"]
            if any(i["name"] == socket_name for i in inputs):
                socket_name = f"{socket_name} ({by_id[origin].get('title', by_id[origin]['type'])})"
            inputs.append(_socket(socket_name, type_, id=str(uuid.uuid5(NAMESPACE, f"{sub_id}/in/{origin}/{oslot}")),
                                  linkIds=[], pos=[0, 20 + 20 * len(inputs)]))
            wf["last_link_id"] += 1
            outer_inputs.append(_socket(socket_name, type_, link=wf["last_link_id"]))
            outer = [wf["last_link_id"], origin, oslot, node_id, len(inputs) - 1, type_]
            for out in by_id[origin]["outputs"]:
                if lid in (out.get("links") or []):
                    out["links"] = [x for x in out["links"] if x != lid] + [outer[0]]
        else:
            outer = None
            for out in by_id[origin]["outputs"]:
                if lid in (out.get("links") or []):
                    out["links"] = [x for x in out["links"] if x != lid]
        slot = fed[(origin, oslot)]
        inner_links.append({"id": lid, "origin_id": -10, "origin_slot": slot, "target_id": target,
                            "target_slot": tslot, "type": type_})
        inputs[slot]["linkIds"].append(lid)
        link[:] = outer if outer is not None else [None] * 6
    sources: dict[tuple[int, int], int] = {}  # an inner output read outside -> its output slot
    read_outside = {(link[1], link[2]) for link in leaving}
    for link in leaving:
        lid, origin, oslot, target, tslot, type_ = link
        if (origin, oslot) not in sources:
            sources[(origin, oslot)] = len(outputs)
            out_name = by_id[origin]["outputs"][oslot]["name"]
            if sum(by_id[o]["outputs"][s]["name"] == out_name for o, s in read_outside) > 1:
                out_name = f"{out_name} ({by_id[origin].get('title', by_id[origin]['type'])})"
            outputs.append(_socket(out_name, type_, id=str(uuid.uuid5(NAMESPACE, f"{sub_id}/out/{origin}/{oslot}")),
                                   linkIds=[], pos=[0, 20 + 20 * len(outputs)]))
            outer_outputs.append(_socket(out_name, type_, links=[], slot_index=len(outer_outputs)))
        slot = sources[(origin, oslot)]
        wf["last_link_id"] += 1
        inner_links.append({"id": wf["last_link_id"], "origin_id": origin, "origin_slot": oslot, "target_id": -20,
                            "target_slot": slot, "type": type_})
        outputs[slot]["linkIds"].append(wf["last_link_id"])
        link[1], link[2] = node_id, slot
        outer_outputs[slot]["links"].append(lid)
    inner_links += [{"id": lid, "origin_id": o, "origin_slot": os, "target_id": t, "target_slot": ts, "type": ty}
                    for lid, o, os, t, ts, ty in links if o in members and t in members]
    for node in inner:  # inner output sockets list the inner links they feed
        for slot, out in enumerate(node.get("outputs", [])):
            out["links"] = [lk["id"] for lk in inner_links if lk["origin_id"] == node["id"] and lk["origin_slot"] == slot]
    xs, ys = [n["pos"][0] for n in inner], [n["pos"][1] for n in inner]
    wf["definitions"]["subgraphs"].append({
        "id": sub_id, "version": 1, "revision": 0, "config": {}, "name": name,
        "state": {"lastGroupId": 0, "lastNodeId": wf["last_node_id"], "lastLinkId": wf["last_link_id"],
                  "lastRerouteId": 0},
        "inputNode": {"id": -10, "bounding": [min(xs) - 260, min(ys), 160, 40 + 20 * len(inputs)]},
        "outputNode": {"id": -20, "bounding": [max(xs) + 420, min(ys), 160, 40 + 20 * len(outputs)]},
        "inputs": inputs, "outputs": outputs, "widgets": [], "nodes": copy.deepcopy(inner), "groups": [],
        "links": inner_links, "extra": {}})
    wf["nodes"] = [n for n in wf["nodes"] if n["id"] not in members]
    wf["nodes"].append({"id": node_id, "type": sub_id, "pos": list(PLACES[name]), "size": [340, 40 + 22 * max(
        len(inputs), len(outputs))], "flags": {}, "order": 0, "mode": 0, "title": name, "inputs": outer_inputs,
        "outputs": outer_outputs, "properties": {}, "widgets_values": []})
    wf["links"] = [link for link in links if link[0] is not None and not (link[1] in members or link[3] in members)]


def compact(full: dict, name: str) -> dict:
    wf = copy.deepcopy(full)
    wf["_name"] = name
    wf["definitions"] = {"subgraphs": []}
    add_knobs(wf)
    groups = {g["title"]: g for g in wf["groups"]}
    for stage, title, types in STAGES:
        group = next(g for t, g in groups.items() if t.startswith(title))
        members = {n["id"] for n in wf["nodes"] if _inside(n, group["bounding"]) and n["type"] not in KEEP_OUTSIDE
                   and n["type"] not in ("MarkdownNote", "Note", "PrimitiveInt") and (types is None or n["type"] in types)}
        to_subgraph(wf, members, stage)
    wf["groups"] = [g for g in wf["groups"] if g["title"].startswith("Prompts")]
    del wf["_name"]
    return wf


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    for name, source in SOURCES.items():
        wf = compact(json.loads((folder / f"{source}.json").read_text()), name)
        (folder / f"{name}.json").write_text(json.dumps(wf, indent=2) + "\n")
        print(name, len(wf["nodes"]), "nodes")  # noqa: T201
