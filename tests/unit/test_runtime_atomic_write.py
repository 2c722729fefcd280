"""ketch.runtime.state.atomic_write: readers see the old file or the new one, and a
failed write leaves no temp file behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ketch.runtime.state import atomic_write


def test_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(b"old")
    data = os.urandom(3 << 20)
    atomic_write(str(path), data)
    assert path.read_bytes() == data
    assert os.listdir(tmp_path) == ["f.json"]


def test_a_failed_rename_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "x").write_text("a non-empty directory cannot be renamed over")
    with pytest.raises(OSError):
        atomic_write(str(target), b"data")
    assert sorted(os.listdir(tmp_path)) == ["taken"]
    assert (target / "x").exists()
