"""A container's filesystem seen from the host: ``docker cp`` and ``docker export``.

While a container exists its root is a directory on the host (the mounted overlay
``merged`` directory, or a native snapshot's tree) and its volumes and binds are
host directories that, in the container's own mount namespace, sit on top of it.
:class:`FsView` describes that pair; every function here works on one::

    stat_path(view, path)              PathStat for HEAD/GET /containers/{id}/archive
    get_archive(view, path, out)       GET  /containers/{id}/archive: a tar of path
    put_archive(view, path, tar, ...)  PUT  /containers/{id}/archive: extract into path
    export(view, out)                  GET  /containers/{id}/export: the root, no volumes

Paths follow Docker: taken as absolute in the container and cleaned lexically; the
last component is not followed if it is a symlink unless the path ends in ``/`` or
``/.``; a tar's top entry is the path's base name (``.`` for ``dir/.``, whose
entries are then ``./…``). An extraction point is always followed and must be a
directory.

Safety. The container owns what is in its root and its writable mounts and may
change it while we work: swapping a directory for a symlink to a host path between
our check and our use is the CVE-2018-15664 attack. So no path under the root is
ever resolved by the kernel. :class:`_Scope` looks up one component at a time with
``openat(parent, name, O_PATH|O_NOFOLLOW)`` from a descriptor it already holds,
reads symlinks itself, restarts an absolute target at the container's root and
stops ``..`` there; everything is then read and written through the descriptors
(or ``*at`` calls on a held parent, never following the last component). Whatever
the container swaps in meanwhile, nothing outside its root and mount sources is
reached. Tar entries are confined the same way: ``..`` that would climb above the
extraction point is refused, absolute names are taken relative to it, and symlinks
and hard links are interpreted inside the container only.

Mounts. A lookup that reaches a mount's destination continues in the mount's host
source (trusted: chosen by the engine). Destinations are matched as given, the
canonical paths the runtime mounted on. tmpfs mounts are not part of a view: on the
host their content exists only inside the container's mount namespace, so paths
below one show, and are written to, the root underneath.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import errno
import json
import logging
import os
import posixpath
import shutil
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from ketch.errors import Internal, InvalidArgument, NotFound

__all__ = ["FsView", "TarWriter", "export", "get_archive", "put_archive", "stat_header",
           "stat_path"]

log = logging.getLogger(__name__)

_MAXSYMLINKS = 40  # Linux's limit for one lookup
_O_LOOKUP = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_O_LIST = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_CHUNK = 1024 * 1024
_BLOCK = 512
_XATTR_QUIET = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA)

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
class _Node:
    """An object reached inside the container: an ``O_PATH`` descriptor and where it is."""

    fd: int
    parts: tuple[str, ...]  # its canonical path in the container
    st: os.stat_result
    mount: str | None  # destination of the mount it lies in; None: the root
    ro: bool

    @property
    def path(self) -> str:
        return "/" + "/".join(self.parts)


class _Scope:
    """Component-wise lookups from a held descriptor of the root (see the module doc)."""

    def __init__(self, view: FsView, *, use_mounts: bool = True) -> None:
        self.view = view
        self.mounts: dict[str, tuple[str, bool]] = {}
        if use_mounts:
            for dest, source, ro in view.mounts:
                self.mounts[posixpath.normpath("/" + dest.lstrip("/"))] = (source, ro)
        fd = os.open(view.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.root = _Node(fd, (), os.fstat(fd), None, view.read_only_root)

    def __enter__(self) -> _Scope:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.root.fd)

    def child(self, parent: _Node, name: str) -> _Node:
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
            return _Node(fd, parts, os.fstat(fd), where, ro)
        except BaseException:
            os.close(fd)
            raise

    def names(self, node: _Node) -> list[str]:
        """The entries of directory ``node`` (mount points on it included), sorted."""
        fd = os.open(".", _O_LIST, dir_fd=node.fd)
        try:
            found = set(os.listdir(fd))
        finally:
            os.close(fd)
        prefix = node.path.rstrip("/") + "/"
        for dest in self.mounts:
            if dest.startswith(prefix) and "/" not in dest[len(prefix):]:
                found.add(dest[len(prefix):])
        return sorted(found)

    def check_writable(self, node: _Node) -> None:
        """Raise Docker's error if ``node`` lies in the read-only root or a read-only mount."""
        if node.ro:
            raise InvalidArgument("container rootfs is marked read-only" if node.mount is None
                                  else "mounted volume is marked read-only")

    def resolve(self, parts: Sequence[str], *, follow: bool, create: bool = False) -> _Node:
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
              partial: bool) -> tuple[_Node, list[str]]:
        todo = [p for p in reversed(parts) if p not in ("", ".")]
        stack = [_Node(os.dup(self.root.fd), (), self.root.st, None, self.root.ro)]
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

def _clean(path: str) -> tuple[str, tuple[str, ...], bool]:
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
def _found(view: FsView, path: str) -> Iterator[None]:
    try:
        yield
    except (FileNotFoundError, NotADirectoryError) as e:
        raise NotFound(f"Could not find the file {path} in container {view.name}") from e
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise InvalidArgument(f"{path}: too many levels of symbolic links") from e


def _lookup(scope: _Scope, view: FsView, path: str) -> tuple[_Node, dict[str, Any]]:
    """The node ``path`` names (caller closes it) and its PathStat."""
    cleaned, parts, follow = _clean(path)
    with _found(view, path):
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
    with _Scope(view) as scope:
        node, out = _lookup(scope, view, path)
        os.close(node.fd)
        return out


# -- writing tars ----------------------------------------------------------------------------

def _xattrs(fd: int, ti: tarfile.TarInfo) -> None:
    """Copy ``security.capability`` and ``user.*`` of ``fd`` into PAX headers."""
    headers: dict[str, str] = {}
    try:
        names = os.listxattr(fd)
    except OSError as e:
        if e.errno in _XATTR_QUIET:
            return
        raise
    for name in sorted(names):
        if name == "security.capability" or name.startswith("user."):
            try:
                value = os.getxattr(fd, name)
            except OSError as e:
                if e.errno in _XATTR_QUIET:
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
            chunk = os.read(fd, min(left, _CHUNK))
            if not chunk:
                chunk = bytes(min(left, _CHUNK))
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
            rfd = os.open(".", _O_LIST, dir_fd=fd)
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


def _write_tree(scope: _Scope, top: _Node, name: str | None, w: TarWriter) -> None:
    """``top`` as ``name`` and what is below it as ``name/…`` (``None``: below only, bare)."""
    if name is not None:
        w.add(name, top.fd, top.st)
    if not stat.S_ISDIR(top.st.st_mode):
        return
    prefix = "" if name is None else name.rstrip("/") + "/"
    stack: list[tuple[_Node, str, Iterator[str]]] = [(top, prefix, iter(scope.names(top)))]
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
    sources. Entries are named after the path's base name (see the module doc).
    Errors as :func:`stat_path`, raised before anything is written.
    """
    with _Scope(view) as scope:
        node, path_stat = _lookup(scope, view, path)
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
    with _Scope(view, use_mounts=False) as scope:
        w = TarWriter(out)
        _write_tree(scope, scope.root, None, w)
        w.close()


# -- extracting ------------------------------------------------------------------------------

def _member_parts(name: str, entry: str, what: str = "path") -> tuple[str, ...]:
    """The parts of a tar name below the extraction point; ``()`` for the point itself."""
    if "\x00" in name:
        raise InvalidArgument(f"archive entry {entry!r}: {what} contains a NUL byte")
    norm = posixpath.normpath(name).lstrip("/") if name else "."
    if norm == ".." or norm.startswith("../"):
        raise InvalidArgument(f"archive entry {entry!r}: {what} {name!r} is outside of the "
                              f"extraction point")
    return tuple(p for p in norm.split("/") if p not in ("", "."))


class _Extractor:
    """One PUT: entries of a tar written below ``dest`` through the scope."""

    def __init__(self, scope: _Scope, dest: tuple[str, ...], no_overwrite_dir_non_dir: bool,
                 owner: tuple[int, int] | None) -> None:
        self.scope, self.dest = scope, dest
        self.no_overwrite = no_overwrite_dir_non_dir
        self.owner = owner
        self.privileged = os.geteuid() == 0
        self.dirs: list[tuple[tuple[str, ...], int, int, int, int]] = []

    def apply(self, tf: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        parts = _member_parts(ti.name, ti.name)
        if not parts:
            if ti.isdir():
                return  # the extraction point itself stays as it is (as Docker does)
            raise InvalidArgument(f"archive entry {ti.name!r}: the top must be a directory")
        try:
            parent = self.scope.resolve((*self.dest, *parts[:-1]), follow=True, create=True)
        except NotADirectoryError as e:
            raise InvalidArgument(f"archive entry {ti.name!r}: {e.filename} is not a "
                                  f"directory") from e
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise InvalidArgument(f"archive entry {ti.name!r}: too many symlinks") from e
        try:
            if not stat.S_ISDIR(parent.st.st_mode):
                raise InvalidArgument(f"archive entry {ti.name!r}: {parent.path} is not a "
                                      f"directory")
            self.scope.check_writable(parent)
            self._entry(tf, ti, parent, parts[-1])
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise InvalidArgument(f"archive entry {ti.name!r}: too many symlinks") from e
            e.add_note(f"archive entry {ti.name!r}")
            raise
        finally:
            os.close(parent.fd)

    def _ids(self, ti: tarfile.TarInfo) -> tuple[int, int] | None:
        if not self.privileged:
            return None
        return self.owner if self.owner is not None else (ti.uid, ti.gid)

    def _entry(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, parent: _Node, base: str) -> None:
        path = parent.path.rstrip("/") + "/" + base
        if path in self.scope.mounts:
            if not ti.isdir():
                raise InvalidArgument(f"cannot overwrite mount point {path} with non-directory "
                                      f"{ti.name!r}")
            node = self.scope.child(parent, base)
            try:
                self.scope.check_writable(node)
                self._dir_meta(node, ti)
            finally:
                os.close(node.fd)
            return
        try:
            old: os.stat_result | None = os.stat(base, dir_fd=parent.fd, follow_symlinks=False)
        except FileNotFoundError:
            old = None
        link: tuple[_Node, str] | None = self._link_source(ti) if ti.islnk() else None
        try:
            if old is not None and not self._clear(ti, parent, base, path, old, link):
                return
            self._create(tf, ti, parent, base, link)
        finally:
            if link is not None:
                os.close(link[0].fd)

    def _clear(self, ti: tarfile.TarInfo, parent: _Node, base: str, path: str,
               old: os.stat_result, link: tuple[_Node, str] | None) -> bool:
        """Make room for the entry; False if nothing more is to be done."""
        old_dir = stat.S_ISDIR(old.st_mode)
        if self.no_overwrite and old_dir and not ti.isdir():
            raise InvalidArgument(f"cannot overwrite directory {path!r} with non-directory "
                                  f"{ti.name!r}")
        if self.no_overwrite and not old_dir and ti.isdir():
            raise InvalidArgument(f"cannot overwrite non-directory {path!r} with directory "
                                  f"{ti.name!r}")
        if old_dir and ti.isdir():
            node = self.scope.child(parent, base)
            try:
                if stat.S_ISDIR(node.st.st_mode):
                    self._dir_meta(node, ti)
                    return False
            finally:
                os.close(node.fd)
        if link is not None:
            tst = os.stat(link[1], dir_fd=link[0].fd, follow_symlinks=False)
            if os.path.samestat(tst, old):
                return False  # already that file
        if old_dir:
            shutil.rmtree(base, dir_fd=parent.fd)
        else:
            os.unlink(base, dir_fd=parent.fd)
        return True

    def _link_source(self, ti: tarfile.TarInfo) -> tuple[_Node, str]:
        parts = _member_parts(ti.linkname, ti.name, "hard link target")
        if not parts:
            raise InvalidArgument(f"archive entry {ti.name!r}: hard link to a directory")
        try:
            tparent = self.scope.resolve((*self.dest, *parts[:-1]), follow=True)
            try:
                tst = os.stat(parts[-1], dir_fd=tparent.fd, follow_symlinks=False)
            except BaseException:
                os.close(tparent.fd)
                raise
        except (FileNotFoundError, NotADirectoryError) as e:
            raise InvalidArgument(f"archive entry {ti.name!r}: hard link target "
                                  f"{ti.linkname!r} does not exist") from e
        if stat.S_ISDIR(tst.st_mode):
            os.close(tparent.fd)
            raise InvalidArgument(f"archive entry {ti.name!r}: hard link to a directory")
        return tparent, parts[-1]

    def _create(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, parent: _Node, base: str,
                link: tuple[_Node, str] | None) -> None:
        ids = self._ids(ti)
        mtime = int(ti.mtime) * 1_000_000_000
        pfd = parent.fd
        if ti.isdir():
            os.mkdir(base, 0o700, dir_fd=pfd)
            node = self.scope.child(parent, base)
            try:
                self._dir_meta(node, ti)
            finally:
                os.close(node.fd)
        elif ti.isreg():
            fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=pfd)
            try:
                src = tf.extractfile(ti)
                if src is not None:
                    while chunk := src.read(_CHUNK):
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view):]
                if ids is not None:
                    os.fchown(fd, *ids)
                os.fchmod(fd, ti.mode & 0o7777)  # after chown, which clears setuid
                _set_xattrs(fd, ti)
                os.utime(fd, ns=(mtime, mtime))
            finally:
                os.close(fd)
        elif ti.issym():
            if not ti.linkname or "\x00" in ti.linkname:
                raise InvalidArgument(f"archive entry {ti.name!r}: bad symlink target")
            os.symlink(ti.linkname, base, dir_fd=pfd)
            if ids is not None:
                os.chown(base, *ids, dir_fd=pfd, follow_symlinks=False)
            os.utime(base, ns=(mtime, mtime), dir_fd=pfd, follow_symlinks=False)
        elif link is not None:
            try:  # never AT_SYMLINK_FOLLOW: a link to a symlink names the symlink
                os.link(link[1], base, src_dir_fd=link[0].fd, dst_dir_fd=pfd,
                        follow_symlinks=False)
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                raise InvalidArgument(f"archive entry {ti.name!r}: hard link across "
                                      f"mounts") from e
        elif ti.ischr() or ti.isblk() or ti.isfifo():
            self._node(ti, parent, base, ids, mtime)
        else:
            raise InvalidArgument(f"archive entry {ti.name!r}: unhandled tar header type "
                                  f"{ti.type!r}")

    def _node(self, ti: tarfile.TarInfo, parent: _Node, base: str,
              ids: tuple[int, int] | None, mtime: int) -> None:
        fmt = stat.S_IFIFO if ti.isfifo() else stat.S_IFCHR if ti.ischr() else stat.S_IFBLK
        dev = 0 if ti.isfifo() else os.makedev(ti.devmajor, ti.devminor)
        os.mknod(base, fmt | 0o600, dev, dir_fd=parent.fd)
        node = self.scope.child(parent, base)
        try:
            if stat.S_IFMT(node.st.st_mode) != fmt:
                raise Internal(f"archive entry {ti.name!r}: replaced while being made")
            if ids is not None:
                os.chown(base, *ids, dir_fd=parent.fd, follow_symlinks=False)
            os.chmod(f"/proc/self/fd/{node.fd}", ti.mode & 0o7777)  # the node, by descriptor
            os.utime(base, ns=(mtime, mtime), dir_fd=parent.fd, follow_symlinks=False)
        finally:
            os.close(node.fd)

    def _dir_meta(self, node: _Node, ti: tarfile.TarInfo) -> None:
        fd = os.open(".", _O_LIST, dir_fd=node.fd)
        try:
            ids = self._ids(ti)
            if ids is not None:
                os.fchown(fd, *ids)
            _set_xattrs(fd, ti)
        finally:
            os.close(fd)
        # mode and times last: a read-only directory must still take its children,
        # and creating them changes its mtime
        self.dirs.append((node.parts, node.st.st_dev, node.st.st_ino, ti.mode & 0o7777,
                          int(ti.mtime) * 1_000_000_000))

    def finish(self) -> None:
        """Set the modes and times of the directories written (best effort)."""
        for parts, dev, ino, mode, mtime in self.dirs:
            try:
                node = self.scope.resolve(parts, follow=False)
            except OSError:
                continue
            try:
                if (node.st.st_dev, node.st.st_ino) != (dev, ino):
                    continue  # replaced meanwhile
                fd = os.open(".", _O_LIST, dir_fd=node.fd)
                try:
                    os.fchmod(fd, mode)
                    os.utime(fd, ns=(mtime, mtime))
                finally:
                    os.close(fd)
            finally:
                os.close(node.fd)


def _set_xattrs(fd: int, ti: tarfile.TarInfo) -> None:
    """Set the entry's ``security.capability`` and ``user.*`` xattrs (others are ignored)."""
    for key, value in ti.pax_headers.items():
        if not key.startswith("SCHILY.xattr."):
            continue
        name = key[len("SCHILY.xattr."):]
        if "\x00" in name or not (name == "security.capability" or name.startswith("user.")):
            continue
        try:
            os.setxattr(fd, name, value.encode("utf-8", "surrogateescape"))
        except OSError as e:
            if e.errno not in (*_XATTR_QUIET, errno.EPERM):
                raise


def put_archive(view: FsView, path: str, tar: IO[bytes], no_overwrite_dir_non_dir: bool = False,
                copy_uid_gid: bool = False, *, owner: tuple[int, int] = (0, 0)) -> None:
    """Extract the tar read from ``tar`` (plain, gzip, bzip2 or xz) into directory ``path``.

    ``path`` is followed even if it is a symlink. Entries keep the tar's numeric
    owners; with ``copy_uid_gid`` everything is owned by ``owner`` (the container's
    user; root without a user namespace). Errors, in Docker's words: NotFound
    ("Could not find the file …") when ``path`` is missing; InvalidArgument for
    "extraction point is not a directory", "container rootfs is marked read-only",
    "mounted volume is marked read-only" (also when an entry would land in such a
    place), "cannot overwrite directory … with non-directory …" (and the reverse,
    with ``no_overwrite_dir_non_dir``), entries outside the extraction point, and a
    malformed tar. Not atomic: entries written before an error stay.
    """
    _, parts, _ = _clean(path)
    with _Scope(view) as scope:
        with _found(view, path):
            dest = scope.resolve(parts, follow=True)
        try:
            if not stat.S_ISDIR(dest.st.st_mode):
                raise InvalidArgument("extraction point is not a directory")
            scope.check_writable(dest)
        finally:
            os.close(dest.fd)
        ex = _Extractor(scope, dest.parts, no_overwrite_dir_non_dir,
                        owner if copy_uid_gid else None)
        try:
            with tarfile.open(fileobj=tar, mode="r|*") as tf:
                while (ti := tf.next()) is not None:
                    ex.apply(tf, ti)
                    members = getattr(tf, "members", None)
                    if isinstance(members, list):
                        members.clear()  # stream mode keeps every TarInfo otherwise
        except tarfile.ReadError as e:
            if "empty file" in str(e):
                return  # no archive at all: nothing to do
            raise InvalidArgument(f"malformed archive: {e}") from e
        except (tarfile.TarError, EOFError) as e:
            raise InvalidArgument(f"malformed archive: {e}") from e
        finally:
            ex.finish()
