"""The overlayfs snapshotter: each snapshot stores only its own changes.

Layout::

    <root>/
      metadata.json, metadata.lock     see ketch.snapshot.metadata
      snapshots/<id>/
        fs/        the snapshot's own layer: the upper directory while active, a
                   lower directory once committed
        work/      overlayfs's scratch directory (workdir=) for an active snapshot

Mounts, by kind and depth of the parent chain (p1 = parent, p2 = its parent, …):

    active, no parent       bind  <id>/fs  rbind,rw      (no overlay needed)
    active, parents         overlay lowerdir=p1/fs:p2/fs:…,upperdir=<id>/fs,workdir=<id>/work
    view, no parent         bind  <id>/fs  rbind,ro      (an empty tree)
    view, one parent        bind  p1/fs    rbind,ro
    view, parents           overlay ro,lowerdir=p1/fs:p2/fs:…   (no upper: read-only)

Deleting a parent's file in an active snapshot makes an overlay whiteout (a 0:0
character device) in its fs/; committed layers therefore hold overlay's own
format, which a differ must read as deletions.

The option length limit: the kernel copies mount data into one page (4096 bytes
on x86_64 and most arm64), so ``lowerdir`` cannot list more than about
4096 / len("<root>/snapshots/<id>/fs:") layers — some 60-90 with typical roots.
Ids are short decimal counters (not random hex) to keep each path short, and
when the data still does not fit, :meth:`ketch.snapshot.Mount.mount` mounts from
a child process whose working directory is ``<root>/snapshots``, with paths
like ``12/fs`` (8 bytes a layer: several hundred layers, past overlayfs's own
limit of 500 lower layers). The mounts returned here stay absolute, so they
mean the same thing wherever they are used.

Needs a kernel with overlayfs whose root filesystem can hold an upper directory
(ext4, xfs with d_type, btrfs, tmpfs — not overlayfs itself).
"""

from __future__ import annotations

import os

from ketch.snapshot import Kind, Mount
from ketch.snapshot.metadata import Record, StoreSnapshotter, Tx

__all__ = ["OverlaySnapshotter"]


def _index_off() -> tuple[str, ...]:
    # a kernel built (or booted) with overlay index=on refuses a lower layer that
    # another mount uses with a different upper; layers here are shared by design
    param = "/sys/module/overlay/parameters/index"
    return ("index=off",) if os.path.exists(param) else ()


class OverlaySnapshotter(StoreSnapshotter):
    """Snapshots as overlayfs layers under ``root`` (see the module docstring)."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self._extra = _index_off()

    def _create(self, tx: Tx, key: str, rec: Record) -> None:
        path = self._dir(rec)
        os.mkdir(path, 0o700)
        os.mkdir(os.path.join(path, "fs"), 0o755)
        if rec.kind is Kind.ACTIVE:
            os.mkdir(os.path.join(path, "work"), 0o700)

    def _mounts(self, tx: Tx, key: str, rec: Record) -> list[Mount]:
        lowers = [self._fs(p) for p in tx.chain(key)[1:]]
        fs = self._fs(rec)
        if rec.kind is Kind.ACTIVE:
            if not lowers:
                return [Mount("bind", fs, ("rbind", "rw"))]
            return [Mount("overlay", "overlay", (
                *self._extra, "lowerdir=" + ":".join(lowers), f"upperdir={fs}",
                "workdir=" + os.path.join(self._dir(rec), "work")))]
        if not lowers:
            return [Mount("bind", fs, ("rbind", "ro"))]
        if len(lowers) == 1:
            return [Mount("bind", lowers[0], ("rbind", "ro"))]
        return [Mount("overlay", "overlay", ("ro", *self._extra, "lowerdir=" + ":".join(lowers)))]
