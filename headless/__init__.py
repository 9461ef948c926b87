"""Running workflows without the web server: UI-format conversion and ComfyUI's own executor."""
