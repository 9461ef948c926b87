"""comfyui-layout-retouch: Layout-and-Retouch personalized generation as ComfyUI nodes."""

# The nodes' help pages (web/docs/<node id>.md), served at /extensions/<this folder>/docs/ for the node library.
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    # Imported on call so that the algorithm modules load without the host (for tests and tools).
    from .nodes.extension import LayoutRetouchExtension

    return LayoutRetouchExtension()
