"""The Flux benchmark's smoke test: it measures every part on the CPU (no time is asserted). The SD1.x and SDXL
benchmarks' are the GPU check's dry run (e2e/test_gpu_check.py), which runs them as the device does."""

from __future__ import annotations


def test_benchmark_on_flux(comfy, tmp_path):
    """``bench --family flux`` on the tiny Flux: every part runs, and each part's rows are what the method costs
    (cfg 1: one row per step; lambda1 1, lambda2 2 of 10 steps)."""
    from comfyui_layout_retouch.benchmark.record_sizes import FLUX_CACHE
    from comfyui_layout_retouch.benchmark.run import FLUX_PARTS, main

    report = main(size=64, steps=10, repeats=1, cpu=True, output=tmp_path / "bench.json", family="flux")
    rows = {p["name"]: p["unet_rows"] for p in report["parts"]}
    assert list(rows) == list(FLUX_PARTS) and report["setting"]["model"] == "tiny random Flux.1-dev"
    assert report["setting"]["sampler"] == "euler/simple" and report["setting"]["cfg"] == 1.0
    # stage 1 + retouch, and the sources' rows: the layout in steps 0-1, the reference in steps 2-9.
    assert rows == {"plain KSampler": 10, "shipped default": 10 + 10 + 2,
                    "shipped default, reference cache off": 10 + 10 + 2 + 8,
                    "shipped default, new reference": 10 + 30, "full pipeline": 10 + 2 * 10 + 3 * 10}
    sizes = report["flux_record_sizes_gib"]
    # 9 blocks x 22 steps x 4096 tokens x 3072 x 2 bytes: within the 6 GB (5.59 GiB) a user's RAM should spare.
    assert sizes["blocks"] == 9 and abs(sizes[FLUX_CACHE] - 9 * 22 * 4096 * 3072 * 2 / 2**30) < 1e-9
    assert sizes[FLUX_CACHE] * 2**30 <= 6e9
