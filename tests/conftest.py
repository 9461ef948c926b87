"""What every test shares: the pack importable as ``comfyui_layout_retouch``, nothing of ComfyUI.

The tests are split by what they need: ``unit/`` only torch, numpy and scipy (this conftest and
theirs never look for ComfyUI); ``host/`` the real ComfyUI host with tiny models (``comfy_host.py``);
``e2e/`` the server, the browser and subprocess runs. ``pytest.ini`` sits here so that pytest's
root is this folder: the pack's own folder (whose ``__init__.py`` makes it a package, and whose
name may hold hyphens or dots) is then never collected, imported or put on ``sys.path``, where
its ``nodes/`` would shadow ComfyUI's ``nodes.py``.

With ``LR_NO_SKIPS=1`` (CI) a skipped test fails the run: skipped is not passed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

# Each test module's peak memory, printed and held to the suite's budget (memory_budget.py says how).
pytest_plugins = ["memory_budget", "pytester"]

PACK_ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "comfyui_layout_retouch"


def _import_pack():
    """Import the pack under its Python name, whatever its folder is called."""
    spec = importlib.util.spec_from_file_location(PACK_NAME, PACK_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(PACK_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


if PACK_NAME not in sys.modules:
    _import_pack()

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # one worker per core: each computes on its own core
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

MEASURED: list[str] = []
SKIPPED: list[str] = []
OTHER_HOSTS: list[str] = []  # tests of another host's shape, deselected here
NO_SKIPS = os.environ.get("LR_NO_SKIPS") == "1"


@pytest.fixture
def measured(request):
    """Record a measured figure; the suite prints them all in its summary. Kept in the test's report, so
    that figures measured in pytest-xdist's workers reach the summary too."""
    return lambda line: request.node.user_properties.append(("measured", line))


# The host's session fixtures, defined here once for host/ and e2e/ (tests/comfy_host.py says why). Each
# imports comfy_host only when a test asks for it: unit/ never looks for ComfyUI.
@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """ComfyUI's ``nodes`` module, the host loaded with the pack through its custom-node loader."""
    import comfy_host

    return comfy_host.load_host(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_files(comfy, tmp_path_factory):
    """Tiny SD1.x model files in model folders registered with ComfyUI (comfy_host.sd1_files)."""
    import comfy_host

    return comfy_host.sd1_files(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_sam(tiny_files):
    """A tiny Segment Anything checkpoint in a registered ``sams`` folder."""
    import comfy_host

    return comfy_host.sam_file(tiny_files)


@pytest.fixture(scope="session")
def tiny(comfy, tiny_files):
    """The tiny SD1.x models loaded through ComfyUI's stock loaders, on first use (dropped before the modules that
    load models of their own, ``session_models_released``, and loaded again when a later test asks)."""
    import comfy_host

    return comfy_host.Tiny(comfy)


@pytest.fixture(scope="session")
def tiny_xl_files(comfy, tmp_path_factory):
    """Tiny SDXL model files in registered model folders (comfy_host.sdxl_files)."""
    import comfy_host

    return comfy_host.sdxl_files(tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_xl(comfy, tiny_xl_files):
    """The tiny SDXL models loaded through ComfyUI's checkpoint loader (comfy_host.TinyXL), for one module: their
    memory (2.8 GB) is freed when it ends."""
    import comfy_host

    models = comfy_host.TinyXL(comfy, tiny_xl_files)
    yield models
    models.release()
    comfy_host.free_memory()


@pytest.fixture(scope="module")
def session_models_released(comfy):
    """For a module that loads large models of its own (checkpoints through workflows, servers, the benchmark's
    interpreters): the session's tiny models are dropped first, so that they are not held beside them (a later
    test that uses them loads them again)."""
    import comfy_host

    comfy_host.release_session_models()
    yield
    comfy_host.free_memory()


@pytest.fixture(autouse=True, scope="module")
def _free_memory_after_each_module():
    """What ComfyUI keeps loaded (its list of loaded models holds every model a module sampled with: on the CPU it
    never needs the room) is dropped when a module ends, and the freed memory handed back: a worker runs many."""
    yield
    if "comfy.model_management" in sys.modules:
        import comfy_host

        comfy_host.free_memory()


@pytest.fixture(autouse=True)
def _inference_mode():
    """Run each test as ComfyUI runs nodes: under ``torch.inference_mode``."""
    import torch

    with torch.inference_mode():
        yield


def host_version() -> str | None:
    """The version of the ComfyUI the tests run against (its ``comfyui_version.py``), None without one."""
    import re

    import provide_host

    try:
        found = provide_host.find()
    except FileNotFoundError:
        return None
    version = found / "comfyui_version.py" if found else None
    match = re.search(r"__version__\s*=\s*[\"']([^\"']+)", version.read_text()) if version and version.is_file() else None
    return match.group(1) if match else None


# The modules that take longest (a worker's seconds on CI's 2-core machine, 0.3.64 and 0.33.0 alike), run first in
# this order: the last modules to start are then short ones, and both workers end together. (pytest-xdist's own
# order, by the number of tests in a file, started the two-minute, one-test GPU check last; setup_and_run.sh turns
# it off.)
SLOWEST = ("host/test_sdxl.py", "host/test_workflows.py", "e2e/test_gpu_check.py", "host/test_pick_and_draw.py",
           "host/test_misuse_through_the_executor.py", "host/test_source_records.py", "e2e/test_browser.py",
           "host/test_step_blend.py", "e2e/test_eval_runs.py", "e2e/test_runner.py", "host/test_swap.py",
           "host/test_dits.py", "host/test_multi_reference.py", "e2e/test_servers.py")


def pytest_collection_modifyitems(config, items):
    """The slowest modules first (:data:`SLOWEST`), then the rest as collected. A test marked ``host("0.3.64")``
    checks what one host has (an internal in that release's shape): it runs on that host and is deselected on
    another, named in the summary (CI runs every host a marker names: unit/test_markers.py)."""
    rank = {module: i for i, module in enumerate(SLOWEST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(SLOWEST)))  # stable: collection order kept
    marked = [item for item in items if item.get_closest_marker("host")]
    if not marked:
        return
    version = host_version()
    other = [item for item in marked if version not in item.get_closest_marker("host").args]
    if other:
        OTHER_HOSTS.extend(f"{item.nodeid} (ComfyUI {', '.join(item.get_closest_marker('host').args)})"
                           for item in other)
        config.hook.pytest_deselected(items=other)
        items[:] = [item for item in items if item not in other]
        if hasattr(config, "workeroutput"):  # a pytest-xdist worker: its controller prints the summary
            config.workeroutput["lr_other_hosts"] = list(OTHER_HOSTS)


def pytest_runtest_logreport(report):
    if report.when == "call":
        MEASURED.extend(value for key, value in report.user_properties if key == "measured")
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        SKIPPED.append(f"{report.nodeid}: {reason}")


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: absent where it is not installed
def pytest_testnodedown(node, error):
    """pytest-xdist's controller: the tests its workers deselected for another host (every worker collects them)."""
    for line in getattr(node, "workeroutput", {}).get("lr_other_hosts", []):
        if line not in OTHER_HOSTS:
            OTHER_HOSTS.append(line)


def pytest_sessionfinish(session, exitstatus):
    if NO_SKIPS and SKIPPED and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if OTHER_HOSTS:
        terminalreporter.section(f"deselected: {len(OTHER_HOSTS)} tests of another host's shape (run on that host)")
        for line in OTHER_HOSTS:
            terminalreporter.write_line(line)
    if MEASURED:
        terminalreporter.section("measured")
        for line in MEASURED:
            terminalreporter.write_line(line)
    no_host = [line for line in SKIPPED if "no ComfyUI found" in line]
    if no_host:
        reason = no_host[0].split(": ", 1)[1]
        terminalreporter.write_line(f"host tests: {len(no_host)} skipped, {reason}", yellow=True)
    others = [line for line in SKIPPED if line not in no_host]
    if others:
        terminalreporter.section("skipped", yellow=True)
        for line in others:
            terminalreporter.write_line(line)
    if NO_SKIPS and SKIPPED:
        terminalreporter.write_line(f"{len(SKIPPED)} skipped: a failure here (LR_NO_SKIPS=1)", red=True)


@pytest.fixture(scope="session")
def tiny_flux(comfy):
    """Two tiny Flux.1-dev transformers built with ComfyUI's Flux classes, and Flux-shaped prompts."""
    import comfy_host

    return comfy_host.TinyFlux()


@pytest.fixture(scope="session")
def tiny_flux_files(comfy, tmp_path_factory):
    """Flux files in registered model folders (comfy_host.flux_files): a 3072-wide transformer of one double and
    one single block, LoRAs, a Flux VAE, the text encoders' placeholders."""
    import comfy_host

    return comfy_host.flux_files(tmp_path_factory)
