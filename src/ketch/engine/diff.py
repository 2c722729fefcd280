"""What a container changed in its filesystem: ``docker diff`` and ``docker commit``'s layer.

A container's root is an active snapshot (:mod:`ketch.snapshot`); what it changed
is the snapshot's own layer against its parent chain:

overlay   the snapshot's ``fs/`` is overlayfs's upper directory: what is there was
          added or copied up; a deletion is a whiteout (a 0/0 character device); a
          directory made where a lower one was deleted is *opaque*
          (``trusted.overlay.opaque=y``) and hides what the lower layers hold below
          it. The lower layers are the parents' ``fs/``, merged as overlayfs merges
          them (their own whiteouts and opaque directories included).
native    the snapshot's ``fs/`` is a whole tree, compared with its parent's.

:func:`changes` lists, as ``{"Path", "Kind"}`` with Docker's kinds:

    1 added      the path did not exist below
    0 modified   it existed: a non-directory that overlay copied up, or (native) whose
                 type, mode, owner, size, mtime, link target or device differ; a
                 directory whose type, mode, owner or mtime differ, or with any change
                 inside it (the root itself is never listed)
    2 deleted    it existed below and is gone (what it held is not listed again)

so both snapshotters report what a comparison of the two trees sees; the one
difference is a file overlay copied up without changing it (listed as modified).
Order: path component by component, a directory right before its contents
(``/a``, ``/a/b``, ``/a-b``), the order of a sorted walk of the tree.

:func:`diff_tar` writes the same changes as an uncompressed OCI layer (image-spec
``layer.md``): added and modified paths in full, a deletion as ``dir/.wh.name`` and
an opaque directory as its entry followed by ``dir/.wh..wh..opq`` (which covers the
deletions below it). Entries follow the order above, owners are numeric, whiteouts
have mtime 0: the same container state always gives the same bytes.

Safety: the upper directory of a running container is the container's to change,
so it is walked with descriptors only (``openat`` with ``O_NOFOLLOW``), never by
path; committed lower layers are immutable and read by path. Not supported (raise
NotImplementedYet): overlay ``metacopy`` and ``redirect_dir`` layers, which the
overlay snapshotter does not enable.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from ketch.engine.archive import TarWriter
from ketch.errors import FailedPrecondition, NotImplementedYet
from ketch.image.layer import OPAQUE_WHITEOUT, WHITEOUT_PREFIX
from ketch.snapshot import Snapshotter
from ketch.snapshot.metadata import StoreSnapshotter
from ketch.snapshot.native import NativeSnapshotter
from ketch.snapshot.overlay import OverlaySnapshotter

__all__ = ["ADDED", "DELETED", "MODIFIED", "changes", "diff_tar"]

MODIFIED, ADDED, DELETED = 0, 1, 2

_OPAQUE = "trusted.overlay.opaque"
_UNSUPPORTED = ("trusted.overlay.redirect", "trusted.overlay.metacopy")
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class _Change:
    parts: tuple[str, ...]
    kind: int
    implied: bool = False  # deleted by an opaque directory above: no whiteout of its own
    opaque: bool = False  # a directory hiding lower content: write .wh..wh..opq in it

    @property
    def path(self) -> str:
        return "/" + "/".join(self.parts)


@dataclass(frozen=True)
class _Lower:
    """What the lower layers show at one path."""

    st: os.stat_result | None = None  # None: nothing
    path: str = ""  # host path of the object shown
    dirs: tuple[str, ...] = ()  # the layer directories merged there, top first


_NOTHING = _Lower()


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _xattr(target: int | str, name: str, *, follow: bool = False) -> bytes | None:
    """The value of xattr ``name`` (a path is not followed unless ``follow``), or None."""
    try:
        if isinstance(target, int) or follow:
            return os.getxattr(target, name)
        return os.getxattr(target, name, follow_symlinks=False)
    except OSError:
        return None


def _lower_child(lower: _Lower, name: str, overlay: bool) -> _Lower:
    """What the lower layers show at ``name`` inside ``lower`` (a directory)."""
    found: os.stat_result | None = None
    where = ""
    dirs: list[str] = []
    for layer in lower.dirs:
        p = os.path.join(layer, name)
        try:
            st = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if overlay and _is_whiteout(st):
            break
        if stat.S_ISDIR(st.st_mode):
            if found is None:
                found, where = st, p
            dirs.append(p)
            if overlay and _xattr(p, _OPAQUE) == b"y":
                break
            continue
        if found is None:  # a non-directory shows only when nothing above hides it
            found, where = st, p
        break
    return _Lower(found, where, tuple(dirs)) if found is not None else _NOTHING


def _lower_root(layers: list[str], overlay: bool) -> _Lower:
    dirs: list[str] = []
    for layer in layers:
        dirs.append(layer)
        if overlay and _xattr(layer, _OPAQUE) == b"y":
            break
    return _Lower(os.lstat(layers[0]), layers[0], tuple(dirs)) if layers else _NOTHING


def _lower_names(lower: _Lower, overlay: bool) -> set[str]:
    names: set[str] = set()
    for d in lower.dirs:
        names.update(os.listdir(d))
    return {n for n in names if _lower_child(lower, n, overlay).st is not None}


def _differs(own: os.stat_result, low: os.stat_result, is_dir: bool) -> bool:
    if (own.st_mode, own.st_uid, own.st_gid, own.st_mtime_ns) != \
            (low.st_mode, low.st_uid, low.st_gid, low.st_mtime_ns):
        return True
    return not is_dir and (own.st_size, own.st_rdev) != (low.st_size, low.st_rdev)


@dataclass
class _Frame:
    """A directory of the snapshot's own layer being walked."""

    fd: int
    parts: tuple[str, ...]
    lower: _Lower
    hides: bool  # the lower content here is not visible (native: always)
    names: Iterator[str]
    own: set[str]
    change: _Change | None = None  # this directory's own entry, if it is reported
    slot: int = -1  # its place in the output
    force: bool = False  # report it even with nothing changed inside
    emitted: int = 0


class _Differ:
    """One walk of a snapshot's own layer against the layers below it."""

    def __init__(self, overlay: bool, own: str, lowers: list[str]) -> None:
        self.overlay = overlay
        self.own = own
        self.lowers = lowers
        self.out: list[_Change | None] = []

    def _frame(self, fd: int, parts: tuple[str, ...], lower: _Lower, hides: bool) -> _Frame:
        own = set(os.listdir(fd))
        names = own | (_lower_names(lower, self.overlay) if hides and lower.dirs else set())
        return _Frame(fd, parts, lower, hides, iter(sorted(names)), own)

    def run(self) -> list[_Change]:
        fd = os.open(self.own, _O_DIR)
        frames = [self._frame(fd, (), _lower_root(self.lowers, self.overlay), not self.overlay)]
        try:
            while frames:
                fr = frames[-1]
                name = next(fr.names, None)
                if name is None:
                    frames.pop()
                    os.close(fr.fd)
                    if fr.change is not None and (fr.force or fr.emitted):
                        self.out[fr.slot] = fr.change
                        frames[-1].emitted += 1
                    continue
                child = self._entry(fr, name)
                if child is not None:
                    frames.append(child)
        finally:
            for fr in frames:
                os.close(fr.fd)
        return [c for c in self.out if c is not None]

    def _emit(self, fr: _Frame, change: _Change) -> None:
        self.out.append(change)
        fr.emitted += 1

    def _entry(self, fr: _Frame, name: str) -> _Frame | None:
        parts = (*fr.parts, name)
        low = _lower_child(fr.lower, name, self.overlay) if fr.lower.dirs else _NOTHING
        try:
            own = os.stat(name, dir_fd=fr.fd, follow_symlinks=False) if name in fr.own else None
        except FileNotFoundError:
            own = None
        if own is None or (self.overlay and _is_whiteout(own)):
            if low.st is not None and (own is not None or fr.hides):
                self._emit(fr, _Change(parts, DELETED, implied=self.overlay and fr.hides))
            return None
        if not stat.S_ISDIR(own.st_mode):
            if low.st is None:
                self._emit(fr, _Change(parts, ADDED))
            elif self.overlay or self._file_differs(fr, name, own, low):
                self._emit(fr, _Change(parts, MODIFIED))
            return None
        try:
            fd = os.open(name, _O_DIR, dir_fd=fr.fd)
        except OSError:
            return None  # replaced meanwhile: seen as it was a moment ago, or not at all
        try:
            own = os.fstat(fd)
            opaque = False
            if self.overlay:
                opaque = _xattr(fd, _OPAQUE) == b"y"
                if _xattr(fd, _UNSUPPORTED[0]) is not None:
                    raise NotImplementedYet("diff: overlay redirect_dir layers are not supported")
            lower_dir = low.st is not None and stat.S_ISDIR(low.st.st_mode)
            if low.st is None:
                kind, force = ADDED, True
            elif not lower_dir:
                kind, force = MODIFIED, True
            else:
                kind, force = MODIFIED, _differs(own, low.st, True)
            child = self._frame(fd, parts, low if lower_dir else _NOTHING,
                                not self.overlay or fr.hides or opaque)
        except BaseException:
            os.close(fd)
            raise
        child.change = _Change(parts, kind, opaque=opaque and lower_dir and not fr.hides)
        child.force = force
        child.slot = len(self.out)
        self.out.append(None)
        return child

    def _file_differs(self, fr: _Frame, name: str, own: os.stat_result, low: _Lower) -> bool:
        assert low.st is not None
        if _differs(own, low.st, False):
            return True
        if stat.S_ISLNK(own.st_mode):
            return os.readlink(name, dir_fd=fr.fd) != os.readlink(low.path)
        return False


def _layers(snapshotter: Snapshotter, key: str) -> tuple[bool, str, list[str]]:
    """(overlay?, the snapshot's own directory, the directories below it, top first)."""
    if not isinstance(snapshotter, OverlaySnapshotter | NativeSnapshotter):
        raise NotImplementedYet(f"diff: snapshotter {type(snapshotter).__name__} is not "
                                f"supported")
    store: StoreSnapshotter = snapshotter
    with store.store.transaction(write=False) as tx:
        chain = tx.chain(key)
    dirs = [os.path.join(store.snapshots_dir, rec.id, "fs") for rec in chain]
    if isinstance(snapshotter, OverlaySnapshotter):
        return True, dirs[0], dirs[1:]
    return False, dirs[0], dirs[1:2]  # a native parent is already the whole tree


def _changes(snapshotter: Snapshotter, key: str) -> tuple[bool, str, list[_Change]]:
    overlay, own, lowers = _layers(snapshotter, key)
    return overlay, own, _Differ(overlay, own, lowers).run()


def changes(snapshotter: Snapshotter, key: str) -> list[dict[str, Any]]:
    """``docker diff`` of snapshot ``key``: ``[{"Path": "/etc", "Kind": 0}, ...]``.

    Kinds and order as in the module docstring. NotFound for an unknown key,
    NotImplementedYet for snapshotters other than overlay and native.
    """
    _, _, found = _changes(snapshotter, key)
    return [{"Path": c.path, "Kind": c.kind} for c in found]


class _OwnDirs:
    """Descriptors of the directories on the way to the current entry, opened O_NOFOLLOW."""

    def __init__(self, root: str) -> None:
        self.chain: list[tuple[tuple[str, ...], int]] = [((), os.open(root, _O_DIR))]

    def parent(self, parts: tuple[str, ...]) -> int:
        want = parts[:-1]
        while want[:len(self.chain[-1][0])] != self.chain[-1][0]:
            os.close(self.chain.pop()[1])
        while len(self.chain[-1][0]) < len(want):
            have, fd = self.chain[-1]
            name = want[len(have)]
            try:
                sub = os.open(name, _O_DIR | os.O_PATH, dir_fd=fd)
            except OSError as e:
                raise FailedPrecondition(f"diff: /{'/'.join(want)} changed while the layer "
                                         f"was written; pause the container") from e
            self.chain.append(((*have, name), sub))
        return self.chain[-1][1]

    def close(self) -> None:
        for _, fd in self.chain:
            os.close(fd)


def diff_tar(snapshotter: Snapshotter, key: str, out: IO[bytes]) -> None:
    """Write snapshot ``key``'s changes to ``out`` as an uncompressed OCI layer tar.

    Applying it with :func:`ketch.image.layer.apply_layer` on the parent's tree
    gives ``key``'s tree. Errors as :func:`changes`; FailedPrecondition if the
    container changes a path while it is written (commit pauses it first).
    """
    overlay, own, found = _changes(snapshotter, key)
    dirs = _OwnDirs(own)
    w = TarWriter(out)
    try:
        for c in found:
            arc = "/".join(c.parts)
            if c.kind == DELETED:
                if not c.implied:
                    head, _, base = arc.rpartition("/")
                    w.whiteout((head + "/" if head else "") + WHITEOUT_PREFIX + base)
                continue
            pfd = dirs.parent(c.parts)
            try:
                fd = os.open(c.parts[-1], os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            except FileNotFoundError as e:
                raise FailedPrecondition(f"diff: {c.path} vanished while the layer was written; "
                                         f"pause the container") from e
            try:
                st = os.fstat(fd)
                if overlay and stat.S_ISREG(st.st_mode) and \
                        _xattr(f"/proc/self/fd/{fd}", _UNSUPPORTED[1], follow=True) is not None:
                    raise NotImplementedYet("diff: overlay metacopy layers are not supported")
                w.add(arc, fd, st)
            finally:
                os.close(fd)
            if c.opaque:
                w.whiteout(arc + "/" + OPAQUE_WHITEOUT)
        w.close()
    finally:
        dirs.close()
