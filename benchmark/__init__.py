"""The benchmark: time and peak memory of each part of the pipeline, as ratios to a plain generation."""
