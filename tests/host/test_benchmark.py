"""The benchmark's smoke test: it measures every part on the CPU (no time is asserted). The SDXL rows and the
headline-only selection are smoke-tested by the GPU check's dry run (e2e/test_gpu_check.py)."""

from __future__ import annotations

import json


def test_benchmark_smoke(comfy, tmp_path):
    from comfyui_layout_retouch.benchmark.run import HEADLINE, headline, main, table, throughput_table

    report = main(size=64, steps=3, repeats=1, cpu=True, output=tmp_path / "bench.json")
    names = [p["name"] for p in report["parts"]]
    assert names == ["plain KSampler", "stage 1 (step-blended)", "inversion (reference)", "inversion (layout)",
                     "cross-attention mask (10 steps)", "stage 2 (swap + KSampler)", "stage 2, reference cached",
                     "stage 2 on stage 1's path, cached", "stage 1 recording attention", "stage 2, fast mode, cached",
                     "inversion recording attention", "stage 2, fast mode from inversions", "full pipeline",
                     "full, reference cached", "full, stage 1's path, cached", "full, fast mode, cached",
                     "shipped default", "shipped default, new reference", "P&D DDIM inversion (reference)",
                     "P&D null-text inversion (reference)", "P&D palette (reference)", "P&D layout template",
                     "P&D guided sampling", "P&D per image (palette reused)", "P&D, new reference",
                     "P&D, new reference (null-text palette)", "plain KSampler, batch of 4",
                     "shipped default, batch of 4"]
    assert report["parts"][0]["time_ratio"] == 1.0 and report["parts"][0]["memory_ratio"] == 1.0
    assert all(p["seconds"] > 0 and p["peak_mib"] > 0 and p["unet_rows"] > 0 for p in report["parts"])
    rows = {p["name"]: p["unet_rows"] for p in report["parts"]}
    assert rows["plain KSampler"] == 3 * 2  # 3 steps, two CFG halves, one image
    assert rows["inversion (reference)"] == 3  # cfg 1: the positive half only
    assert rows["stage 2, reference cached"] < rows["stage 2 (swap + KSampler)"]
    assert rows["stage 2, fast mode from inversions"] == rows["plain KSampler"]  # no source rows at all
    assert report["setting"]["model"] == "tiny random SD1.x" and report["setting"]["steps"] == 3
    assert json.loads((tmp_path / "bench.json").read_text()) == report
    assert table(report).count("\n") == len(names) + 1
    assert headline(report).count("\n") == len(HEADLINE) + 1 and {name for _, name in HEADLINE} <= set(names)
    # The shipped default runs no reference inversion in steady state; a new reference adds its inversion.
    assert rows["shipped default, new reference"] > rows["shipped default"]
    assert rows["shipped default"] < rows["full pipeline"]
    # Pick-and-Draw at 3 steps: layout step 0, appearance step 1, 3 iterations each: 6 differentiated
    # conditional rows, each also run backward, on top of the plain generation's rows.
    backward = {p["name"]: p["backward_rows"] for p in report["parts"]}
    assert backward["P&D guided sampling"] == 6 and rows["P&D guided sampling"] == rows["plain KSampler"] + 6
    # One CFG step of vanilla SD, and the conditional pass the guidance reads at its latent.
    assert backward["P&D layout template"] == 0 and rows["P&D layout template"] == 3
    assert rows["P&D DDIM inversion (reference)"] == 3 and backward["P&D DDIM inversion (reference)"] == 0
    assert rows["P&D, new reference"] == rows["P&D DDIM inversion (reference)"] + rows["P&D palette (reference)"] + \
        rows["P&D per image (palette reused)"]
    sources = report["palette_sources"]
    assert [(r["step"], r["ddim_features"] > 0, r["null_text_features"] > 0) for r in sources["per_step_and_layer"]
            ][:1] == [(1, True, True)] and all(r["set_distance"] >= 0 for r in sources["per_step_and_layer"])
    assert 0 < sources["final_relative"] < float("inf") and sources["path_relative_max"] >= 0
    assert backward["P&D null-text inversion (reference)"] > 0 and backward["plain KSampler"] == 0
    assert rows["P&D per image (palette reused)"] == rows["P&D guided sampling"] + rows["P&D layout template"]
    for fidelity in report["fast_mode_vs_recorded"].values():
        assert 0 <= fidelity["mean_abs"] <= fidelity["max_abs"] < float("inf")
    # Throughput: four seeds through one execution run four times the rows of one image.
    assert rows["plain KSampler, batch of 4"] == 4 * rows["plain KSampler"]
    assert rows["shipped default, batch of 4"] == 4 * rows["shipped default"]
    for name, part in (("plain KSampler", "plain KSampler"), ("shipped default", "shipped default")):
        seconds = {p["name"]: p["seconds"] for p in report["parts"]}
        assert report["throughput"][name] == {"1": round(60 / seconds[part], 2),
                                              "4": round(240 / seconds[f"{part}, batch of 4"], 2)}
    assert throughput_table(report).count("\n") == 3


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
