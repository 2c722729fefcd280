"""Writing tars of a container's filesystem: TarWriter, get_archive, export."""

from __future__ import annotations

import errno
import logging
import os
import stat
import tarfile
from collections.abc import Iterator
from typing import IO, Any

from ketch.engine.archive.view import O_LIST, FsView, Node, Scope, lookup
from ketch.errors import Internal

# TarWriter, get_archive and export are the package's API; CHUNK and XATTR_QUIET are
# shared with its extract module.
__all__ = ["CHUNK", "XATTR_QUIET", "TarWriter", "export", "get_archive"]

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
_BLOCK = 512
XATTR_QUIET = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA)


def _xattrs(fd: int, ti: tarfile.TarInfo) -> None:
    """Copy ``security.capability`` and ``user.*`` of ``fd`` into PAX headers."""
    headers: dict[str, str] = {}
    try:
        names = os.listxattr(fd)
    except OSError as e:
        if e.errno in XATTR_QUIET:
            return
        raise
    for name in sorted(names):
        if name == "security.capability" or name.startswith("user."):
            try:
                value = os.getxattr(fd, name)
            except OSError as e:
                if e.errno in XATTR_QUIET:
                    continue
                raise
            headers["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
    ti.pax_headers = headers


class TarWriter:
    """Writes filesystem objects, read through descriptors, as a PAX tar stream.

    Owners are numeric (no names), mtimes whole seconds; a regular file met again
    (same device and inode) becomes a hard link to its first name; the xattrs kept
    are ``security.capability`` and ``user.*``; sockets are skipped (as Docker's tar
    does). Headers come from ``tarfile``; data is copied straight from the file in
    large chunks, exactly the size the header announced (zero-padded if the file
    shrank meanwhile). ``close()`` ends the archive without closing ``out``.
    """

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._links: dict[tuple[int, int], str] = {}

    def _header(self, ti: tarfile.TarInfo) -> None:
        self._out.write(ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def _data(self, fd: int, size: int) -> None:
        left = size
        while left:
            chunk = os.read(fd, min(left, CHUNK))
            if not chunk:
                chunk = bytes(min(left, CHUNK))
            self._out.write(chunk)
            left -= len(chunk)
        if size % _BLOCK:
            self._out.write(bytes(_BLOCK - size % _BLOCK))

    def add(self, name: str, fd: int, st: os.stat_result) -> None:
        """Add the object open as ``fd`` (``O_PATH`` is enough), whose fstat is ``st``."""
        ti = tarfile.TarInfo(name)
        ti.mode, ti.uid, ti.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        ti.mtime = st.st_mtime_ns // 1_000_000_000
        ti.uname = ti.gname = ""
        mode = st.st_mode
        if stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1:
                first = self._links.setdefault(key, name)
                if first != name:
                    ti.type, ti.linkname = tarfile.LNKTYPE, first
                    self._header(ti)
                    return
            rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
            try:
                now = os.fstat(rfd)
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    raise Internal(f"tar: {name}: reopened a different file")
                ti.size = st.st_size
                _xattrs(rfd, ti)
                self._header(ti)
                self._data(rfd, st.st_size)
            finally:
                os.close(rfd)
            return
        if stat.S_ISDIR(mode):
            ti.type = tarfile.DIRTYPE
            rfd = os.open(".", O_LIST, dir_fd=fd)
            try:
                _xattrs(rfd, ti)
            finally:
                os.close(rfd)
        elif stat.S_ISLNK(mode):
            ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink("", dir_fd=fd)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            ti.type = tarfile.FIFOTYPE
        else:
            log.debug("tar: skipping socket %s", name)
            return
        self._header(ti)

    def whiteout(self, name: str) -> None:
        """Add an empty regular file ``name`` (an OCI whiteout), owned by root, mtime 0."""
        ti = tarfile.TarInfo(name)
        ti.mode, ti.mtime = 0o600, 0
        self._header(ti)

    def close(self) -> None:
        """Write the end of the archive (two zero blocks)."""
        self._out.write(bytes(2 * _BLOCK))


def _write_tree(scope: Scope, top: Node, name: str | None, w: TarWriter) -> None:
    """``top`` as ``name`` and what is below it as ``name/…`` (``None``: below only, bare)."""
    if name is not None:
        w.add(name, top.fd, top.st)
    if not stat.S_ISDIR(top.st.st_mode):
        return
    prefix = "" if name is None else name.rstrip("/") + "/"
    stack: list[tuple[Node, str, Iterator[str]]] = [(top, prefix, iter(scope.names(top)))]
    try:
        while stack:
            node, pre, names = stack[-1]
            entry = next(names, None)
            if entry is None:
                stack.pop()
                if node is not top:
                    os.close(node.fd)
                continue
            try:
                child = scope.child(node, entry)
            except FileNotFoundError:
                continue  # removed meanwhile
            try:
                w.add(pre + entry, child.fd, child.st)
                below = scope.names(child) if stat.S_ISDIR(child.st.st_mode) else None
            except BaseException:
                os.close(child.fd)
                raise
            if below is None:
                os.close(child.fd)
            else:
                stack.append((child, pre + entry + "/", iter(below)))
    finally:
        for node, _, _ in stack:
            if node is not top:
                os.close(node.fd)


def get_archive(view: FsView, path: str, out: IO[bytes]) -> dict[str, Any]:
    """Write a tar of container ``path`` to ``out`` and return its PathStat.

    Directories are archived recursively, mounts below them read from their host
    sources. Entries are named after the path's base name (see the package doc).
    Errors as :func:`stat_path`, raised before anything is written.
    """
    with Scope(view) as scope:
        node, path_stat = lookup(scope, view, path)
        try:
            w = TarWriter(out)
            _write_tree(scope, node, path_stat["name"], w)
            w.close()
        finally:
            os.close(node.fd)
    return path_stat


def export(view: FsView, out: IO[bytes]) -> None:
    """Write a tar of the container's root to ``out``: no mounts, no volume content.

    Entries are relative (``bin/``, ``bin/busybox``) and the root itself has none,
    like ``docker export``.
    """
    with Scope(view, use_mounts=False) as scope:
        w = TarWriter(out)
        _write_tree(scope, scope.root, None, w)
        w.close()
