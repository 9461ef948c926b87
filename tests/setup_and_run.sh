#!/usr/bin/env bash
# Set up the test environment in .venv and run the whole suite (lint, then pytest tests/).
# The ComfyUI host is found as the pack finds it (COMFYUI_PATH, else the ComfyUI holding this pack
# in custom_nodes/, else ~/comfy/ComfyUI), else provided under .venv/: unpacked from the archive named
# by COMFYUI_ARCHIVE (at .venv/hosts/<archive name>/ComfyUI), else cloned (ComfyUI v0.3.64, shallow, at
# .venv/ComfyUI) where git and the network are (tests/provide_host.py). Only without any of these are
# the host tests skipped.
# Arguments go to pytest (e.g. -q, or tests/unit).
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
# Not --no-compile: where PYTHONDONTWRITEBYTECODE is set (this CI machine's), the .pyc files pip writes are the only
# ones, and without them every interpreter compiles torch and ComfyUI again (a CI run's pytest took 1,041 s, not 934).
pip install -q --disable-pip-version-check -r requirements-test.txt

comfy=$(python tests/provide_host.py)
if [ -n "$comfy" ]; then
    echo "ComfyUI host: $comfy"
    # ComfyUI's requirements (its frontend among them: switching hosts installs the other's), less torch and
    # torchvision (pinned above) and torchaudio: ComfyUI 0.33.0 imports it when its nodes load (comfy/sd.py, its
    # audio VAE), and the newest the package index has (2.11.1) asks for another torch; installed without its
    # dependencies, it imports beside torch 2.14.1 (0.3.64 lists it too, and never imports it).
    grep -vE '^\s*(torch|torchvision|torchaudio)\s*([<>=!~].*)?$' "$comfy/requirements.txt" > .venv/comfyui-requirements.txt
    pip install -q --disable-pip-version-check -r .venv/comfyui-requirements.txt
    if grep -qE '^\s*torchaudio\s*([<>=!~].*)?$' "$comfy/requirements.txt"; then
        pip install -q --disable-pip-version-check --no-deps torchaudio==2.11.1
    fi
else
    echo "ComfyUI host: none found or provided; the host tests will be skipped."
fi

# The real-client test needs a browser: Debian's chromium where apt can install it (else it skips).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
        || echo "chromium could not be installed; the browser test will be skipped."
fi

ruff check .
comfy-test lint .  # the Registry's harness, its static levels (syntax, javascript)
# pytest (not python -m pytest, which would put the current folder, the pack's, on sys.path), on one worker
# per core (pytest-xdist; a test file's tests stay on one worker, so its module fixtures are built once; the
# slowest files first, in conftest.py's order, not pytest-xdist's by number of tests). A worker
# that dies (the kernel's OOM killer) ends the run with its test failed, not replaced: a replaced worker has been
# seen to leave the run waiting until CI's limit. Each module's memory is held to tests/memory_budget.py's budget.
if [ $# -eq 0 ] || [ "${1#-}" != "$1" ]; then set -- tests "$@"; fi
pytest -n "${LR_WORKERS:-$(nproc)}" --dist loadfile --no-loadscope-reorder --max-worker-restart 0 "$@"
