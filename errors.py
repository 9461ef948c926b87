"""How the pack reports bad input: a :data:`Problem`, which the calling node turns into its message, and the
name its exceptions carry in ComfyUI's error reports."""

from __future__ import annotations

# What is wrong with an input and how to fix it, as two sentences (nodes/inputs.py raises it).
Problem = tuple[str, str]

# The pack's import name (pyproject's name). ComfyUI loads a custom node pack as a module named by its folder's
# path (e.g. '/home/me/ComfyUI/custom_nodes/comfyui-layout-retouch'), and names an exception by its class's
# module in the error it reports: :func:`public` gives the pack's exceptions this name instead.
IMPORT_NAME = "comfyui_layout_retouch"
_LOADED_AS = __name__.rpartition(".")[0]  # the name this pack was imported under (a path, under ComfyUI)


def public(cls: type) -> type:
    """Class decorator for an exception an artist can see: its module reads ``comfyui_layout_retouch.<module>``
    under whatever name ComfyUI imported the pack."""
    if _LOADED_AS and cls.__module__.startswith(_LOADED_AS + "."):
        cls.__module__ = IMPORT_NAME + cls.__module__[len(_LOADED_AS):]
    return cls
