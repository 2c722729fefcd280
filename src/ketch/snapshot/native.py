"""The native snapshotter: each snapshot is a full copy of its parent.

For hosts without a usable overlayfs (an overlay root, an old or restricted
kernel). Costs a full copy per snapshot in time and space; needs nothing but
a filesystem.

Layout::

    <root>/
      metadata.json, metadata.lock     see ketch.snapshot.metadata
      snapshots/<id>/fs/               the snapshot's complete tree

Mounts are a recursive bind of the snapshot's own ``fs`` (``ro`` for views).
A view is a copy too, so it stays whole even if its parent is later removed
(which the rules forbid while the view exists anyway).

The copy keeps what a container image can carry: owners, modes (setuid
included: chown comes before chmod), timestamps, extended attributes (after
chown, which clears ``security.capability``), symlinks as links, hard links
between files inside the tree, device nodes, fifos and sockets. Sparse files
come out dense.
"""

from __future__ import annotations

import os
import shutil
import stat

from ketch.snapshot import Kind, Mount
from ketch.snapshot.metadata import Record, StoreSnapshotter, Tx

__all__ = ["NativeSnapshotter", "copy_tree"]


class NativeSnapshotter(StoreSnapshotter):
    """Snapshots as full copies under ``root`` (see the module docstring)."""

    def _create(self, tx: Tx, key: str, rec: Record) -> None:
        os.mkdir(self._dir(rec), 0o700)
        if rec.parent is None:
            os.mkdir(self._fs(rec), 0o755)
        else:
            copy_tree(self._fs(tx.get(rec.parent)), self._fs(rec))

    def _mounts(self, tx: Tx, key: str, rec: Record) -> list[Mount]:
        mode = "rw" if rec.kind is Kind.ACTIVE else "ro"
        return [Mount("bind", self._fs(rec), ("rbind", mode))]


def _copy_metadata(src: str, dst: str, st: os.stat_result) -> None:
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):  # Linux has no lchmod; a link's mode means nothing
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    for name in os.listxattr(src, follow_symlinks=False):
        os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False),
                    follow_symlinks=False)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def copy_tree(src: str, dst: str) -> None:
    """Copy directory ``src`` to new path ``dst`` keeping everything listed in the module doc.

    Does not cross mount points below ``src``.
    """
    top = os.lstat(src)
    links: dict[tuple[int, int], str] = {}  # (dev, ino) of a multiply linked inode -> copy
    dirs: list[tuple[str, str, os.stat_result]] = []
    stack = [(src, dst, top)]
    while stack:
        s, d, st = stack.pop()
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(d, 0o700)
            dirs.append((s, d, st))  # metadata after the children (they change mtime)
            with os.scandir(s) as it:
                for e in it:
                    est = e.stat(follow_symlinks=False)
                    if est.st_dev == top.st_dev:
                        stack.append((e.path, os.path.join(d, e.name), est))
            continue
        ino = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and ino in links:
            os.link(links[ino], d, follow_symlinks=False)
            continue
        if stat.S_ISREG(mode):
            shutil.copyfile(s, d, follow_symlinks=False)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(s), d)
        else:  # character and block devices, fifos, sockets
            os.mknod(d, stat.S_IFMT(mode) | 0o600, st.st_rdev)
        _copy_metadata(s, d, st)
        if st.st_nlink > 1:
            links[ino] = d
    for s, d, st in reversed(dirs):
        _copy_metadata(s, d, st)
