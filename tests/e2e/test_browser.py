"""The real client: ComfyUI's server on loopback with the pack, its real frontend in headless Chromium.

The server serves the pack's nodes and workflow templates (marked ``install``: CI's second pass runs
them with the pack installed in the host's ``custom_nodes/``, started as the README's main command
starts it). Each shipped workflow is loaded into the frontend (the frontend converts it, as a user's
browser does), checked for missing node types, switched to the tiny models, and the API prompt the
frontend makes of it validated by ComfyUI's own validation (no widget error); two of them
(``EXECUTED_IN_BROWSER``) are queued and their images received from the server's history, the others
run in-process (host/test_workflows.py). Needs Debian's ``chromium`` and Python's ``playwright``
(installed by tests/setup_and_run.sh where apt works); skipped with the reason otherwise. Set
``LR_BROWSER_SHOTS`` to a folder to keep a screenshot of each loaded graph.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

import comfy_servers
import numpy as np
import pytest
from workflow_prompts import EXECUTED_IN_BROWSER, EXPECTED_IMAGES, write_input_images

# This module starts interpreters or servers that load models of their own: the session's tiny models are
# dropped first (memory_budget.py: a worker and what it starts share 7 GiB).
pytestmark = pytest.mark.usefixtures("session_models_released")

PACK_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((PACK_ROOT / "workflows").glob("*.json"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

SHRINK_JS = """(tiny) => {
  const set = (node, name, value) => { const w = (node.widgets || []).find(w => w.name === name); if (w) w.value = value; };
  const inner = [...(app.graph.subgraphs?.values?.() ?? [])].flatMap(g => g._nodes ?? g.nodes ?? []);
  for (const node of [...app.graph._nodes, ...inner]) {  // the top graph's nodes and every subgraph's
    const title = node.title || node.type;
    if (node.type === "PrimitiveInt")  // a compact workflow's knobs
      set(node, "value", title.startsWith("mask_start") ? 4 : title.startsWith("lambda") ? 2 : node.widgets[0].value);
    if (node.type === "CheckpointLoaderSimple")
      set(node, "ckpt_name", title.startsWith("Personalized") ? tiny.personalized : tiny.vanilla);
    if (node.type === "LoraLoader") set(node, "lora_name", tiny.lora);
    if (node.type === "UNETLoader") set(node, "unet_name", "tiny_flux_3072.safetensors");
    if (node.type === "LoraLoaderModelOnly") set(node, "lora_name", "tiny_flux_lora.safetensors");
    if (node.type === "VAELoader") set(node, "vae_name", "tiny_flux_vae.safetensors");
    if (node.type === "DualCLIPLoader") {
      set(node, "clip_name1", "placeholder_clip_l.safetensors"); set(node, "clip_name2", "placeholder_t5xxl.safetensors"); }
    if (node.type === "CLIPLoader") set(node, "clip_name", "placeholder_t5xxl.safetensors");  // Chroma's, Qwen-Image's
    if (node.type === "TripleCLIPLoader") {  // SD3's (validated, not loaded: the names must exist)
      set(node, "clip_name1", "placeholder_clip_l.safetensors"); set(node, "clip_name2", "placeholder_clip_l.safetensors");
      set(node, "clip_name3", "placeholder_t5xxl.safetensors"); }
    if (node.type === "EmptySD3LatentImage") { set(node, "width", 64); set(node, "height", 64); }
    if (node.type === "LR_SAMLoader") set(node, "sam_name", tiny.sam);
    if (node.type === "EmptyLatentImage" || node.type === "ImageScale") { set(node, "width", 64); set(node, "height", 64); }
    set(node, "steps", 6); set(node, "lambda1", 2); set(node, "lambda2", 2); set(node, "mask_start", 4);
    set(node, "steps_to_average", 3);
    if (node.type === "LR_ReferencePalette" || node.type === "LR_PickAndDrawSampler") {
      set(node, "appearance_start", 2); set(node, "appearance_end", 4); }
    if (node.type === "LR_PickAndDrawSampler") {
      set(node, "layout_start", 0); set(node, "layout_end", 1); set(node, "iterations", 1); }
    if (node.type === "LR_LayoutTemplate") set(node, "last_step", 1);
    if (node.type === "LR_NullTextInversion") set(node, "iterations", 2);
    for (const w of node.widgets || [])
      if (typeof w.value === "string" && w.value.includes("embedding:my_vase"))
        w.value = w.value.replaceAll("embedding:my_vase", "embedding:tiny_concept");
  }
}"""


@pytest.fixture(scope="module")
def server(tiny_files, tiny_xl_files, tiny_sam, tmp_path_factory):
    from PIL import Image

    base = tmp_path_factory.mktemp("server")
    comfy_servers.link_models(base, [
        ("checkpoints", tiny_files["tiny_vanilla"]), ("checkpoints", tiny_files["tiny_personalized"]),
        ("loras", tiny_files["lora"]), ("embeddings", tiny_files["embedding"]), ("sams", tiny_sam),
        ("checkpoints", tiny_xl_files["tiny_xl_vanilla"]), ("checkpoints", tiny_xl_files["tiny_xl_personalized"]),
        ("loras", tiny_xl_files["lora"])])
    for name in ("reference.png", "layout.png"):
        Image.new("RGB", (96, 80), (120, 60, 200)).save(base / "input" / name)
    started = comfy_servers.Server(base)
    try:
        try:
            started.wait()
        except RuntimeError as error:
            pytest.fail(str(error))
        yield started.url, base
    finally:
        started.stop()


@pytest.fixture(scope="module")
def page(server):
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright", reason="Python's playwright is not installed (pip install playwright)")
    from playwright.sync_api import sync_playwright

    url, _ = server
    # A user who has seen the first-run tour: no template browser opening over the canvas once the app has loaded
    # (frontend 1.49 opens it a moment after load), through the server's own settings route.
    request = urllib.request.Request(url + "/settings/Comfy.TutorialCompleted", data=b"true", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 200
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(url)
        page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        yield page
        browser.close()


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def history(url: str) -> dict:
    return get_json(url + "/history")


@pytest.mark.install
def test_server_serves_the_packs_nodes(server):
    """The server has loaded the pack (from the host's custom_nodes/ where it is installed there): every
    node the pack registers, as a custom node."""
    import asyncio

    from comfyui_layout_retouch.nodes import LayoutRetouchExtension

    url, _ = server
    info = get_json(url + "/object_info")
    ours = {name for name in info if name.startswith("LR_")}
    nodes = asyncio.run(LayoutRetouchExtension().get_node_list())
    assert ours == {node.GET_SCHEMA().node_id for node in nodes} and len(ours) == 14
    assert {info[name]["python_module"] for name in ours} == {"custom_nodes.comfyui-layout-retouch"}


@pytest.mark.install
def test_template_browser_lists_the_workflows(server):
    url, _ = server
    templates = get_json(url + "/api/workflow_templates")
    assert sorted(templates["comfyui-layout-retouch"]) == [p.stem for p in WORKFLOWS]
    name = "layout_retouch_full_dreambooth"
    served = get_json(f"{url}/api/workflow_templates/comfyui-layout-retouch/{name}.json")
    assert served == json.loads((PACK_ROOT / "workflows" / f"{name}.json").read_text())


SHOT_SCALE = 0.9  # the canvas zoom of a screenshot: node titles, widgets and notes stay readable
BOUNDS_JS = """() => {
  const b = [1e9, 1e9, -1e9, -1e9], grow = (x, y, w, h) => {
    b[0] = Math.min(b[0], x); b[1] = Math.min(b[1], y); b[2] = Math.max(b[2], x + w); b[3] = Math.max(b[3], y + h); };
  for (const n of app.graph._nodes) grow(n.pos[0], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT, n.size[0],
                                          n.size[1] + LiteGraph.NODE_TITLE_HEIGHT);
  for (const g of app.graph._groups || []) grow(...(g._bounding || g.bounding));
  return b;
}"""


def screenshot(page, path: Path) -> None:
    """The whole graph at ``SHOT_SCALE`` in a viewport of its size, without the minimap, the canvas info and the
    zoom menu (the thumbnails in workflows/ are these pictures as JPEG)."""
    page.keyboard.press("Escape")
    page.evaluate("""async () => {
      const settings = app.extensionManager?.setting;
      for (const [id, value] of [["Comfy.Minimap.Visible", false], ["Comfy.Graph.CanvasInfo", false],
                                  ["Comfy.Graph.CanvasMenu", false]])
        if (settings) await settings.set(id, value);
      app.canvas.show_info = false;
    }""")
    left, top, right, bottom = page.evaluate(BOUNDS_JS)
    margin = 40
    size = {"width": min(int((right - left + 4 * margin) * SHOT_SCALE), 4000),
            "height": min(int((bottom - top + 4 * margin) * SHOT_SCALE), 2400)}
    before = page.viewport_size
    page.set_viewport_size(size)
    try:
        time.sleep(1.0)  # the canvas follows the window's size
        page.evaluate("([s, x, y]) => { const c = app.canvas; c.resize(); c.ds.scale = s; c.ds.offset = [x, y];"
                      " c.show_info = false; c.setDirty(true, true); }", [SHOT_SCALE, -left + margin, -top + margin])
        time.sleep(0.5)
        canvas = page.locator("canvas#graph-canvas")
        box = canvas.bounding_box()
        clip = {"x": box["x"], "y": box["y"], "width": min(box["width"], size["width"] - box["x"]),
                "height": min(box["height"], size["height"] - box["y"])}
        page.screenshot(path=str(path), clip=clip)
    finally:
        page.set_viewport_size(before)
        time.sleep(0.5)


def same_expansion(front: dict, ours: dict, comfy) -> bool:
    """The frontend's API prompt and the runner's: the same node ids (``<subgraph node>:<inner>``), types and
    inputs; an input only the frontend writes must hold the node's default (an optional widget the saved
    workflow predates, which the node then takes anyway)."""
    assert sorted(front) == sorted(ours)
    for node_id, node in front.items():
        assert node["class_type"] == ours[node_id]["class_type"], node_id
        defaults = {k: v[1].get("default") for section in ("required", "optional") for k, v in
                    comfy.NODE_CLASS_MAPPINGS[node["class_type"]].INPUT_TYPES().get(section, {}).items()
                    if len(v) > 1 and isinstance(v[1], dict)}
        extra = {k: v for k, v in node["inputs"].items() if k not in ours[node_id]["inputs"]}
        assert all(defaults.get(k) == v for k, v in extra.items()), (node_id, extra)
        assert {k: v for k, v in node["inputs"].items() if k not in extra} == ours[node_id]["inputs"], node_id
    return True


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_in_the_real_frontend(comfy, server, page, tiny_files, tiny_sam, tiny_xl_files, tiny_flux_files, path):
    from comfyui_layout_retouch.headless import executor, ui_format

    url, base = server
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", json.loads(path.read_text()))
    missing = page.evaluate("() => app.graph._nodes.filter(n => !LiteGraph.registered_node_types[n.type])"
                            ".map(n => n.type)")
    assert missing == [], f"missing node types: {missing}"
    workflow = json.loads(path.read_text())
    if workflow.get("definitions", {}).get("subgraphs"):  # the headless runner expands them as the frontend does
        front = page.evaluate("async () => (await app.graphToPrompt()).output")
        assert same_expansion(front, ui_format.ui_to_prompt(workflow, comfy.NODE_CLASS_MAPPINGS), comfy)
    if os.environ.get("LR_BROWSER_SHOTS"):
        screenshot(page, Path(os.environ["LR_BROWSER_SHOTS"]) / f"{path.stem}.png")
    xl = "_xl" if "sdxl" in path.stem else ""  # the SDXL workflows get the tiny SDXL checkpoints and LoRA
    page.evaluate(SHRINK_JS, {"vanilla": f"tiny{xl}_vanilla.safetensors", "personalized": f"tiny{xl}_personalized"
                              ".safetensors", "lora": "tiny_xl_lora.safetensors" if xl else tiny_files["lora"].name,
                              "sam": tiny_sam.name})
    # The API prompt the frontend makes of the graph, through ComfyUI's validation (the server's own code,
    # here in-process with the same nodes and model names): no widget error, no node in red. (In a thread of
    # its own: Playwright's event loop runs in this one.)
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    write_input_images(comfy)
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        assert thread.submit(executor.validate, prompt).result()
    if path.name not in EXECUTED_IN_BROWSER:
        return
    before = set(history(url))
    page.evaluate("async () => { await app.queuePrompt(0, 1); }")
    errors = page.evaluate("() => app.lastNodeErrors")
    assert not errors, f"nodes in red: {errors}"
    deadline = time.time() + 300
    while time.time() < deadline:
        new = {k: v for k, v in history(url).items() if k not in before}
        if new and all(v.get("status", {}).get("completed") or v.get("status", {}).get("status_str") == "error"
                       for v in new.values()):
            break
        time.sleep(1)
    else:
        pytest.fail(f"no result in 300 s: {''.join(p.read_text() for p in base.glob('server-*.log'))[-2000:]}")
    (entry,) = new.values()
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = {kind: [i for node in entry["outputs"].values() for i in node.get("images", []) if i["type"] == kind]
              for kind in ("output", "temp")}
    assert (len(images["output"]), len(images["temp"])) == EXPECTED_IMAGES[path.name]
    from PIL import Image

    for kind, shown in images.items():
        for image in shown:
            with urllib.request.urlopen(f"{url}/view?filename={image['filename']}&subfolder={image['subfolder']}"
                                        f"&type={kind}", timeout=10) as r:
                assert r.status == 200
                pixels = np.asarray(Image.open(r))
            assert pixels.shape[:2] == (64, 64)
            if kind == "output":
                assert pixels.shape == (64, 64, 3) and pixels.std() > 0


def open_help_from_the_node_library(page) -> None:
    """Frontend 1.27 (ComfyUI 0.3.64): the node library's tree, the leaf's help button."""
    page.evaluate("() => app.extensionManager.command.execute('Workspace.ToggleSidebarTab.node-library')")
    search = page.locator(".node-library-search-box input, .side-bar-panel input").first
    search.fill("Step-Blended KSampler")
    leaf = page.locator(".node-lib-tree-explorer .p-tree-node-label", has_text="Step-Blended KSampler").first
    leaf.hover()
    leaf.locator("xpath=ancestor::*[contains(@class, 'p-tree-node-content')]").locator(".help-button").first.click()


def open_help_from_the_selection_toolbox(page) -> None:
    """Frontend 1.49 (ComfyUI 0.33.0): the node library's hover shows a preview, not the page; the page is the
    properties panel's Info tab, which the selection toolbox's Node Info button opens for the selected node (on a
    new blank workflow's canvas)."""
    page.evaluate("() => app.extensionManager.command.execute('Comfy.NewBlankWorkflow')")
    page.wait_for_function("() => app.graph && app.graph._nodes.length === 0")
    page.evaluate("() => { const n = LiteGraph.createNode('LR_StepBlendedKSampler'); n.pos = [300, 200];"
                  " app.graph.add(n); app.canvas.selectNode(n); app.canvas.setDirty(true, true); }")
    page.get_by_role("button", name="Node Info").first.click()


@pytest.mark.parametrize("open_help", [
    pytest.param(open_help_from_the_node_library, marks=pytest.mark.host("0.3.64"), id="node library"),
    pytest.param(open_help_from_the_selection_toolbox, marks=pytest.mark.host("0.33.0"), id="selection toolbox")])
def test_a_nodes_help_page_in_the_frontend(server, page, open_help):
    """A node's help, where the host's own frontend shows it: the frontend fetches the page the pack serves
    (/extensions/comfyui-layout-retouch/docs/<node id>.md) and shows it, hand-written part and inputs."""
    url, _ = server
    with urllib.request.urlopen(url + "/extensions/comfyui-layout-retouch/docs/LR_StepBlendedKSampler.md") as r:
        assert "## When to use" in r.read().decode()
    page.keyboard.press("Escape")  # a menu a workflow's test left open
    open_help(page)
    page.get_by_text("one noise, one schedule, two models", exact=False).first.wait_for(timeout=30_000)
    assert page.get_by_text("From the paper").first.is_visible()
    assert page.get_by_text("lambda1").first.is_visible()
    if os.environ.get("LR_BROWSER_SHOTS"):
        page.screenshot(path=str(Path(os.environ["LR_BROWSER_SHOTS"]) / "help_LR_StepBlendedKSampler.png"))
