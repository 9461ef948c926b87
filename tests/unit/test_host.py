"""Finding ComfyUI: COMFYUI_PATH, else the ComfyUI holding the pack, else ~/comfy/ComfyUI."""

from __future__ import annotations

import pytest

from comfyui_layout_retouch import host

# Finding the host is what the install layout changes: CI's second pass runs these there.
pytestmark = pytest.mark.install


def fake_comfy(path):
    (path / "comfy").mkdir(parents=True)
    (path / "nodes.py").write_text("")
    (path / "execution.py").write_text("")
    return path


def test_comfyui_path_first(tmp_path):
    env_comfy = fake_comfy(tmp_path / "env")
    home_comfy = fake_comfy(tmp_path / "home" / "comfy" / "ComfyUI")
    pack = tmp_path / "outer" / "custom_nodes" / "pack"
    fake_comfy(tmp_path / "outer")
    pack.mkdir(parents=True)
    environ = {"COMFYUI_PATH": str(env_comfy), "HOME": str(tmp_path / "home")}
    assert host.find_comfyui(environ, pack) == env_comfy.resolve()
    assert host.find_comfyui({"HOME": str(tmp_path / "home")}, pack) == (tmp_path / "outer").resolve()
    assert host.find_comfyui({"HOME": str(tmp_path / "home")}, tmp_path / "elsewhere") == home_comfy.resolve()


def test_nothing_found(tmp_path):
    environ = {"HOME": str(tmp_path)}
    assert host.find_comfyui(environ, tmp_path / "pack") is None
    assert "COMFYUI_PATH" in host.describe_search(environ, tmp_path / "pack")


def test_wrong_comfyui_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="COMFYUI_PATH"):
        host.find_comfyui({"COMFYUI_PATH": str(tmp_path), "HOME": str(tmp_path)}, tmp_path / "pack")
