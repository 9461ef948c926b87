"""Personalized models the Layout-and-Retouch paper builds on, loaded onto ComfyUI's model and CLIP.

DreamBooth checkpoints, LoRAs and Textual Inversion embeddings load with ComfyUI's stock nodes;
what ComfyUI cannot read is here: Custom Diffusion (Kumari et al., CVPR 2023) as diffusers'
training script writes it (``custom_diffusion.py``), with its modifier token on a copy of the
CLIP's tokenizer (``modifier_tokens.py``). An algorithm layer: it imports ``errors`` of the pack,
ComfyUI, torch and safetensors, and every entry point works on clones of what it is given.
"""
