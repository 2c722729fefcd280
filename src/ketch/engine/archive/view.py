"""The confined view of a container's filesystem: lookups, request paths, PathStat.

See the package doc for the path rules and why every lookup goes one component at a
time through held descriptors.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import errno
import json
import os
import posixpath
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ketch.errors import InvalidArgument, NotFound

# FsView, stat_path and stat_header are the package's API; the rest is shared with
# its tarout and extract modules.
__all__ = ["O_LIST", "FsView", "Node", "Scope", "clean", "found", "lookup", "stat_header",
           "stat_path"]

_MAXSYMLINKS = 40  # Linux's limit for one lookup
_O_LOOKUP = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
O_LIST = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

# Go's os.FileMode type bits, which Docker's PathStat carries
_GO_DIR, _GO_SYMLINK, _GO_DEVICE, _GO_PIPE, _GO_SOCKET = 1 << 31, 1 << 27, 1 << 26, 1 << 25, 1 << 24
_GO_SETUID, _GO_SETGID, _GO_CHARDEV, _GO_STICKY = 1 << 23, 1 << 22, 1 << 21, 1 << 20


@dataclass(frozen=True)
class FsView:
    """A container's filesystem as the host sees it.

    ``root`` is the host path of the container's root (symlink-free, mounted);
    ``mounts`` are ``(destination in the container, host source, read_only)`` for
    volumes and binds (not tmpfs); ``name`` is the container as the request named
    it, for Docker's messages.
    """

    root: str
    mounts: Sequence[tuple[str, str, bool]] = ()
    read_only_root: bool = False
    name: str = ""


# -- lookups confined to the container ---------------------------------------------------

@dataclass
class Node:
    """An object reached inside the container: an ``O_PATH`` descriptor and where it is."""

    fd: int
    parts: tuple[str, ...]  # its canonical path in the container
    st: os.stat_result
    mount: str | None  # destination of the mount it lies in; None: the root
    ro: bool

    @property
    def path(self) -> str:
        return "/" + "/".join(self.parts)


class Scope:
    """Component-wise lookups from a held descriptor of the root (see the package doc)."""

    def __init__(self, view: FsView, *, use_mounts: bool = True) -> None:
        self.view = view
        self.mounts: dict[str, tuple[str, bool]] = {}
        if use_mounts:
            for dest, source, ro in view.mounts:
                self.mounts[posixpath.normpath("/" + dest.lstrip("/"))] = (source, ro)
        fd = os.open(view.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.root = Node(fd, (), os.fstat(fd), None, view.read_only_root)

    def __enter__(self) -> Scope:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.root.fd)

    def child(self, parent: Node, name: str) -> Node:
        """``name`` in directory ``parent``, not followed (FileNotFoundError if missing)."""
        parts = (*parent.parts, name)
        path = "/" + "/".join(parts)
        mount = self.mounts.get(path)
        where: str | None
        if mount is not None:
            fd = os.open(mount[0], os.O_PATH | os.O_CLOEXEC)
            where, ro = path, mount[1]
        else:
            fd = os.open(name, _O_LOOKUP, dir_fd=parent.fd)
            where, ro = parent.mount, parent.ro
        try:
            return Node(fd, parts, os.fstat(fd), where, ro)
        except BaseException:
            os.close(fd)
            raise

    def names(self, node: Node) -> list[str]:
        """The entries of directory ``node`` (mount points on it included), sorted."""
        fd = os.open(".", O_LIST, dir_fd=node.fd)
        try:
            found = set(os.listdir(fd))
        finally:
            os.close(fd)
        prefix = node.path.rstrip("/") + "/"
        for dest in self.mounts:
            if dest.startswith(prefix) and "/" not in dest[len(prefix):]:
                found.add(dest[len(prefix):])
        return sorted(found)

    def check_writable(self, node: Node) -> None:
        """Raise Docker's error if ``node`` lies in the read-only root or a read-only mount."""
        if node.ro:
            raise InvalidArgument("container rootfs is marked read-only" if node.mount is None
                                  else "mounted volume is marked read-only")

    def resolve(self, parts: Sequence[str], *, follow: bool, create: bool = False) -> Node:
        """The object at container path ``parts``; the caller closes its descriptor.

        Symlinks on the way are followed inside the container, the last one only with
        ``follow``. ``create`` makes missing directories (0755, like ``mkdir -p``).
        Raises FileNotFoundError, NotADirectoryError, or OSError(ELOOP).
        """
        node, _ = self._walk(parts, follow, create, partial=False)
        return node

    def canonical(self, parts: Sequence[str]) -> str:
        """The container path ``parts`` leads to, every symlink followed; a missing tail kept."""
        node, rest = self._walk(parts, True, False, partial=True)
        os.close(node.fd)
        out = list(node.parts)
        for p in rest:
            if p != "..":
                out.append(p)
            elif out:
                out.pop()
        return "/" + "/".join(out)

    def _walk(self, parts: Sequence[str], follow: bool, create: bool,
              partial: bool) -> tuple[Node, list[str]]:
        todo = [p for p in reversed(parts) if p not in ("", ".")]
        stack = [Node(os.dup(self.root.fd), (), self.root.st, None, self.root.ro)]
        links = 0
        try:
            while todo:
                name = todo.pop()
                if name == "..":
                    if len(stack) > 1:
                        os.close(stack.pop().fd)
                    continue
                cur = stack[-1]
                try:
                    if not stat.S_ISDIR(cur.st.st_mode):
                        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR),
                                                 cur.path)
                    node = self.child(cur, name)
                except (FileNotFoundError, NotADirectoryError) as e:
                    if partial:
                        return stack.pop(), [name, *reversed(todo)]
                    if not create or isinstance(e, NotADirectoryError):
                        raise
                    self.check_writable(cur)
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o755, dir_fd=cur.fd)
                    node = self.child(cur, name)
                if stat.S_ISLNK(node.st.st_mode) and (todo or follow):
                    try:
                        target = os.readlink("", dir_fd=node.fd)
                    finally:
                        os.close(node.fd)
                    links += 1
                    if links > _MAXSYMLINKS:
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), "/".join(parts))
                    if target.startswith("/"):
                        for n in stack[1:]:
                            os.close(n.fd)
                        del stack[1:]
                    todo.extend(p for p in reversed(target.split("/")) if p not in ("", "."))
                    continue
                stack.append(node)
            return stack.pop(), []
        finally:
            for n in stack:
                os.close(n.fd)


# -- request paths and PathStat ----------------------------------------------------------

def clean(path: str) -> tuple[str, tuple[str, ...], bool]:
    """Docker's view of a request path: (cleaned absolute path, its parts, follow the last).

    Cleaning is lexical (``/a/../b`` is ``/b``) and keeps a trailing ``/`` or ``/.``.
    """
    if not path:
        raise InvalidArgument("path cannot be empty")
    if "\x00" in path:
        raise InvalidArgument("path must not contain a NUL byte")
    cleaned = posixpath.normpath("/" + path.lstrip("/"))
    if path == "." or path.endswith("/."):
        cleaned = cleaned.rstrip("/") + "/."
    elif path.endswith("/") and not cleaned.endswith("/"):
        cleaned += "/"
    parts = tuple(p for p in cleaned.split("/") if p not in ("", "."))
    return cleaned, parts, cleaned.endswith(("/", "/."))


def _base(path: str) -> str:
    """Go's ``filepath.Base``: ``/`` for the root, ``.`` for ``dir/.``."""
    trimmed = path.rstrip("/")
    return trimmed.rsplit("/", 1)[-1] if trimmed else "/"


def _go_mode(mode: int) -> int:
    out = stat.S_IMODE(mode) & 0o777
    kind = stat.S_IFMT(mode)
    out |= {stat.S_IFDIR: _GO_DIR, stat.S_IFLNK: _GO_SYMLINK, stat.S_IFBLK: _GO_DEVICE,
            stat.S_IFCHR: _GO_DEVICE | _GO_CHARDEV, stat.S_IFIFO: _GO_PIPE,
            stat.S_IFSOCK: _GO_SOCKET}.get(kind, 0)
    for bit, go in ((stat.S_ISUID, _GO_SETUID), (stat.S_ISGID, _GO_SETGID),
                    (stat.S_ISVTX, _GO_STICKY)):
        if mode & bit:
            out |= go
    return out


def _rfc3339(ns: int) -> str:
    """Go's RFC 3339 with nanoseconds, trailing zeros dropped, in UTC."""
    secs, frac = divmod(ns, 1_000_000_000)
    when = datetime.datetime.fromtimestamp(secs, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return when + (f".{frac:09d}".rstrip("0") if frac else "") + "Z"


def stat_header(path_stat: dict[str, Any]) -> str:
    """The ``X-Docker-Container-Path-Stat`` header value: base64 of the PathStat JSON."""
    return base64.b64encode(json.dumps(path_stat, separators=(",", ":")).encode()).decode()


@contextlib.contextmanager
def found(view: FsView, path: str) -> Iterator[None]:
    """Turn a failed lookup of request ``path`` into Docker's errors.

    NotFound ("Could not find the file …") for a missing path or a non-directory on
    the way; InvalidArgument for a symlink loop; other OSErrors pass through.
    """
    try:
        yield
    except (FileNotFoundError, NotADirectoryError) as e:
        raise NotFound(f"Could not find the file {path} in container {view.name}") from e
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise InvalidArgument(f"{path}: too many levels of symbolic links") from e


def lookup(scope: Scope, view: FsView, path: str) -> tuple[Node, dict[str, Any]]:
    """The node ``path`` names (caller closes it) and its PathStat."""
    cleaned, parts, follow = clean(path)
    with found(view, path):
        node = scope.resolve(parts, follow=follow)
        try:
            if follow and not stat.S_ISDIR(node.st.st_mode):
                raise InvalidArgument(f"{path}: not a directory")
            target = ""
            if stat.S_ISLNK(node.st.st_mode):
                with contextlib.suppress(OSError):  # a loop: no target to name
                    target = scope.canonical(parts)
        except BaseException:
            os.close(node.fd)
            raise
    st = node.st
    return node, {"name": _base(cleaned), "size": st.st_size, "mode": _go_mode(st.st_mode),
                  "mtime": _rfc3339(st.st_mtime_ns), "linkTarget": target}


def stat_path(view: FsView, path: str) -> dict[str, Any]:
    """Docker's PathStat of container ``path``: name, size, mode (Go bits), mtime, linkTarget.

    ``linkTarget`` is, for a symlink, the container path it finally resolves to.
    NotFound (Docker's wording) when it does not exist; InvalidArgument for ``file/``.
    """
    with Scope(view) as scope:
        node, out = lookup(scope, view, path)
        os.close(node.fd)
        return out

