"""comfyui-layout-retouch: Layout-and-Retouch personalized generation as ComfyUI nodes."""


async def comfy_entrypoint():
    # Imported on call so that the algorithm modules load without the host (for tests and tools).
    from .nodes import LayoutRetouchExtension

    return LayoutRetouchExtension()
