"""Converting a UI-format workflow (what users drag in and share) to an API-format prompt.

This is what ComfyUI's frontend does in ``graphToPrompt`` before it queues a workflow; the
server only executes API prompts (``{node_id: {"class_type", "inputs"}}``). The conversion
reads the node definitions (``INPUT_TYPES``) of the running host, so a workflow whose widget
values no longer fit a node's inputs is reported, not silently shifted.

Frontend-only nodes are resolved as the frontend does: ``Note``/``MarkdownNote`` are dropped,
``Reroute`` passes its input through, a ``PrimitiveNode`` becomes the constant it holds,
muted nodes (mode 2) are dropped, bypassed nodes (mode 4) pass their first input of the
matching type through. Subgraphs (workflow version 0.4's ``definitions.subgraphs``) are expanded as the
frontend expands them: each subgraph node's inner nodes take the ids ``<subgraph node id>:<inner id>``
(nested: ``a:b:c``), and the links through its input and output nodes are joined up.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
SEED_NAMES = {"seed", "noise_seed"}
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "upload")
MODE_MUTED, MODE_BYPASSED = 2, 4


class WorkflowError(ValueError):
    """The workflow cannot be converted against the host's node definitions."""


def widget_inputs(input_types: dict[str, dict[str, Any]]) -> list[tuple[str, int, bool]]:
    """The widget inputs of a node definition in widget order, each with its slot count and
    whether it is optional.

    A seed-like INT with "control after generate" and an upload combo take one more slot in
    ``widgets_values`` without being an input.
    """
    out = []
    for section in ("required", "optional"):
        for name, spec in input_types.get(section, {}).items():
            kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
            if not (isinstance(kind, list) or kind in WIDGET_TYPES) or options.get("forceInput"):
                continue
            extra = options.get("control_after_generate", kind == "INT" and name in SEED_NAMES)
            extra = bool(extra) or any(options.get(flag) for flag in UPLOAD_FLAGS)
            out.append((name, 2 if extra else 1, section == "optional"))
    return out


SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = -10, -20  # the ids of a subgraph's input and output nodes
LINK_FIELDS = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")


def flatten_subgraphs(workflow: dict[str, Any]) -> dict[str, Any]:
    """The workflow with every subgraph node replaced by its inner nodes (ids ``<node>:<inner>``), joined to the
    outside through the subgraph's input and output nodes; a workflow without subgraphs as it is."""
    definitions = {d["id"]: d for d in (workflow.get("definitions") or {}).get("subgraphs", [])}
    if not definitions:
        return workflow
    ids = itertools.count(1)
    nodes: dict[str, dict] = {}
    links: list[dict] = []

    def as_dict(link) -> dict:
        return dict(link) if isinstance(link, dict) else dict(zip(LINK_FIELDS, link, strict=False))

    def expand(graph_nodes: list, graph_links: list, prefix: str, depth: int):
        """Copy a graph's nodes into ``nodes``; return its boundary: per input slot the inner sockets it feeds,
        per output slot the inner socket that gives it."""
        if depth > 32:
            raise WorkflowError("subgraphs nested more than 32 deep (a subgraph that contains itself?)")
        instances = {}
        for node in graph_nodes:
            new_id = f"{prefix}{node['id']}"
            if node["type"] in definitions:
                inner = definitions[node["type"]]
                instances[node["id"]] = expand(inner["nodes"], inner.get("links", []), new_id + ":", depth + 1)
            else:
                copied = copy.deepcopy(node)
                copied["id"] = new_id
                for inp in copied.get("inputs", []):
                    inp["link"] = None
                nodes[new_id] = copied
        feeds: dict[int, list[tuple[str, int]]] = {}
        gives: dict[int, tuple[str, int]] = {}
        for link in map(as_dict, graph_links):
            origin, target = link["origin_id"], link["target_id"]
            if origin == SUBGRAPH_INPUT:
                sources = None
            elif origin in instances:
                sources = instances[origin][1].get(link["origin_slot"])
                if sources is None:
                    continue  # a subgraph output nothing inside gives
            else:
                sources = (f"{prefix}{origin}", link["origin_slot"])
            if target == SUBGRAPH_OUTPUT:
                if sources is not None:
                    gives[link["target_slot"]] = sources
                continue
            targets = instances[target][0].get(link["target_slot"], []) if target in instances else \
                [(f"{prefix}{target}", link["target_slot"])]
            if sources is None:
                feeds.setdefault(link["origin_slot"], []).extend(targets)
                continue
            for node_id, slot in targets:
                if node_id not in nodes or slot >= len(nodes[node_id].get("inputs", [])):
                    continue
                new = {**link, "id": next(ids), "origin_id": sources[0], "origin_slot": sources[1],
                       "target_id": node_id, "target_slot": slot}
                links.append(new)
                nodes[node_id]["inputs"][slot]["link"] = new["id"]
        return feeds, gives

    expand(workflow["nodes"], workflow.get("links", []), "", 0)
    return {**workflow, "nodes": list(nodes.values()), "definitions": {},
            "links": [[lk[f] for f in LINK_FIELDS] for lk in links]}


def ui_to_prompt(workflow: dict[str, Any], node_classes: dict[str, type]) -> dict[str, dict[str, Any]]:
    """Convert a UI-format workflow to an API prompt, using the host's ``node_classes`` (subgraphs expanded).

    Raises:
        WorkflowError: unknown node type, or widget values that do not match the inputs.
    """
    workflow = flatten_subgraphs(workflow)
    nodes = {str(n["id"]): n for n in workflow["nodes"]}
    links = {link[0]: (str(link[1]), link[2]) for link in workflow.get("links", [])}

    def source(link_id: int, want_type: str | None = None) -> tuple[str, int] | Any | None:
        """Follow a link back through reroutes, primitives and bypassed nodes."""
        node_id, slot = links[link_id]
        node = nodes[node_id]
        if node["type"] == "Reroute" or node.get("mode") == MODE_BYPASSED:
            out_type = node["outputs"][slot]["type"] if node.get("outputs") else want_type
            for inp in node.get("inputs", []):
                if inp.get("link") is not None and (node["type"] == "Reroute" or inp["type"] == out_type):
                    return source(inp["link"], out_type)
            return None
        if node["type"] == "PrimitiveNode":
            return ("value", node["widgets_values"][0])
        if node.get("mode") == MODE_MUTED:
            return None
        return ("link", [node_id, slot])

    prompt: dict[str, dict[str, Any]] = {}
    for node_id, node in nodes.items():
        kind = node["type"]
        if kind in FRONTEND_ONLY or node.get("mode") in (MODE_MUTED, MODE_BYPASSED):
            continue
        if kind not in node_classes:
            raise WorkflowError(f"node #{node_id} is of type '{kind}', which this ComfyUI does not have "
                                "(a missing custom node pack?).")
        inputs: dict[str, Any] = {}
        values = node.get("widgets_values", [])
        widgets = widget_inputs(node_classes[kind].INPUT_TYPES())
        if isinstance(values, dict):
            inputs.update({name: values[name] for name, _, _ in widgets if name in values})
        else:
            expected = sum(slots for _, slots, _ in widgets)
            # A workflow saved before a node gained optional widgets at its end: those take their
            # defaults, as in the frontend.
            given = widgets
            while sum(slots for _, slots, _ in given) > len(values) and given and given[-1][2]:
                given = given[:-1]
            if sum(slots for _, slots, _ in given) != len(values):
                names = ", ".join(name for name, _, _ in widgets)
                raise WorkflowError(f"node #{node_id} ({kind}) has {len(values)} widget values but its inputs "
                                    f"({names}) take {expected}: the workflow was saved for another version of "
                                    "the node. Re-create the node and save the workflow again.")
            at = 0
            for name, slots, _ in given:
                inputs[name] = values[at]
                at += slots
        for inp in node.get("inputs", []):
            if inp.get("link") is None:
                continue
            found = source(inp["link"], inp.get("type"))
            if found is not None:
                inputs[inp["name"]] = found[1]
        prompt[node_id] = {"class_type": kind, "inputs": inputs, "_meta": {"title": node.get("title", kind)}}
    return prompt
