"""Extracting layers in parallel and stacking them in order (pull's unpack).

A layer's snapshot is committed on top of its parent's (the chain of
:mod:`ketch.image.unpack`), so applying layer *i* the plain way must wait for layer
*i-1*. On the overlay snapshotter a committed layer is only its own diff in overlay's
format, which can be made without the layers below:

1. **stage** (parallel, as each layer arrives, even while it downloads): apply the layer
   into a fresh snapshot *without a parent* (``pull-<token>-<n> stage``), with overlay
   whiteouts (0/0 devices, ``trusted.overlay.opaque``), straight into its directory;
2. **graft** (in order, once the parent chain is committed): prepare the real snapshot
   on its parent, check that the staged diff means the same on top of the lower layers
   (below), move the staged directory into the new snapshot's upper directory (a
   rename on one filesystem), commit it under its chain ID, drop the stage snapshot.

The staged diff means the same as an in-place apply unless the layer relied on what is
below it: a hard link to a lower file (staging fails), a path through a lower symlink, or
a directory the tar does not list whose lower twin has another mode or owner (a staged
directory is then a non-directory, or differs in mode/owner, in the lowers). Then the
layer is applied the plain way (``apply_in_place``) from the verified blob — always
correct, only slower. The native snapshotter (full copies) always applies in place.

The graft reads the upper and lower directories from the overlay mount options the
snapshotter hands out (``upperdir=``, ``lowerdir=``), and a parentless snapshot's
directory from its bind mount: containerd's overlay applier takes the same path.

Stage and graft snapshot keys carry a per-process token; :func:`sweep` removes those of
earlier processes (a daemon killed mid-pull), leaving committed layers, which are whole.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import stat
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol, cast

from ketch.errors import Conflict, InvalidArgument, KetchError, Unavailable
from ketch.image.layer import LayerResult, apply_layer
from ketch.image.unpack import committed
from ketch.oci import mediatypes as mt
from ketch.snapshot import Kind, Mount, Snapshotter, mount_all, unmount

__all__ = [
    "KEY_PREFIX",
    "ZSTD_TYPES",
    "Pipe",
    "Staged",
    "apply_in_place",
    "can_stage",
    "drop",
    "graft",
    "independent",
    "stage",
    "sweep",
]

log = logging.getLogger(__name__)

KEY_PREFIX = "pull-"
_TOKEN = uuid.uuid4().hex[:12]
ZSTD_TYPES = frozenset({mt.OCI_LAYER_ZSTD, mt.OCI_LAYER_NONDISTRIBUTABLE_ZSTD})


def _key(what: str) -> str:
    return f"{KEY_PREFIX}{_TOKEN}-{uuid.uuid4().hex[:8]} {what}"


def sweep(snapshotter: Snapshotter) -> list[str]:
    """Remove stage/graft snapshots left by other (dead) processes; return their keys."""
    gone: list[str] = []
    for info in snapshotter.walk():
        if info.key.startswith(KEY_PREFIX) and not info.key.startswith(KEY_PREFIX + _TOKEN) \
                and info.kind is not Kind.COMMITTED:
            with contextlib.suppress(KetchError, OSError):
                snapshotter.remove(info.key)
                gone.append(info.key)
    return gone


def can_stage(snapshotter: Snapshotter) -> bool:
    """Whether layers can be staged apart (overlay snapshots, root for whiteouts)."""
    from ketch.snapshot.overlay import OverlaySnapshotter

    return isinstance(snapshotter, OverlaySnapshotter) and os.geteuid() == 0


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def _decompressor(media_type: str, src: _Readable) -> _Readable:
    """The layer's tar stream: decompressed by its magic (gzip, zstd) in large steps,
    so ``apply_layer`` hashes only the tar; the blob's own digest is the ingest's."""
    from ketch.distribution.compression import decompressed

    return decompressed(src)


class Pipe:
    """Bytes handed from a downloading thread to a staging thread, in order.

    ``write`` blocks while ``capacity`` chunks wait (back-pressure) and drops data once
    either side has given up (``abandon``), so a failed stage never stalls a download
    and an abandoned reader fails instead of waiting. ``close(error)`` ends the stream;
    the reader then sees ``error`` raised, or EOF.
    """

    def __init__(self, capacity: int = 32) -> None:
        self._q: queue.Queue[bytes | BaseException | None] = queue.Queue(capacity)
        self._buf = memoryview(b"")
        self._pos = 0
        self._done = False
        self.abandoned = threading.Event()

    def write(self, data: bytes) -> None:
        while not self.abandoned.is_set():
            try:
                self._q.put(data, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self, error: BaseException | None = None) -> None:
        while not self.abandoned.is_set():
            try:
                self._q.put(error, timeout=0.2)
                return
            except queue.Full:
                continue

    def abandon(self) -> None:
        self.abandoned.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._q.get_nowait()

    def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        while self._pos >= len(self._buf) and not self._done:
            try:
                item = self._q.get(timeout=0.2)
            except queue.Empty:
                if self.abandoned.is_set():
                    raise Unavailable("layer stream abandoned by its download") from None
                continue
            if item is None:
                self._done = True
            elif isinstance(item, BaseException):
                self._done = True
                raise item
            else:
                self._buf, self._pos = memoryview(item), 0
        if self._pos >= len(self._buf):
            return b""
        # sliced through a memoryview: reading a chunk in small pieces stays linear
        end = len(self._buf) if n < 0 else min(self._pos + n, len(self._buf))
        whole = self._buf.obj if self._pos == 0 and end == len(self._buf) else None
        out = whole if isinstance(whole, bytes) else bytes(self._buf[self._pos:end])
        self._pos = end
        return out


@dataclass
class Staged:
    """A layer applied into a parentless snapshot (see the module doc)."""

    key: str
    path: str
    result: LayerResult


def _only_source(mounts: list[Mount]) -> str:
    if len(mounts) != 1 or mounts[0].type != "bind":
        raise InvalidArgument("stage: the snapshotter did not give a plain directory")
    return mounts[0].source


def stage(snapshotter: Snapshotter, media_type: str, src: _Readable, diff_id: str) -> Staged:
    """Apply the layer read from ``src`` into a new parentless snapshot (module doc).

    On failure the snapshot is removed and the error raised.
    """
    key = _key(f"stage {diff_id}")
    mounts = snapshotter.prepare(key, None, labels={"ketch.io/pull.stage": diff_id})
    try:
        path = _only_source(mounts)
        res = apply_layer(cast(BinaryIO, _decompressor(media_type, src)), path,
                          whiteouts="overlay")
        return Staged(key, path, res)
    except BaseException:
        with contextlib.suppress(KetchError, OSError):
            snapshotter.remove(key)
        raise


def _overlay_dirs(mounts: list[Mount]) -> tuple[str, list[str]]:
    """(upperdir, lowerdirs top first) of an active overlay snapshot's one mount."""
    if len(mounts) != 1 or mounts[0].type != "overlay":
        raise InvalidArgument("graft: the snapshotter did not give one overlay mount")
    upper, lowers = "", []
    for opt in mounts[0].options:
        name, _, value = opt.partition("=")
        if name == "upperdir":
            upper = value
        elif name == "lowerdir":
            lowers = value.split(":")
    if not upper or not lowers:
        raise InvalidArgument("graft: overlay mount without upperdir or lowerdir")
    return upper, lowers


def _lower_entry(lowers: list[str], rel: str) -> os.stat_result | None:
    """What the lower layers show at ``rel`` (the topmost entry; None if absent)."""
    for d in lowers:
        try:
            st = os.lstat(os.path.join(d, rel))
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return None  # an overlay whiteout
        return st
    return None


def independent(staged: str, lowers: list[str]) -> bool:
    """True if the staged diff means on ``lowers`` what an in-place apply would make."""
    for top, dirs, _files in os.walk(staged):
        rel_top = os.path.relpath(top, staged)
        keep = []
        for name in dirs:
            rel = name if rel_top == "." else os.path.join(rel_top, name)
            mine = os.lstat(os.path.join(top, name))
            low = _lower_entry(lowers, rel)
            if low is None:
                continue  # new here: nothing below can disagree
            if not stat.S_ISDIR(low.st_mode):
                return False  # a lower symlink or file the layer's paths went through
            if (stat.S_IMODE(low.st_mode), low.st_uid, low.st_gid) != \
                    (stat.S_IMODE(mine.st_mode), mine.st_uid, mine.st_gid):
                return False
            keep.append(name)
        dirs[:] = keep
    return True


def graft(snapshotter: Snapshotter, staged: Staged, chain: str, parent: str | None,
          diff_id: str) -> bool:
    """Make ``staged`` the committed snapshot ``chain`` on ``parent``.

    False (nothing changed, ``staged`` kept) if the diff is not independent of the
    lower layers; the caller then applies in place.
    """
    labels = {"ketch.io/diff_id": diff_id}
    if parent is None:
        _commit(snapshotter, chain, staged.key, labels)
        return True
    key = _key(f"extract {chain}")
    mounts = snapshotter.prepare(key, parent)
    try:
        upper, lowers = _overlay_dirs(mounts)
        if not independent(staged.path, lowers):
            log.info("layer %s depends on the layers below it; applying it in place", diff_id)
            snapshotter.remove(key)
            return False
        os.rmdir(upper)
        os.rename(staged.path, upper)
        os.mkdir(staged.path, 0o755)
    except BaseException:
        with contextlib.suppress(KetchError, OSError):
            snapshotter.remove(key)
        raise
    _commit(snapshotter, chain, key, labels)
    with contextlib.suppress(KetchError, OSError):
        snapshotter.remove(staged.key)
    return True


def _commit(snapshotter: Snapshotter, chain: str, key: str, labels: dict[str, str]) -> None:
    try:
        snapshotter.commit(chain, key, labels=labels)
    except Conflict:
        if not committed(snapshotter, chain):
            raise
        log.debug("snapshot %s was committed meanwhile; dropping ours", chain)
        with contextlib.suppress(KetchError, OSError):
            snapshotter.remove(key)


def drop(snapshotter: Snapshotter, staged: Staged | None) -> None:
    if staged is not None:
        with contextlib.suppress(KetchError, OSError):
            snapshotter.remove(staged.key)


def apply_in_place(snapshotter: Snapshotter, media_type: str,
                   open_blob: Callable[[], BinaryIO], chain: str, parent: str | None,
                   diff_id: str) -> LayerResult:
    """Apply the layer on a snapshot prepared on ``parent`` (through its mounts) and
    commit it as ``chain``; the diff_id is checked. Nothing is left on failure."""
    key = _key(f"extract {chain}")
    mounts = snapshotter.prepare(key, parent)
    target = tempfile.mkdtemp(prefix="ketch-pull-")
    ok = False
    try:
        mount_all(mounts, target)
        try:
            with open_blob() as f:
                res = apply_layer(cast(BinaryIO, _decompressor(media_type, f)), target)
        finally:
            unmount(target)
        if res.diff_id != diff_id:
            raise InvalidArgument(f"layer diff_id mismatch: the config says {diff_id}, the "
                                  f"layer unpacks to {res.diff_id}")
        _commit(snapshotter, chain, key, {"ketch.io/diff_id": diff_id})
        ok = True
        return res
    finally:
        if not ok:
            with contextlib.suppress(KetchError, OSError):
                snapshotter.remove(key)
        with contextlib.suppress(OSError):
            os.rmdir(target)
