"""``FilesystemDriver``: registry storage in a directory on a local disk.

Each driver path is the same relative path under ``root``; ``check_path`` has already
ruled out ``..``, dot files, absolute paths and NUL, and symlinks are never created, so
every operation stays beneath ``root``.

Atomicity: ``put_content`` writes a temporary sibling (``.tmp-<random>``, invisible to
``list``/``walk`` because driver paths cannot start with ``.``), fsyncs it when
``fsync`` is on, and renames it over the target. ``move`` is ``rename(2)``. A writer's
``commit`` fsyncs the file. Empty directories are pruned after deletes and moves, so the
tree matches the Protocol's "a directory exists while it holds a file".
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat as stat_mod
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import BinaryIO

from ketch.errors import InvalidArgument
from ketch.registry.storage.driver import (
    FileInfo,
    PathNotFound,
    check_path,
    parent_dirs,
)

__all__ = ["FilesystemDriver", "FilesystemWriter"]

_TMP_PREFIX = ".tmp-"


class FilesystemWriter:
    """A ``FileWriter`` on an open file descriptor (see ``StorageDriver.writer``)."""

    def __init__(self, driver: FilesystemDriver, path: str, fd: int, size: int) -> None:
        self._driver = driver
        self._path = path
        self._fd: int | None = fd
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def _live(self) -> int:
        if self._fd is None:
            raise ValueError(f"writer for {self._path!r} is finished")
        return self._fd

    def write(self, data: bytes | bytearray | memoryview) -> int:
        fd = self._live()
        view = memoryview(data)
        total = len(view)
        while view:
            n = os.write(fd, view)
            self._size += n
            view = view[n:]
        return total

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def cancel(self) -> None:
        self._live()
        self.close()
        with contextlib.suppress(PathNotFound):
            self._driver.delete(self._path)

    def commit(self) -> None:
        fd = self._live()
        if self._driver.fsync:
            os.fsync(fd)
        self.close()

    def __enter__(self) -> FilesystemWriter:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class FilesystemDriver:
    """A ``StorageDriver`` rooted at directory ``root`` (created if missing)."""

    name = "filesystem"

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.fsync = fsync
        os.makedirs(self.root, mode=0o755, exist_ok=True)

    def _full(self, path: str, *, root_ok: bool = False) -> str:
        check_path(path, root_ok=root_ok)
        return os.path.join(self.root, path) if path else self.root

    def _makedirs(self, path: str) -> None:
        parent = os.path.dirname(self._full(path))
        os.makedirs(parent, mode=0o755, exist_ok=True)

    def _prune(self, path: str) -> None:
        """Remove the now-empty directories above ``path`` (stop at the first non-empty)."""
        for d in parent_dirs(path):
            try:
                os.rmdir(os.path.join(self.root, d))
            except OSError:
                return

    def _retry_enoent(self, path: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` after creating ``path``'s parents; a concurrent prune may remove
        them in between, so retry a few times on ENOENT."""
        for attempt in range(16):
            last = attempt == 15
            try:
                self._makedirs(path)  # EEXIST when a parent is pruned mid-makedirs
            except (FileNotFoundError, FileExistsError):
                if last:
                    raise
                continue
            try:
                fn()
                return
            except FileNotFoundError:
                if last:
                    raise

    # -- whole files --------------------------------------------------------------------

    def get_content(self, path: str) -> bytes:
        full = self._full(path)
        try:
            with open(full, "rb") as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise PathNotFound(path) from None

    def put_content(self, path: str, data: bytes) -> None:
        full = self._full(path)
        tmp = os.path.join(os.path.dirname(full), _TMP_PREFIX + secrets.token_hex(8))

        def write() -> None:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    if self.fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, full)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

        try:
            self._retry_enoent(path, write)
        except IsADirectoryError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise InvalidArgument(f"cannot write {path!r}: it is a directory") from None

    # -- streams ------------------------------------------------------------------------

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        full = self._full(path)
        if offset < 0:
            raise InvalidArgument(f"invalid offset {offset} for {path!r}")
        try:
            f = open(full, "rb")  # noqa: SIM115 - handed to the caller
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise PathNotFound(path) from None
        try:
            size = os.fstat(f.fileno()).st_size
            if offset > size:
                raise InvalidArgument(f"offset {offset} past the end of {path!r} ({size})")
            f.seek(offset)
        except BaseException:
            f.close()
            raise
        return f

    def writer(self, path: str, append: bool = False) -> FilesystemWriter:
        full = self._full(path)
        if append:
            try:
                fd = os.open(full, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError):
                raise PathNotFound(path) from None
            return FilesystemWriter(self, path, fd, os.fstat(fd).st_size)
        fds: list[int] = []

        def create() -> None:
            fds.append(os.open(full, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                               0o644))

        self._retry_enoent(path, create)
        return FilesystemWriter(self, path, fds[0], 0)

    # -- tree ---------------------------------------------------------------------------

    def stat(self, path: str) -> FileInfo:
        full = self._full(path, root_ok=True)
        try:
            st = os.stat(full)
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFound(path) from None
        is_dir = stat_mod.S_ISDIR(st.st_mode)
        return FileInfo(path, 0 if is_dir else st.st_size, st.st_mtime, is_dir)

    def list(self, path: str) -> list[str]:
        full = self._full(path, root_ok=True)
        try:
            names = os.listdir(full)
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFound(path) from None
        prefix = f"{path}/" if path else ""
        return sorted(prefix + n for n in names if not n.startswith("."))

    def move(self, src: str, dst: str) -> None:
        full_src, full_dst = self._full(src), self._full(dst)
        if not os.path.isfile(full_src):
            raise PathNotFound(src)

        def rename() -> None:
            os.rename(full_src, full_dst)

        try:
            self._retry_enoent(dst, rename)
        except FileNotFoundError:
            raise PathNotFound(src) from None
        self._prune(src)

    def delete(self, path: str) -> None:
        full = self._full(path)
        try:
            os.unlink(full)
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFound(path) from None
        except IsADirectoryError:
            self._rmtree(path, full)
        except PermissionError as e:  # unlink(dir) is EPERM on Linux
            if not os.path.isdir(full):
                raise
            del e
            self._rmtree(path, full)
        self._prune(path)

    def _rmtree(self, path: str, full: str) -> None:
        # Rename aside first so readers never see a half-deleted directory.
        aside = os.path.join(os.path.dirname(full), _TMP_PREFIX + secrets.token_hex(8))
        try:
            os.rename(full, aside)
        except FileNotFoundError:
            raise PathNotFound(path) from None
        shutil.rmtree(aside, ignore_errors=True)

    def walk(self, path: str) -> Iterator[FileInfo]:
        full = self._full(path, root_ok=True)
        if not os.path.isdir(full):
            raise PathNotFound(path)
        yield from self._walk(path, full)

    def _walk(self, path: str, full: str) -> Iterator[FileInfo]:
        try:
            entries = sorted((e for e in os.scandir(full) if not e.name.startswith(".")),
                             key=lambda e: e.name)
        except FileNotFoundError:
            return  # removed while walking
        prefix = f"{path}/" if path else ""
        for e in entries:
            child = prefix + e.name
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat_mod.S_ISDIR(st.st_mode):
                yield FileInfo(child, 0, st.st_mtime, True)
                yield from self._walk(child, e.path)
            elif stat_mod.S_ISREG(st.st_mode):
                yield FileInfo(child, st.st_size, st.st_mtime, False)
