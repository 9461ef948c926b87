#!/usr/bin/env bash
# Set up the test environment in .venv and run the whole suite (lint, then pytest).
# ComfyUI is found as the pack finds it: COMFYUI_PATH, else the ComfyUI holding this pack in
# custom_nodes/, else ~/comfy/ComfyUI. Without one, the host tests are skipped with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
. .venv/bin/activate
pip install -q --disable-pip-version-check -r requirements-test.txt

comfy=$(python3 -c 'import host; print(host.find_comfyui() or "")' 2>/dev/null || true)
if [ -n "$comfy" ]; then
    echo "ComfyUI host: $comfy"
    # ComfyUI's requirements, less torch/torchvision (pinned above) and torchaudio (unused here).
    grep -vE '^\s*(torch|torchvision|torchaudio)\s*([<>=!~].*)?$' "$comfy/requirements.txt" > .venv/comfyui-requirements.txt
    pip install -q --disable-pip-version-check -r .venv/comfyui-requirements.txt
else
    echo "ComfyUI host: none found; the host tests will be skipped (set COMFYUI_PATH to run them)."
fi

# The real-client test needs a browser: Debian's chromium where apt can install it (else it skips).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
        || echo "chromium could not be installed; the browser test will be skipped."
fi

ruff check .
python -m pytest "$@"
