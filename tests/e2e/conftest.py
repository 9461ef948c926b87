"""Tests on the real ComfyUI host: its fixtures live in tests/comfy_host.py, shared with host/."""

from comfy_host import comfy, tiny, tiny_files, tiny_sam, tiny_xl_files  # noqa: F401
