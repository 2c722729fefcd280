"""Snapshotters: the filesystems that container root filesystems are made of.

Terms
-----
snapshot
    A directory tree that a snapshotter owns, named by a caller-chosen *key*.
    Every snapshot is in exactly one of three kinds:

    ``active``     writable; made by :meth:`Snapshotter.prepare`. Mount it, write to it
                   (unpack a layer, run a container), then commit it or remove it.
    ``view``       read-only; made by :meth:`Snapshotter.view`. Shows its parent as it is.
    ``committed``  immutable; made by :meth:`Snapshotter.commit` from an active snapshot.
                   Only committed snapshots can be parents.
parent
    The committed snapshot a new snapshot starts from. A snapshot sees its parent's
    tree, its parent's parent's, and so on (the *chain*); its own changes never
    show in the parent. ``None`` means "start empty".
mounts
    What a snapshot is made available as: a list of :class:`Mount` that, performed
    in order at one target directory, show the snapshot's tree there. Mounts do not
    name the target, so the same list serves a container's rootfs or a temp dir.

Lifecycle
---------
Unpacking an image of layers L1..Ln::

    mounts = s.prepare("extract-1")          # active, empty
    mount_all(mounts, tmp); apply L1; unmount(tmp)
    s.commit("sha256:<chain id 1>", "extract-1")   # "extract-1" is gone now
    mounts = s.prepare("extract-2", parent="sha256:<chain id 1>")
    ...

Running a container on the image: ``prepare("<container id>", parent=<top layer>)``
and hand the mounts to the runtime as the rootfs; when the container is deleted,
``remove("<container id>")``. ``docker commit`` is ``commit`` of that active
snapshot. ``view`` gives a read-only look at a committed snapshot (e.g. to diff
or to copy files out) without the cost of a writable layer.

Removal goes from the leaves up: a snapshot with children (active, views or
committed) cannot be removed (:class:`~ketch.errors.Conflict`).

Errors: unknown keys raise :class:`~ketch.errors.NotFound`; a key (or commit
name) that exists raises :class:`~ketch.errors.Conflict`; a parent that is not
committed, or committing something that is not active, raises
:class:`~ketch.errors.FailedPrecondition`.

Implementations keep their metadata in one file under their root
(:mod:`ketch.snapshot.metadata`), so several processes may share a root and a
new instance on the same root sees everything an earlier one made.
Implementations: :mod:`ketch.snapshot.overlay` (overlayfs), :mod:`ketch.snapshot.native`
(a full copy per snapshot, for hosts without overlayfs).
"""

from __future__ import annotations

import datetime
import enum
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ketch.errors import InvalidArgument
from ketch.sys.mount import MS
from ketch.sys.mount import mount as sys_mount
from ketch.sys.mount import umount as sys_umount

__all__ = [
    "Info",
    "Kind",
    "Mount",
    "Snapshotter",
    "Usage",
    "mount_all",
    "unmount",
]


class Kind(enum.StrEnum):
    """The kind of a snapshot (see the module docstring)."""

    ACTIVE = "active"
    VIEW = "view"
    COMMITTED = "committed"


@dataclass(frozen=True)
class Info:
    """What a snapshotter knows about one snapshot."""

    key: str
    parent: str | None
    kind: Kind
    labels: Mapping[str, str] = field(default_factory=dict)
    created: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC))


@dataclass(frozen=True)
class Usage:
    """Disk use of a snapshot's own layer (not its parents'): bytes allocated and inodes."""

    size: int = 0
    inodes: int = 0


# option words that are mount(2) flags rather than filesystem data
_FLAGS: dict[str, tuple[int, bool]] = {
    "ro": (MS.RDONLY, True), "rw": (MS.RDONLY, False),
    "nosuid": (MS.NOSUID, True), "suid": (MS.NOSUID, False),
    "nodev": (MS.NODEV, True), "dev": (MS.NODEV, False),
    "noexec": (MS.NOEXEC, True), "exec": (MS.NOEXEC, False),
    "noatime": (MS.NOATIME, True), "relatime": (MS.RELATIME, True),
    "bind": (MS.BIND, True), "rbind": (MS.BIND | MS.REC, True),
}
# overlay options whose values are paths (lowerdir is a ':'-separated list of them)
_PATH_OPTIONS = ("lowerdir", "upperdir", "workdir")


@dataclass(frozen=True)
class Mount:
    """One mount(2) to perform at a target chosen later.

    ``type`` is the filesystem type, or ``"bind"`` for a bind mount of ``source``;
    ``options`` are fstab-style words: flags (``ro``, ``rbind``, ``nodev``…) and
    filesystem data (``lowerdir=…``). Paths in options are absolute.
    """

    type: str
    source: str
    options: tuple[str, ...] = ()

    def flags_and_data(self) -> tuple[int, str]:
        """Split ``options`` into mount(2) flags and the comma-joined data string."""
        flags = 0
        data: list[str] = []
        for opt in self.options:
            if opt in _FLAGS:
                bit, on = _FLAGS[opt]
                flags = flags | bit if on else flags & ~bit
            else:
                data.append(opt)
        if self.type == "bind":
            flags |= MS.BIND
        return flags, ",".join(data)

    def mount(self, target: str) -> None:
        """Perform this mount at ``target`` (an existing directory).

        Read-only bind mounts need a second, remounting call (the kernel ignores
        ``MS_RDONLY`` on the first); both are done here. Filesystem data longer
        than the kernel accepts (one page: a deep overlay ``lowerdir``) is
        rewritten with paths relative to their common directory and mounted from
        a short-lived child whose working directory is that directory — a chdir
        here would move every thread of the caller.
        """
        flags, data = self.flags_and_data()
        if self.type == "bind":
            sys_mount(self.source, target, None, flags & (MS.BIND | MS.REC))
            extra = flags & ~(MS.BIND | MS.REC)
            if extra:
                sys_mount(None, target, None, MS.BIND | MS.REMOUNT | extra)
            return
        if len(data.encode()) < os.sysconf("SC_PAGE_SIZE"):
            sys_mount(self.source, target, self.type, flags, data or None)
            return
        cwd, rel = _relative_data(self.options)
        _mount_in_child(cwd, self.source, os.path.abspath(target), self.type, flags,
                        ",".join(o for o in rel if o not in _FLAGS))


def _relative_data(options: Sequence[str]) -> tuple[str, list[str]]:
    """(common directory, options with their paths made relative to it)."""
    paths: list[str] = []
    for opt in options:
        name, _, value = opt.partition("=")
        if name in _PATH_OPTIONS:
            paths.extend(value.split(":"))
    if not paths:
        raise InvalidArgument(f"mount options too long and hold no paths: {options[0]}…")
    common = os.path.commonpath(paths)
    out = []
    for opt in options:
        name, _, value = opt.partition("=")
        if name in _PATH_OPTIONS:
            value = ":".join(os.path.relpath(p, common) for p in value.split(":"))
            opt = f"{name}={value}"
        out.append(opt)
    return common, out


_CHILD = """\
import sys
from ketch.sys.mount import mount
source, target, fstype, flags, data = sys.argv[1:]
mount(source, target, fstype, int(flags), data)
"""


def _mount_in_child(cwd: str, source: str, target: str, fstype: str, flags: int,
                    data: str) -> None:
    if len(data.encode()) >= os.sysconf("SC_PAGE_SIZE"):
        raise InvalidArgument(f"mount data is {len(data)} bytes even with relative paths; "
                              f"the kernel takes one page")
    p = subprocess.run([sys.executable, "-c", _CHILD, source, target, fstype, str(flags), data],
                       cwd=cwd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
        raise OSError(f"mount({source!r}, {target!r}, {fstype!r}) in {cwd}: {last}")


def mount_all(mounts: Iterable[Mount], target: str) -> None:
    """Perform ``mounts`` in order at ``target``; on failure undo the ones done."""
    done = 0
    try:
        for m in mounts:
            m.mount(target)
            done += 1
    except BaseException:
        for _ in range(done):
            unmount(target)
        raise


def unmount(target: str, *, detach: bool = False) -> None:
    """Unmount the top mount at ``target`` (lazily with ``detach``)."""
    sys_umount(target, 2 if detach else 0)


@runtime_checkable
class Snapshotter(Protocol):
    """Makes, mounts, commits and removes snapshots under one root (see module docstring).

    All methods are safe to call from several threads and processes on one root.
    """

    def prepare(self, key: str, parent: str | None = None,
                labels: Mapping[str, str] | None = None) -> list[Mount]:
        """Make active snapshot ``key`` on top of committed ``parent``; return its mounts."""
        ...

    def view(self, key: str, parent: str | None = None,
             labels: Mapping[str, str] | None = None) -> list[Mount]:
        """Make read-only snapshot ``key`` showing committed ``parent``; return its mounts."""
        ...

    def mounts(self, key: str) -> list[Mount]:
        """The mounts of active or view snapshot ``key`` (the same list prepare/view gave)."""
        ...

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Turn active ``key`` into committed ``name``; ``key`` no longer exists after.

        Unmount ``key`` first: writes made after commit are undefined.
        """
        ...

    def remove(self, key: str) -> None:
        """Delete snapshot ``key`` and its data; Conflict if it has children."""
        ...

    def stat(self, key: str) -> Info:
        """What is known about ``key``."""
        ...

    def walk(self) -> list[Info]:
        """Every snapshot, parents before their children."""
        ...

    def usage(self, key: str) -> Usage:
        """Disk use of ``key``'s own layer (measured now for active, at commit otherwise)."""
        ...
