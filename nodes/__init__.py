"""The pack's nodes: thin V3 classes (one module per stage) and their ComfyUI extension (:mod:`.extension`).

The extension is imported on first use, so that the host-free parts (:mod:`.labels`, the combo labels the
workflow builders import) load without ComfyUI.
"""


def __getattr__(name: str):
    if name == "LayoutRetouchExtension":
        from .extension import LayoutRetouchExtension

        return LayoutRetouchExtension
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
