"""The conformance suite of the ``StorageDriver`` seam (``ketch.registry.storage``).

Subclass ``StorageDriverSuite`` in a test module and provide one fixture:

``driver``
    a fresh, empty ``StorageDriver`` private to the test; the fixture disposes of it.

The tests follow the lifecycle in ``ketch.registry.storage.driver``'s docstring: whole
files, writers (commit, close and resume, cancel), readers at an offset, the implied
directory tree (list, stat, walk, pruning), move, delete, path rules, and concurrent use.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from ketch.errors import InvalidArgument, NotFound
from ketch.registry.storage import FileWriter, InvalidPath, PathNotFound, StorageDriver

__all__ = ["BAD_PATHS", "PAYLOAD", "StorageDriverSuite"]

PAYLOAD = bytes(range(256)) * 400 + b"end"  # ~100 KB, not a multiple of any block size

BAD_PATHS = ["..", "a/../b", "a/..", "/abs", "/", "a//b", "a/", ".hidden", "a/.x",
             "a/./b", "a\0b", "../escape"]


class StorageDriverSuite:
    """What every ``StorageDriver`` must do; subclass it with a ``driver`` fixture."""

    # -- whole files --------------------------------------------------------------------

    def test_put_get_round_trip(self, driver: StorageDriver) -> None:
        assert isinstance(driver, StorageDriver)
        driver.put_content("a/b/c", PAYLOAD)
        assert driver.get_content("a/b/c") == PAYLOAD
        driver.put_content("a/b/c", b"short")
        assert driver.get_content("a/b/c") == b"short"
        driver.put_content("empty", b"")
        assert driver.get_content("empty") == b""
        assert driver.stat("empty").size == 0

    def test_get_missing(self, driver: StorageDriver) -> None:
        with pytest.raises(PathNotFound):
            driver.get_content("nope")
        driver.put_content("d/f", b"x")
        with pytest.raises(NotFound):
            driver.get_content("d")  # a directory is not a file
        with pytest.raises(NotFound):
            driver.get_content("d/f/g")  # below a file

    def test_put_onto_directory_fails(self, driver: StorageDriver) -> None:
        driver.put_content("d/f", b"x")
        with pytest.raises(InvalidArgument):
            driver.put_content("d", b"y")
        assert driver.get_content("d/f") == b"x"

    @pytest.mark.parametrize("bad", BAD_PATHS)
    def test_bad_paths_rejected_everywhere(self, driver: StorageDriver, bad: str) -> None:
        ops = [
            lambda: driver.get_content(bad),
            lambda: driver.put_content(bad, b"x"),
            lambda: driver.reader(bad),
            lambda: driver.writer(bad),
            lambda: driver.delete(bad),
            lambda: driver.move(bad, "ok"),
            lambda: driver.move("ok", bad),
            lambda: driver.stat(bad),
            lambda: driver.list(bad),
            lambda: list(driver.walk(bad)),
        ]
        driver.put_content("ok", b"fine")
        for op in ops:
            with pytest.raises(InvalidPath):
                op()
        assert driver.get_content("ok") == b"fine"
        assert driver.list("") == ["ok"]

    def test_root_is_not_a_file(self, driver: StorageDriver) -> None:
        with pytest.raises(InvalidPath):
            driver.put_content("", b"x")
        with pytest.raises(InvalidPath):
            driver.delete("")

    # -- readers ------------------------------------------------------------------------

    def test_reader_at_offset(self, driver: StorageDriver) -> None:
        driver.put_content("blob", PAYLOAD)
        with driver.reader("blob") as f:
            assert f.read() == PAYLOAD
        with driver.reader("blob", 1000) as f:
            assert f.read(10) == PAYLOAD[1000:1010]
            assert f.read() == PAYLOAD[1010:]
        with driver.reader("blob", len(PAYLOAD)) as f:
            assert f.read() == b""
        with pytest.raises(InvalidArgument):
            driver.reader("blob", len(PAYLOAD) + 1)
        with pytest.raises(InvalidArgument):
            driver.reader("blob", -1)
        with pytest.raises(PathNotFound):
            driver.reader("missing")

    def test_reader_keeps_old_bytes_when_replaced(self, driver: StorageDriver) -> None:
        driver.put_content("f", PAYLOAD)
        with driver.reader("f") as f:
            driver.put_content("f", b"new")
            assert f.read() == PAYLOAD
        assert driver.get_content("f") == b"new"

    # -- writers ------------------------------------------------------------------------

    def test_writer_commit(self, driver: StorageDriver) -> None:
        w = driver.writer("up/data")
        assert isinstance(w, FileWriter)
        assert w.size == 0
        for i in range(0, len(PAYLOAD), 7000):
            assert w.write(PAYLOAD[i:i + 7000]) == len(PAYLOAD[i:i + 7000])
        assert w.size == len(PAYLOAD)
        w.commit()
        assert driver.get_content("up/data") == PAYLOAD
        assert driver.stat("up/data").size == len(PAYLOAD)
        with pytest.raises(ValueError):
            w.write(b"more")
        with pytest.raises(ValueError):
            w.commit()

    def test_writer_bytes_visible_before_commit(self, driver: StorageDriver) -> None:
        with driver.writer("f") as w:
            w.write(b"abc")
            with driver.reader("f") as r:
                assert r.read() == b"abc"
            assert driver.stat("f").size == 3

    def test_writer_close_then_resume(self, driver: StorageDriver) -> None:
        half = len(PAYLOAD) // 2
        with driver.writer("u/data") as w:
            w.write(PAYLOAD[:half])
        assert driver.stat("u/data").size == half
        w2 = driver.writer("u/data", append=True)
        assert w2.size == half
        w2.write(memoryview(PAYLOAD)[half:])
        assert w2.size == len(PAYLOAD)
        w2.commit()
        assert driver.get_content("u/data") == PAYLOAD

    def test_writer_append_needs_a_file(self, driver: StorageDriver) -> None:
        with pytest.raises(PathNotFound):
            driver.writer("nothing/here", append=True)

    def test_writer_truncates_without_append(self, driver: StorageDriver) -> None:
        driver.put_content("f", PAYLOAD)
        w = driver.writer("f")
        assert w.size == 0
        w.write(b"xy")
        w.commit()
        assert driver.get_content("f") == b"xy"

    def test_writer_cancel_removes(self, driver: StorageDriver) -> None:
        driver.put_content("keep/other", b"o")
        w = driver.writer("keep/sub/data")
        w.write(PAYLOAD)
        w.cancel()
        with pytest.raises(PathNotFound):
            driver.stat("keep/sub/data")
        with pytest.raises(PathNotFound):
            driver.stat("keep/sub")  # pruned
        assert driver.list("keep") == ["keep/other"]
        with pytest.raises(ValueError):
            w.write(b"x")

    def test_writer_context_manager_keeps_bytes(self, driver: StorageDriver) -> None:
        with pytest.raises(RuntimeError), driver.writer("f") as w:
            w.write(b"partial")
            raise RuntimeError("client went away")
        assert driver.get_content("f") == b"partial"

    # -- tree ---------------------------------------------------------------------------

    def test_stat(self, driver: StorageDriver) -> None:
        driver.put_content("d/f", b"12345")
        fi = driver.stat("d/f")
        assert (fi.path, fi.size, fi.is_dir) == ("d/f", 5, False)
        assert fi.mtime > 0
        d = driver.stat("d")
        assert d.is_dir and d.path == "d"
        assert driver.stat("").is_dir
        with pytest.raises(PathNotFound):
            driver.stat("d/missing")

    def test_list(self, driver: StorageDriver) -> None:
        for p in ("r/b", "r/a/x", "r/c/y/z", "top"):
            driver.put_content(p, b"1")
        assert driver.list("r") == ["r/a", "r/b", "r/c"]
        assert driver.list("") == ["r", "top"]
        assert driver.list("r/c/y") == ["r/c/y/z"]
        with pytest.raises(PathNotFound):
            driver.list("missing")
        with pytest.raises(PathNotFound):
            driver.list("top")  # a file

    def test_list_empty_root(self, driver: StorageDriver) -> None:
        assert driver.list("") == []
        assert list(driver.walk("")) == []

    def test_walk(self, driver: StorageDriver) -> None:
        for p, data in (("w/b", b"22"), ("w/a/x", b"1"), ("w/a/y/z", b"333"), ("v", b"")):
            driver.put_content(p, data)
        got = [(fi.path, fi.is_dir, fi.size) for fi in driver.walk("w")]
        assert got == [("w/a", True, 0), ("w/a/x", False, 1), ("w/a/y", True, 0),
                       ("w/a/y/z", False, 3), ("w/b", False, 2)]
        assert [fi.path for fi in driver.walk("")][:2] == ["v", "w"]
        with pytest.raises(PathNotFound):
            list(driver.walk("missing"))

    def test_move(self, driver: StorageDriver) -> None:
        driver.put_content("up/1/data", PAYLOAD)
        driver.put_content("blobs/x/data", b"old")
        driver.move("up/1/data", "blobs/x/data")
        assert driver.get_content("blobs/x/data") == PAYLOAD
        with pytest.raises(PathNotFound):
            driver.stat("up/1/data")
        with pytest.raises(PathNotFound):
            driver.stat("up")  # pruned up to the root
        driver.move("blobs/x/data", "new/deep/dir/data")  # parents created
        assert driver.get_content("new/deep/dir/data") == PAYLOAD
        with pytest.raises(PathNotFound):
            driver.move("blobs/x/data", "y")

    def test_delete_file_and_tree(self, driver: StorageDriver) -> None:
        for p in ("t/a/1", "t/a/2", "t/b/3", "u/4"):
            driver.put_content(p, b"x")
        driver.delete("t/a/1")
        assert driver.list("t/a") == ["t/a/2"]
        driver.delete("t")
        assert driver.list("") == ["u"]
        with pytest.raises(PathNotFound):
            driver.delete("t")
        driver.delete("u/4")
        assert driver.list("") == []

    # -- concurrency --------------------------------------------------------------------

    def test_concurrent_puts_are_atomic(self, driver: StorageDriver) -> None:
        values = [bytes([i]) * 50_000 for i in range(8)]
        seen: list[bytes] = []
        stop = threading.Event()

        def reader() -> None:
            while not stop.is_set():
                try:
                    seen.append(driver.get_content("shared/link"))
                except PathNotFound:
                    pass

        t = threading.Thread(target=reader)
        t.start()
        try:
            with ThreadPoolExecutor(4) as ex:
                list(ex.map(lambda v: driver.put_content("shared/link", v), values * 5))
        finally:
            stop.set()
            t.join()
        assert driver.get_content("shared/link") in values
        assert all(s in values for s in seen)  # never a torn write

    def test_prune_races_with_create(self, driver: StorageDriver) -> None:
        """Deleting the last file of a directory while another thread writes into it:
        the write must land (directories are recreated, not lost)."""

        def churn(i: int) -> None:
            for j in range(50):
                driver.put_content(f"race/d/{i}-{j}", b"x")
                driver.delete(f"race/d/{i}-{j}")
            driver.put_content(f"race/d/final-{i}", b"ok")

        with ThreadPoolExecutor(4) as ex:
            list(ex.map(churn, range(4)))
        assert driver.list("race/d") == [f"race/d/final-{i}" for i in range(4)]
