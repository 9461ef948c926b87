"""Providing the test host: found as the pack finds it, else unpacked from COMFYUI_ARCHIVE under .venv/."""

from __future__ import annotations

import tarfile

import provide_host
import pytest

# Finding the host is what the install layout changes: CI's second pass runs these there.
pytestmark = pytest.mark.install


def fake_comfy(path):
    (path / "comfy").mkdir(parents=True)
    (path / "nodes.py").write_text("")
    (path / "execution.py").write_text("")
    return path


def archive_of(folder, archive):
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


@pytest.fixture
def pack(tmp_path, monkeypatch):
    """The pack as if cloned at tmp_path/pack, outside any ComfyUI."""
    monkeypatch.setattr(provide_host, "PACK_ROOT", tmp_path / "pack")
    return tmp_path / "pack"


def test_found_hosts_come_before_the_archive(tmp_path, pack):
    home = fake_comfy(tmp_path / "home" / "comfy" / "ComfyUI")
    archive = archive_of(fake_comfy(tmp_path / "src" / "ComfyUI"), tmp_path / "host.tar.gz")
    provided = tmp_path / "pack" / ".venv" / "ComfyUI"
    environ = {"HOME": str(tmp_path / "home"), "COMFYUI_ARCHIVE": str(archive)}
    assert provide_host.provide(environ, provided) == home.resolve()
    assert not provided.exists()


def test_archive_unpacked_once_then_found(tmp_path, pack):
    archive = archive_of(fake_comfy(tmp_path / "src" / "ComfyUI"), tmp_path / "host.tar.gz")
    provided = tmp_path / "pack" / ".venv" / "ComfyUI"
    environ = {"HOME": str(tmp_path / "nohome"), "COMFYUI_ARCHIVE": str(archive)}
    assert provide_host.find(environ, provided) is None
    assert provide_host.provide(environ, provided) == provided
    assert (provided / "nodes.py").is_file() and (provided / "comfy").is_dir()
    assert [p.name for p in provided.parent.iterdir()] == ["ComfyUI"]  # no scratch folder left
    archive.unlink()  # found as provided before, the archive is not read again
    assert provide_host.provide(environ, provided) == provided
    assert provide_host.find({"HOME": str(tmp_path / "nohome")}, provided) == provided


def test_each_archive_is_a_host_of_its_own(tmp_path, pack):
    """CI tests on two hosts: each archive is unpacked to .venv/hosts/<its name>/ComfyUI and found there again
    when COMFYUI_ARCHIVE names it, never the other's."""
    hosts = {}
    for version in ("0.3.64", "0.33.0"):
        src = fake_comfy(tmp_path / version / "ComfyUI")
        (src / "comfyui_version.py").write_text(f'__version__ = "{version}"\n')
        hosts[version] = archive_of(src, tmp_path / f"ComfyUI-{version}.tar.gz")
    for version, archive in hosts.items():
        environ = {"HOME": str(tmp_path / "nohome"), "COMFYUI_ARCHIVE": str(archive)}
        where = pack / ".venv" / "hosts" / f"ComfyUI-{version}" / "ComfyUI"
        assert provide_host.provided_for(environ) == where
        assert provide_host.provide(environ) == where
    for version, archive in hosts.items():
        found = provide_host.find({"HOME": str(tmp_path / "nohome"), "COMFYUI_ARCHIVE": str(archive)})
        assert (found / "comfyui_version.py").read_text() == f'__version__ = "{version}"\n'
    assert provide_host.provided_for({}) == pack / ".venv" / "ComfyUI"  # no archive: the clone's folder


def test_not_a_comfyui_archive(tmp_path, pack):
    (tmp_path / "src" / "other").mkdir(parents=True)
    archive = archive_of(tmp_path / "src" / "other", tmp_path / "other.tar.gz")
    provided = tmp_path / "pack" / ".venv" / "ComfyUI"
    with pytest.raises(ValueError, match="not a ComfyUI source archive"):
        provide_host.provide({"HOME": str(tmp_path), "COMFYUI_ARCHIVE": str(archive)}, provided)
    assert not provided.exists()
    with pytest.raises(FileNotFoundError, match="COMFYUI_ARCHIVE"):
        provide_host.provide({"HOME": str(tmp_path), "COMFYUI_ARCHIVE": str(tmp_path / "missing.tgz")}, provided)


def test_no_git_no_host(tmp_path, pack, monkeypatch):
    monkeypatch.setattr(provide_host.shutil, "which", lambda name: None)
    provided = tmp_path / "pack" / ".venv" / "ComfyUI"
    assert provide_host.provide({"HOME": str(tmp_path)}, provided) is None
    assert "COMFYUI_ARCHIVE" in provide_host.describe_search({"HOME": str(tmp_path)})
