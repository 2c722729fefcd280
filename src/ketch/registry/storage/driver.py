"""The ``StorageDriver`` seam: the registry's backend, a tree of byte files.

A driver stores *files* (byte strings) at *paths*. A path is relative to the driver's
root, ``/``-separated, e.g. ``blobs/sha256/ab/ab12…/data``; the empty path ``""`` names
the root itself (only for ``stat``, ``list`` and ``walk``). *Directories* are implied:
a directory exists exactly while some file exists beneath it, so deleting the last file
under a directory makes the directory disappear (backends prune empty directories).

Paths are checked before any backend sees them (``check_path``): no empty component,
no component starting with ``.`` (so neither ``.`` nor ``..``), no leading ``/``, no NUL.
A path that breaks a rule is an ``InvalidPath`` (``InvalidArgument``); nothing outside
the root can ever be named.

Lifecycle of a file:

* small files (links, tags, manifests) are written whole with ``put_content`` — atomic:
  readers see the old content or the new, never a mix;
* large files (blob uploads) are written through a ``FileWriter``: ``writer(path)``
  creates or truncates; ``writer(path, append=True)`` continues a file written before
  (a resumable upload) — ``size`` tells where it stands. ``close()`` keeps what was
  written (to be resumed later), ``cancel()`` removes it, ``commit()`` makes it durable
  (fsync on disk) and closes. Bytes written are visible to ``reader`` right away; only
  ``commit`` promises they survive a crash;
* ``move(src, dst)`` renames atomically, replacing ``dst`` (how a finished upload becomes
  a blob); ``delete`` removes a file or a whole directory.

``reader(path, offset)`` returns a binary file object positioned at ``offset``; a backend
on a local disk returns a real file (with ``fileno()``) so the server can ``sendfile`` it.
Missing paths raise ``PathNotFound`` (``NotFound``). Drivers are safe to call from several
threads at once; the registry runs bulk I/O in worker threads.

An S3 or other object-store backend implements the same Protocol in one more module and
runs the conformance suite in ``tests/conformance/storage_driver_suite.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO, Protocol, runtime_checkable

from ketch.errors import InvalidArgument, NotFound

__all__ = [
    "FileInfo",
    "FileWriter",
    "InvalidPath",
    "PathNotFound",
    "StorageDriver",
    "check_path",
    "parent_dirs",
]

MAX_PATH = 4096


class PathNotFound(NotFound):
    """No file or directory at the path."""

    def __init__(self, path: str) -> None:
        super().__init__(f"path not found: {path!r}")
        self.path = path


class InvalidPath(InvalidArgument):
    """The path breaks the rules in ``check_path``."""


def check_path(path: str, *, root_ok: bool = False) -> str:
    """``path`` if it is a valid driver path (see the module docstring), else ``InvalidPath``.

    ``root_ok`` admits ``""`` (the root), for the operations that take a directory.
    """
    if not isinstance(path, str):
        raise InvalidPath(f"invalid storage path {path!r}: not a string")
    if path == "":
        if root_ok:
            return path
        raise InvalidPath("invalid storage path '': the root is not a file")
    if len(path) > MAX_PATH:
        raise InvalidPath(f"invalid storage path {path[:60]!r}…: longer than {MAX_PATH}")
    if "\0" in path:
        raise InvalidPath(f"invalid storage path {path!r}: contains NUL")
    if path.startswith("/"):
        raise InvalidPath(f"invalid storage path {path!r}: absolute")
    for part in path.split("/"):
        if not part:
            raise InvalidPath(f"invalid storage path {path!r}: empty component")
        if part.startswith("."):
            raise InvalidPath(f"invalid storage path {path!r}: component {part!r} starts "
                              "with '.'")
    return path


def parent_dirs(path: str) -> Iterator[str]:
    """The directories above ``path``, nearest first, excluding the root."""
    while "/" in path:
        path = path.rsplit("/", 1)[0]
        yield path


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What ``stat`` and ``walk`` report: ``size`` is 0 for directories; ``mtime`` in
    seconds since the epoch (a directory's is the newest it can cheaply tell)."""

    path: str
    size: int
    mtime: float
    is_dir: bool


@runtime_checkable
class FileWriter(Protocol):
    """An open file being written; see the module docstring for its lifecycle.

    After ``close``, ``cancel`` or ``commit`` the writer is finished and further calls
    raise ``ValueError``. Used as a context manager it closes (keeping the bytes) on exit
    unless already finished.
    """

    @property
    def size(self) -> int:
        """Bytes in the file: those found when appending plus those written since."""
        ...

    def write(self, data: bytes | bytearray | memoryview) -> int: ...

    def close(self) -> None: ...

    def cancel(self) -> None: ...

    def commit(self) -> None: ...

    def __enter__(self) -> FileWriter: ...

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None: ...


@runtime_checkable
class StorageDriver(Protocol):
    """A tree of byte files; see the module docstring for paths and lifecycle."""

    name: str

    def get_content(self, path: str) -> bytes:
        """The whole file; ``PathNotFound`` if missing (or a directory)."""
        ...

    def put_content(self, path: str, data: bytes) -> None:
        """Replace the file atomically (creating parent directories)."""
        ...

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        """A binary file positioned at ``offset`` (``InvalidArgument`` past the end);
        the caller closes it. It keeps reading the old bytes if the file is replaced."""
        ...

    def writer(self, path: str, append: bool = False) -> FileWriter:
        """A writer that creates/truncates ``path``, or continues it when ``append``
        (``PathNotFound`` if there is nothing to continue)."""
        ...

    def stat(self, path: str) -> FileInfo: ...

    def list(self, path: str) -> list[str]:
        """Sorted paths of the direct children of directory ``path``; ``PathNotFound``
        if it does not exist or is a file."""
        ...

    def move(self, src: str, dst: str) -> None:
        """Rename file ``src`` to ``dst`` atomically, replacing ``dst``."""
        ...

    def delete(self, path: str) -> None:
        """Remove a file or a directory with everything under it; ``PathNotFound`` if
        missing."""
        ...

    def walk(self, path: str) -> Iterator[FileInfo]:
        """Every file and directory under ``path`` (not ``path`` itself), depth first,
        siblings in sorted order, a directory before its contents."""
        ...
