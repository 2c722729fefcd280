"""A COPY's entries written straight into the mounted snapshot, beside its layer tar.

A COPY step used to write its layer tar into the content store, then read it back and
apply it to the snapshot (:func:`ketch.image.layer.apply_layer`): the copied bytes were
read twice and hashed twice. :class:`TreeWriter` lets the step do both in one pass —
every chunk that goes into the tar goes into the file in the tree as well — for the
entry kinds a COPY makes: directories, regular files and symlinks. (``ADD`` of a local
archive still takes the tar-then-apply road: its members can be anything.)

The rules are the layer applier's, so the tree is exactly what applying the tar would
give (``docs/build.md``):

- names are relative to ``root`` (the mounted snapshot); parents are resolved with
  :func:`ketch.runtime.rootfs.secure_join` — symlinks on the way are followed *inside*
  the root, never out of it — and missing ones are made 0755; a parent that is not a
  directory is an error;
- the last component is never followed: what is there is removed first (a directory
  too, unless a directory replaces it), and files are created ``O_EXCL|O_NOFOLLOW``;
- owners are set by root only, by number, before the mode (chown clears setuid);
  mtimes are set on the descriptor; directories get their mode and mtime in
  :meth:`TreeWriter.finish`, once nothing more is created inside them.

Lifecycle: ``TreeWriter(root)``; per entry ``directory`` / ``symlink`` /
``create`` + ``write``\\* + ``close_file``; then ``finish``. On an error the caller
discards the snapshot (it is a fresh active one), as it would after a failed apply.
"""

from __future__ import annotations

import os
import stat

from ketch.errors import InvalidArgument
from ketch.image.layer import clear_entry
from ketch.runtime.rootfs import secure_join

__all__ = ["TreeWriter"]


class TreeWriter:
    """Writes entries under ``root`` (an absolute, symlink-free directory path)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.privileged = os.geteuid() == 0
        self._dirs: dict[str, tuple[int, int, int]] = {}  # path -> (inode, mode, mtime ns)

    # -- paths ----------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        """Where entry ``name`` goes: its parent resolved (and made), the last part not."""
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts or "\0" in name:
            raise InvalidArgument(f"COPY failed: bad destination path {name!r}")
        if not parts:
            return self.root
        parent = secure_join(self.root, "/".join(parts[:-1]))
        cur = self.root
        for comp in os.path.relpath(parent, self.root).split("/"):
            if comp in ("", "."):
                continue
            cur = os.path.join(cur, comp)
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                os.mkdir(cur, 0o755)
                continue
            if not stat.S_ISDIR(st.st_mode):
                rel = os.path.relpath(cur, self.root)
                raise InvalidArgument(f"COPY failed: /{rel} exists and is not a directory")
        return os.path.join(parent, parts[-1])

    # -- entries --------------------------------------------------------------------------

    def directory(self, name: str, mode: int, uid: int, gid: int, mtime: int) -> None:
        """A directory (kept if one is there: its owner, mode and mtime replaced)."""
        path = self._path(name)
        if not clear_entry(path, keep_dir=True):
            os.mkdir(path, 0o700)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if self.privileged:
                os.fchown(fd, uid, gid)
            ino = os.fstat(fd).st_ino
        finally:
            os.close(fd)
        self._dirs[path] = (ino, mode & 0o7777, mtime * 1_000_000_000)

    def symlink(self, name: str, target: str, uid: int, gid: int, mtime: int) -> None:
        path = self._path(name)
        if not target or "\0" in target:
            raise InvalidArgument(f"COPY failed: bad symlink target for {name!r}")
        clear_entry(path, keep_dir=False)
        os.symlink(target, path)
        if self.privileged:
            os.chown(path, uid, gid, follow_symlinks=False)
        ns = mtime * 1_000_000_000
        os.utime(path, ns=(ns, ns), follow_symlinks=False)

    def create(self, name: str) -> int:
        """A new regular file (mode 0600 until :meth:`close_file`); its descriptor."""
        path = self._path(name)
        clear_entry(path, keep_dir=False)
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                       | os.O_CLOEXEC, 0o600)

    @staticmethod
    def write(fd: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def close_file(self, fd: int, mode: int, uid: int, gid: int, mtime: int) -> None:
        """Owner, then mode, then mtime; closes ``fd`` in every case."""
        try:
            if self.privileged:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode & 0o7777)
            ns = mtime * 1_000_000_000
            os.utime(fd, ns=(ns, ns))
        finally:
            os.close(fd)

    def finish(self) -> None:
        """Directory modes and mtimes, now that nothing more is created inside."""
        for path, (ino, mode, mtime) in self._dirs.items():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue  # replaced by a later entry
            try:
                if os.fstat(fd).st_ino == ino:
                    os.fchmod(fd, mode)
                    os.utime(fd, ns=(mtime, mtime))
            finally:
                os.close(fd)
