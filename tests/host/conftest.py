"""Tests on the real ComfyUI host. Importing comfy_host puts the host on sys.path before the test modules
import anything of it; the host's fixtures are tests/conftest.py's (one of each for the whole run)."""

import comfy_host  # noqa: F401
