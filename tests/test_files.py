from pathlib import Path

import pytest

from twincast.errors import InputError
from twincast.files import atomic_directory, atomic_path, atomic_write_bytes


def test_failed_directory_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "pack"
    with pytest.raises(RuntimeError), atomic_directory(target) as scratch:
        (scratch / "half.npy").write_bytes(b"x")
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_directory_replaces_only_with_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "pack"
    with atomic_directory(target) as scratch:
        (scratch / "a").write_text("1")
    with pytest.raises(InputError, match="already exists"), atomic_directory(target):
        pass
    with atomic_directory(target, overwrite=True) as scratch:
        (scratch / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["pack"]


def test_atomic_file_writes(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    atomic_write_bytes(target, b"abc")
    with pytest.raises(ValueError), atomic_path(target) as scratch:
        scratch.write_bytes(b"partial")
        raise ValueError
    assert target.read_bytes() == b"abc"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]
