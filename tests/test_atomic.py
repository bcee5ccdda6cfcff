from pathlib import Path

import pytest

from napari_ssmamba._atomic import atomic_open, atomic_path


def test_atomic_open_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]

    with atomic_open(target) as fh:
        fh.write("new")
    assert target.read_text() == "new"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_path_creates_parent_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "out.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert list(target.parent.iterdir()) == [target]


def test_atomic_open_refuses_read_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="for writing"), atomic_open(tmp_path / "x", "r"):
        pass


def test_atomic_files_get_the_umask_mode_not_mkstemps_0600(tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        with atomic_open(tmp_path / "shared.txt") as fh:
            fh.write("x")
        with atomic_path(tmp_path / "model.safetensors") as tmp:  # a writer that makes its own file
            tmp.unlink()
            os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600))
    finally:
        os.umask(old)
    assert (tmp_path / "shared.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == 0o644
