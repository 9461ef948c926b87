"""The DiT benchmarks' smoke test, once per DiT family (``benchmark.dits.DITS``): every part runs on the CPU (no
time is asserted). The SD1.x and SDXL benchmarks' are the GPU check's dry run (e2e/test_gpu_check.py), which runs
them as the device does."""

from __future__ import annotations

import pytest

from comfyui_layout_retouch.benchmark.dits import DITS


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.host("0.33.0")) if f == "flux2" else f
                                    for f in DITS])  # Flux.2: ComfyUI 0.33 on
def test_benchmark_on_a_dit(comfy, tmp_path, family):
    """``bench --family NAME`` on the tiny model: every part runs, and each part's rows are what the method costs
    (lambda1 1, lambda2 2 of 10 steps; one row per step at cfg 1, two at a cfg above it); the records' sizes at
    the family's native size."""
    from comfyui_layout_retouch.attention.families import family_of_diffusion_model
    from comfyui_layout_retouch.benchmark.parts import DIT_PARTS
    from comfyui_layout_retouch.benchmark.record_sizes import DIT_CACHE, meta_dit
    from comfyui_layout_retouch.benchmark.run import main

    spec = DITS[family]
    report = main(size=64, steps=10, repeats=1, cpu=True, output=tmp_path / "bench.json", family=family)
    rows = {p["name"]: p["unet_rows"] for p in report["parts"]}
    assert list(rows) == list(DIT_PARTS) and report["setting"]["model"] == f"tiny random {spec.label}"
    assert report["setting"]["sampler"] == "euler/simple" and report["setting"]["cfg"] == spec.cfg
    halves = 1 if spec.cfg == 1.0 else 2
    # stage 1 + retouch, and the sources' rows: the layout in steps 0-1, the reference in steps 2-9; an inversion
    # at cfg 1 runs one row a step, the paper's graph re-denoises both sources beside the target.
    assert rows == {"plain KSampler": 10 * halves, "shipped default": (10 + 10 + 2) * halves,
                    "shipped default, reference cache off": (10 + 10 + 2 + 8) * halves,
                    "shipped default, new reference": (10 + 10 + 2) * halves + 10 + 8 * halves,
                    "full pipeline": 10 * halves + 2 * 10 + 3 * 10 * halves}
    sizes = report["dit_record_sizes_gib"]
    assert sizes["model"] == spec.label and sizes["size"] == spec.size and sizes["steps"] == spec.steps
    tokens = (spec.size // 16) ** 2  # 8x VAE and 2x2 patches, or (Flux.2) 16x VAE and 1x1
    full = meta_dit(spec.full)
    width = family_of_diffusion_model(full).width(full)  # the blocks' hidden width (Flux 3072, SD3.5 Large 2432)
    cached_steps = spec.steps - round(spec.steps / 5)
    assert sizes["halves"] == halves
    assert abs(sizes[DIT_CACHE] - sizes["blocks"] * halves * cached_steps * tokens * width * 2 / 2**30) < 1e-9
    if family == "flux":  # 9 blocks x 22 steps x 4096 tokens x 3072 x 2 bytes: within the 6 GB a user's RAM spares
        assert sizes["blocks"] == 9 and sizes[DIT_CACHE] * 2**30 <= 6e9


def test_the_command_offers_every_family():
    """``bench --family`` offers each pipeline's family (named apart, for a command line that imports no torch)."""
    from comfyui_layout_retouch import benchmark
    from comfyui_layout_retouch.benchmark.run import FAMILIES

    assert benchmark.FAMILIES == FAMILIES


def test_every_registered_dit_family_has_a_bench_row_and_a_tiny_model():
    """A DiT family in the registry is benchmarked (``bench --family KEY``) and tested (its tiny model in every test
    of test_dits.py): each has a row in both tables, under the key its module names, and neither table has a row
    the registry lacks."""
    import comfy_host

    from comfyui_layout_retouch.attention.families import FAMILIES
    from comfyui_layout_retouch.attention.joint import JointFamily

    keys = {family.key for family in FAMILIES if isinstance(family, JointFamily)}
    assert "" not in keys and keys == set(DITS) == set(comfy_host.TinyDiT.SPECS)
