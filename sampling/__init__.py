"""Sampling algorithms of Layout-and-Retouch on ComfyUI's sampler: step blending and DDIM inversion."""
