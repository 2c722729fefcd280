"""Extracting a tar into a container's filesystem: put_archive."""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
import tarfile
from typing import IO

from ketch.engine.archive.tarout import CHUNK, XATTR_QUIET
from ketch.engine.archive.view import O_LIST, FsView, Node, Scope, clean, found
from ketch.errors import Internal, InvalidArgument

__all__ = ["put_archive"]


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

    def __init__(self, scope: Scope, dest: tuple[str, ...], no_overwrite_dir_non_dir: bool,
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

    def _entry(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, parent: Node, base: str) -> None:
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
        link: tuple[Node, str] | None = self._link_source(ti) if ti.islnk() else None
        try:
            if old is not None and not self._clear(ti, parent, base, path, old, link):
                return
            self._create(tf, ti, parent, base, link)
        finally:
            if link is not None:
                os.close(link[0].fd)

    def _clear(self, ti: tarfile.TarInfo, parent: Node, base: str, path: str,
               old: os.stat_result, link: tuple[Node, str] | None) -> bool:
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

    def _link_source(self, ti: tarfile.TarInfo) -> tuple[Node, str]:
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

    def _create(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, parent: Node, base: str,
                link: tuple[Node, str] | None) -> None:
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
                    while chunk := src.read(CHUNK):
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

    def _node(self, ti: tarfile.TarInfo, parent: Node, base: str,
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

    def _dir_meta(self, node: Node, ti: tarfile.TarInfo) -> None:
        fd = os.open(".", O_LIST, dir_fd=node.fd)
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
                fd = os.open(".", O_LIST, dir_fd=node.fd)
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
            if e.errno not in (*XATTR_QUIET, errno.EPERM):
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
    _, parts, _ = clean(path)
    with Scope(view) as scope:
        with found(view, path):
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
