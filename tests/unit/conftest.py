"""Host-free tests: only torch, numpy and scipy beside the pack; nothing here looks for ComfyUI."""
