"""The benchmark: time and peak memory of each part of the pipeline, as ratios to a plain generation."""

# bench --family: the UNet pipelines' then benchmark.dits.DITS's rows (tests/host/test_benchmark.py holds them equal;
# named here, where the command line reads them without importing torch or ComfyUI)
FAMILIES = ("sd1", "sdxl", "flux", "chroma", "qwen_image", "sd3", "flux2")
