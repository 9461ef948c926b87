"""Running workflows without the web server: the jobs, their manifest and what both runners share (``jobs.py``);
in this process through ComfyUI's own executor (``local.py``, ``executor.py``), or over ComfyUI servers' HTTP API
(``servers.py``, ``client.py``); the UI-format conversion (``ui_format.py``) and the command line (``cli.py``)."""
