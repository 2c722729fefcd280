"""``ketch cp``: files between a container and the local filesystem, as tar through the
archive API (``GET``/``HEAD``/``PUT /containers/{id}/archive``).

Where things land follows ``docker cp`` (and ``cp -a``)::

    SRC file, DEST missing or a file   → written as DEST
    SRC file or dir, DEST a directory  → DEST/<basename of SRC>
    SRC dir, DEST missing              → DEST, with SRC's contents
    SRC dir/. (contents), DEST a dir   → SRC's contents inside DEST
    SRC or DEST ``-``                  → a tar stream on stdin / stdout

From a container, files get the local user as owner (no chown); to a container
they get root unless ``-a`` keeps the local uid/gid.
"""

from __future__ import annotations

import argparse
import io
import os
import posixpath
import tarfile
import tempfile
from collections.abc import Iterable
from typing import IO, Any

from ketch.client.cli.base import Command, Context, UsageError
from ketch.client.cli.format import human_size
from ketch.client.cli.term import is_tty
from ketch.errors import NotFound

__all__ = ["COMMANDS", "split_cp_arg"]

_MODE_DIR = 1 << 31  # Go's os.ModeDir in ContainerPathStat.mode


def split_cp_arg(arg: str) -> tuple[str | None, str]:
    """``ctr:/p`` → ``("ctr", "/p")``; local paths (``/x``, ``./a:b``, ``-``) → ``(None, arg)``."""
    if arg.startswith(("/", ".")) or ":" not in arg:
        return None, arg
    container, _, path = arg.partition(":")
    return (container, path) if container else (None, arg)


class _ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (for tarfile's stream mode)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__()
        self._it = iter(chunks)
        self._buf = b""
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return 0
            self.total += len(self._buf)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class _NoChownTar(tarfile.TarFile):
    """Extraction without chown: copied-out files belong to whoever runs ``ketch cp``."""

    def chown(self, tarinfo: tarfile.TarInfo, targetpath: object,
              numeric_owner: bool) -> None:
        return None


def _rebase(name: str, old_root: str, new_root: str) -> str | None:
    """``old_root/x`` → ``new_root/x`` (``new_root`` "" drops the root entry itself)."""
    if name == old_root:
        return new_root or None
    if name.startswith(old_root + "/"):
        rest = name[len(old_root) + 1:]
        return f"{new_root}/{rest}" if new_root else rest
    return name


def _copy_out(ctx: Context, container: str, src: str, dest: str, quiet: bool) -> int:
    stat, chunks = ctx.client.container_archive_get(container, src)
    try:
        if dest == "-":
            if is_tty(ctx.out):
                raise UsageError("cowardly refusing to write a tar stream to a terminal")
            out = ctx.out_bytes
            for data in chunks:
                out.write(data)
            out.flush()
            return 0
        src_is_dir = bool(int(stat.get("mode") or 0) & _MODE_DIR)
        root = str(stat.get("name") or posixpath.basename(src.rstrip("/")) or ".")
        contents = src.endswith("/.")
        if os.path.isdir(dest):
            target_dir, new_root = dest, ("" if contents else root)
        else:
            if dest.endswith(("/", os.sep)):
                raise UsageError(f"destination directory {dest!r} must exist")
            if src_is_dir and os.path.exists(dest):
                raise UsageError("cannot copy a directory to a file")
            target_dir = os.path.dirname(os.path.abspath(dest))
            new_root = os.path.basename(dest)
            if not os.path.isdir(target_dir):
                raise UsageError(f"destination directory {target_dir!r} does not exist")
        reader = _ChunkReader(chunks)
        with _NoChownTar.open(fileobj=reader, mode="r|") as tf:
            for member in tf:
                name = _rebase(member.name.rstrip("/"), root, new_root)
                if name is None:
                    continue
                member.name = name
                if member.islnk():
                    member.linkname = _rebase(member.linkname, root, new_root) or "."
                tf.extract(member, target_dir, filter="tar")
        if not quiet:
            ctx.error(f"Successfully copied {human_size(reader.total)} to {dest}")
    finally:
        chunks.close()
    return 0


def _tar_of(src: str, arcname: str, *, follow: bool, contents: bool) -> IO[bytes]:
    f = tempfile.TemporaryFile()  # noqa: SIM115 - returned to the caller
    try:
        with tarfile.open(fileobj=f, mode="w", dereference=follow,
                          format=tarfile.PAX_FORMAT) as tf:
            if contents and os.path.isdir(src):
                base = src.rstrip("/").removesuffix("/.")
                if arcname:
                    tf.add(base, arcname=arcname, recursive=False)
                for name in sorted(os.listdir(base)):
                    tf.add(os.path.join(base, name),
                           arcname=posixpath.join(arcname, name) if arcname else name)
            else:
                tf.add(src, arcname=arcname)
    except BaseException:
        f.close()
        raise
    f.seek(0)
    return f


def _copy_in(ctx: Context, src: str, container: str, dest: str, *, archive: bool,
             follow: bool, quiet: bool) -> int:
    if src == "-":
        ctx.client.container_archive_put(container, dest, ctx.in_bytes,
                                         copy_uid_gid=archive)
        return 0
    if not os.path.lexists(src):
        raise UsageError(f"no such file or directory: {src}")
    contents = src.endswith("/.")
    src_is_dir = os.path.isdir(src)
    name = os.path.basename(os.path.abspath(src.removesuffix("/.")))
    stat: dict[str, Any] | None
    try:
        stat = ctx.client.container_archive_stat(container, dest)
    except NotFound as e:
        if str(e).startswith("No such container"):
            raise
        stat = None
    if stat is not None and int(stat.get("mode") or 0) & _MODE_DIR:
        target, arcname = dest, ("" if contents else name)
    else:
        if stat is not None and src_is_dir:
            raise UsageError("cannot copy a directory to a file")
        if dest.endswith("/"):
            raise UsageError(f"destination directory {dest!r} does not exist in the container")
        target, arcname = posixpath.dirname(dest) or "/", posixpath.basename(dest)
    with _tar_of(src, arcname, follow=follow, contents=contents) as tar:
        size = os.fstat(tar.fileno()).st_size
        ctx.client.container_archive_put(container, target, tar, copy_uid_gid=archive)
    if not quiet:
        ctx.error(f"Successfully copied {human_size(size)} to {container}:{dest}")
    return 0


def _cp(ctx: Context, args: argparse.Namespace) -> int:
    src_c, src = split_cp_arg(args.src)
    dest_c, dest = split_cp_arg(args.dest)
    if (src_c is None) == (dest_c is None):
        raise UsageError("copying between containers is not supported" if src_c else
                         "must specify at least one container source")
    if src_c is not None:
        return _copy_out(ctx, src_c, src, dest, args.quiet)
    assert dest_c is not None
    return _copy_in(ctx, src, dest_c, dest, archive=args.archive, follow=args.follow_link,
                    quiet=args.quiet)


def _setup_cp(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--archive", action="store_true", help="keep uid/gid information")
    p.add_argument("-L", "--follow-link", action="store_true",
                   help="always follow symbol link in SRC_PATH")
    p.add_argument("-q", "--quiet", action="store_true", help="suppress progress output")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dest", metavar="DEST")


COMMANDS = [
    Command("cp", "Copy files/folders between a container and the local filesystem",
            _setup_cp, _cp,
            usage="ketch cp [OPTIONS] CONTAINER:SRC_PATH DEST_PATH|-\n"
                  "       ketch cp [OPTIONS] SRC_PATH|- CONTAINER:DEST_PATH"),
]
