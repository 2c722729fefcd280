"""``InMemoryDriver``: registry storage in a dict, for tests and throwaway registries.

Files are ``bytearray``s keyed by path; directories are implied by the keys. One lock
guards the dict, so the driver is thread-safe; readers get a snapshot of the bytes.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import BinaryIO

from ketch.errors import InvalidArgument
from ketch.registry.storage.driver import FileInfo, PathNotFound, check_path

__all__ = ["InMemoryDriver", "InMemoryWriter"]


class InMemoryWriter:
    """A ``FileWriter`` appending to one file of an ``InMemoryDriver``."""

    def __init__(self, driver: InMemoryDriver, path: str) -> None:
        self._driver = driver
        self._path = path
        self._open = True

    @property
    def size(self) -> int:
        with self._driver._lock:
            entry = self._driver._files.get(self._path)
            return len(entry[0]) if entry is not None else 0

    def _live(self) -> None:
        if not self._open:
            raise ValueError(f"writer for {self._path!r} is finished")

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._live()
        with self._driver._lock:
            entry = self._driver._files.get(self._path)
            if entry is None:  # deleted underneath us: start over, as a file system would
                entry = (bytearray(), time.time())
            entry[0].extend(data)
            self._driver._files[self._path] = (entry[0], time.time())
        return len(data)

    def close(self) -> None:
        self._open = False

    def cancel(self) -> None:
        self._live()
        self._open = False
        with self._driver._lock:
            self._driver._files.pop(self._path, None)

    def commit(self) -> None:
        self._live()
        self._open = False

    def __enter__(self) -> InMemoryWriter:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class InMemoryDriver:
    """A ``StorageDriver`` that keeps everything in memory; lost when dropped."""

    name = "inmemory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, tuple[bytearray, float]] = {}

    def _is_dir(self, path: str) -> bool:
        if path == "":
            return True
        prefix = path + "/"
        return any(k.startswith(prefix) for k in self._files)

    def get_content(self, path: str) -> bytes:
        check_path(path)
        with self._lock:
            entry = self._files.get(path)
            if entry is None:
                raise PathNotFound(path)
            return bytes(entry[0])

    def put_content(self, path: str, data: bytes) -> None:
        check_path(path)
        with self._lock:
            if self._is_dir(path):
                raise InvalidArgument(f"cannot write {path!r}: it is a directory")
            self._check_parents(path)
            self._files[path] = (bytearray(data), time.time())

    def _check_parents(self, path: str) -> None:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in self._files:
                raise InvalidArgument(f"cannot write {path!r}: a parent is a file")

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        data = self.get_content(path)
        if offset < 0 or offset > len(data):
            raise InvalidArgument(f"offset {offset} outside {path!r} ({len(data)} bytes)")
        f = io.BytesIO(data)
        f.seek(offset)
        return f

    def writer(self, path: str, append: bool = False) -> InMemoryWriter:
        check_path(path)
        with self._lock:
            if append:
                if path not in self._files:
                    raise PathNotFound(path)
            else:
                if self._is_dir(path):
                    raise InvalidArgument(f"cannot write {path!r}: it is a directory")
                self._check_parents(path)
                self._files[path] = (bytearray(), time.time())
        return InMemoryWriter(self, path)

    def stat(self, path: str) -> FileInfo:
        check_path(path, root_ok=True)
        with self._lock:
            entry = self._files.get(path)
            if entry is not None:
                return FileInfo(path, len(entry[0]), entry[1], False)
            prefix = path + "/" if path else ""
            times = [m for k, (_, m) in self._files.items() if k.startswith(prefix)]
            if not times and path:
                raise PathNotFound(path)
            return FileInfo(path, 0, max(times, default=0.0), True)

    def list(self, path: str) -> list[str]:
        check_path(path, root_ok=True)
        prefix = path + "/" if path else ""
        with self._lock:
            children = {prefix + k[len(prefix):].split("/", 1)[0]
                        for k in self._files if k.startswith(prefix)}
        if not children and path:
            raise PathNotFound(path)
        return sorted(children)

    def move(self, src: str, dst: str) -> None:
        check_path(src)
        check_path(dst)
        with self._lock:
            entry = self._files.get(src)
            if entry is None:
                raise PathNotFound(src)
            if self._is_dir(dst):
                raise InvalidArgument(f"cannot move onto {dst!r}: it is a directory")
            self._check_parents(dst)
            del self._files[src]
            self._files[dst] = entry

    def delete(self, path: str) -> None:
        check_path(path)
        prefix = path + "/"
        with self._lock:
            doomed = [k for k in self._files if k == path or k.startswith(prefix)]
            if not doomed:
                raise PathNotFound(path)
            for k in doomed:
                del self._files[k]

    def walk(self, path: str) -> Iterator[FileInfo]:
        check_path(path, root_ok=True)
        prefix = path + "/" if path else ""
        with self._lock:
            snapshot = {k: (len(v), m) for k, (v, m) in self._files.items()
                        if k.startswith(prefix)}
        if not snapshot and path:
            raise PathNotFound(path)
        dirs: dict[str, float] = {}
        for k, (_, m) in snapshot.items():
            parts = k[len(prefix):].split("/")
            for i in range(1, len(parts)):
                d = prefix + "/".join(parts[:i])
                dirs[d] = max(dirs.get(d, 0.0), m)
        entries = [FileInfo(d, 0, m, True) for d, m in dirs.items()]
        entries += [FileInfo(k, size, m, False) for k, (size, m) in snapshot.items()]
        # depth first with sorted siblings == sort by path components
        entries.sort(key=lambda fi: fi.path.split("/"))
        yield from entries
