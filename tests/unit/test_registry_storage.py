"""The storage driver conformance suite on both built-in drivers, plus filesystem specifics."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.errors import InvalidArgument
from ketch.registry.storage import (
    FilesystemDriver,
    InMemoryDriver,
    InvalidPath,
    StorageDriver,
    open_driver,
)
from tests.conformance.storage_driver_suite import BAD_PATHS, PAYLOAD, StorageDriverSuite


class TestInMemoryDriver(StorageDriverSuite):
    @pytest.fixture
    def driver(self) -> Iterator[StorageDriver]:
        yield InMemoryDriver()


class TestFilesystemDriver(StorageDriverSuite):
    @pytest.fixture
    def driver(self, tmp_path: Path) -> Iterator[StorageDriver]:
        yield FilesystemDriver(tmp_path / "root")


def _tree(p: Path) -> list[str]:
    return sorted(str(x.relative_to(p)) for x in p.rglob("*"))


def test_filesystem_paths_map_under_root(tmp_path: Path) -> None:
    d = FilesystemDriver(tmp_path / "root")
    d.put_content("a/b", b"x")
    assert (tmp_path / "root" / "a" / "b").read_bytes() == b"x"


@pytest.mark.parametrize("bad", BAD_PATHS)
def test_filesystem_nothing_escapes_root(tmp_path: Path, bad: str) -> None:
    d = FilesystemDriver(tmp_path / "root")
    with pytest.raises(InvalidPath):
        d.put_content(bad, b"evil")
    with pytest.raises(InvalidPath):
        d.writer(bad)
    assert _tree(tmp_path) == ["root"]


def test_filesystem_leaves_no_temporaries(tmp_path: Path) -> None:
    d = FilesystemDriver(tmp_path / "root", fsync=False)
    for i in range(20):
        d.put_content("x/link", b"%d" % i)
    d.put_content("y/z", b"1")
    d.delete("y")
    assert _tree(tmp_path / "root") == ["x", "x/link"]


def test_filesystem_reader_is_a_real_file(tmp_path: Path) -> None:
    d = FilesystemDriver(tmp_path / "root")
    d.put_content("blob", PAYLOAD)
    with d.reader("blob", 10) as f:
        assert os.fstat(f.fileno()).st_size == len(PAYLOAD)  # sendfile-able


def test_filesystem_failed_put_leaves_old_content(tmp_path: Path) -> None:
    d = FilesystemDriver(tmp_path / "root")
    d.put_content("f", b"old")

    with pytest.raises(TypeError):
        d.put_content("f", 12345)  # type: ignore[arg-type]
    assert d.get_content("f") == b"old"
    assert _tree(tmp_path / "root") == ["f"]


def test_open_driver() -> None:
    assert isinstance(open_driver("inmemory", {}), InMemoryDriver)
    with pytest.raises(InvalidArgument):
        open_driver("s3", {})
    with pytest.raises(InvalidArgument):
        open_driver("filesystem", {})
    with pytest.raises(InvalidArgument):
        open_driver("filesystem", {"root": "/tmp/x", "bogus": 1})
