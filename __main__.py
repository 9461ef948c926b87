"""``python -m comfyui_layout_retouch ...``, or ``python path/to/this/folder ...``."""

if __package__:
    from .headless.cli import main
else:  # run as a folder: import the pack under its own name first
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent
    spec = importlib.util.spec_from_file_location("comfyui_layout_retouch", root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_layout_retouch"] = pack
    spec.loader.exec_module(pack)
    # The folder itself must not stay on sys.path: its nodes/ would shadow ComfyUI's nodes module.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != root]
    from comfyui_layout_retouch.headless.cli import main

raise SystemExit(main())
