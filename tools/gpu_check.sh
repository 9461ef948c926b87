#!/usr/bin/env bash
# The GPU check for a session lent a device (issue 24; README "On a GPU"): one script, at most 8 minutes of
# device time, that measures plain, the shipped Layout-and-Retouch default and Pick-and-Draw per image and with
# a new reference (SD1.5 at 512, SDXL at 1024, random fp16 weights), and runs the checks only a GPU can fail
# (records moving between the GPU and RAM, the mask reading stage 1's record) on the GPU. It writes
# gpu_check.json and gpu_check.md to $OUT (the device tool's folder), else to --out DIR.
#
#   here, once per session:  bash tools/gpu_check.sh --prepare
#       (the pinned host's archive and the wheels of what the device's Python lacks, into .device/)
#   on the device:           run(command="bash tools/gpu_check.sh", carry=[".device"], timeout_s=560)
#   dry (the test suite):    bash tools/gpu_check.sh --dry --out DIR
#       (tiny models on the CPU with this checkout's .venv and host, 2 steps: the script cannot rot)
set -euo pipefail
pack=$(cd "$(dirname "$0")/.." && pwd)
mode=device
out=${OUT:-$pack/gpu-check-results}
while [ $# -gt 0 ]; do
    case "$1" in
        --prepare) mode=prepare ;;
        --dry) mode=dry ;;
        --out) out=$2; shift ;;
        *) echo "gpu_check.sh: unknown argument $1 (--prepare, --dry, --out DIR)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$mode" = prepare ]; then
    mkdir -p "$pack/.device/wheels"
    cp "$pack/../shared/host/ComfyUI-0.3.64.tar.gz" "$pack/.device/"
    # What ComfyUI 0.3.64's nodes (not its server) and the pack import that the device's image (KINDS.md) lacks,
    # for its Python 3.12: about 50 MB with the archive, under the 64 MiB a device call carries.
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$pack/.device/wheels" torchsde==0.2.6 trampoline==0.1.2 segment-anything==1.0 spandrel==0.4.1 \
        kornia==0.8.1 kornia-rs==0.1.9 av==14.2.0
    du -sh "$pack/.device"
    exit 0
fi

if [ "$mode" = device ]; then
    [ -f "$pack/.device/ComfyUI-0.3.64.tar.gz" ] || { echo "no .device/: run 'bash tools/gpu_check.sh --prepare' here and carry .device" >&2; exit 2; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$pack"/.device/wheels/*.whl
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
    rm -rf /tmp/gpu-check && mkdir -p /tmp/gpu-check && tar -xzf "$pack/.device/ComfyUI-0.3.64.tar.gz" -C /tmp/gpu-check
    export COMFYUI_PATH=/tmp/gpu-check/ComfyUI
    python=python3
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
    python=$pack/.venv/bin/python
    COMFYUI_PATH=${COMFYUI_PATH:-$("$python" "$pack/tests/provide_host.py")}
    export COMFYUI_PATH
fi
mkdir -p "$out"
exec "$python" "$pack/tools/gpu_check.py" --out "$out" $([ "$mode" = dry ] && echo --dry)
