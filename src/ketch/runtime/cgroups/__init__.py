"""Container cgroups for the runtime: one manager per container, v1 or v2 as the host has.

Lifecycle of a :class:`CgroupManager`::

    new_manager(cgroupsPath, id)     no side effect; any process can make one for
                                     the same container (the cgroup path is the state)
    create()                         the cgroup exists in every hierarchy
    set(resources)                   OCI linux.resources written (again on update)
    apply(pid)                       a process joins; the container's init calls
                                     apply(0) for itself before it execs
    freeze / thaw / frozen / pids / kill_all / stats / oom_kills   while it runs
    destroy()                        every directory is gone; safe to repeat

Which manager: the host's mode is read from /proc/self/mountinfo once per
process (:func:`ketch.sys.cgroupfs.detect_host`). *unified* hosts get
:class:`~ketch.runtime.cgroups.v2.V2Manager`; *legacy* and *hybrid* hosts get
:class:`~ketch.runtime.cgroups.v1.V1Manager`, which on a hybrid host also keeps
a cgroup in the unified hierarchy for what only cgroup2 offers there.

``cgroupsPath`` (from ``linux.cgroupsPath``):

* absent or empty: ``/ketch/<id>``;
* absolute (``/a/b``): that path under the root of each hierarchy's mount;
* relative (``a/b``): the same as ``/a/b``. runc would put it under the
  runtime's own cgroup; ketch does not, so that the path does not depend on
  where the caller happens to run (a shell, a systemd unit, a daemon).
* ``..`` components and systemd's ``slice:prefix:name`` form are rejected with
  ``InvalidArgument`` (there is no systemd cgroup driver).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ketch.errors import InvalidArgument, Unavailable

if TYPE_CHECKING:
    from ketch.sys.cgroupfs import Host

__all__ = ["CgroupManager", "new_manager", "resolve_path"]


class CgroupManager(Protocol):
    """One container's cgroup, in every hierarchy the host has.

    All methods act on the kernel's state only, so a manager made in a later
    process (``ketch-runtime kill``, ``update``, ``delete``) sees what the
    creating process did. Errors: ``OSError`` (with the path) from the
    filesystem, ``InvalidArgument`` naming the field for a bad resource value,
    ``Unavailable`` for a controller or file this host lacks, ``NotFound`` when
    the cgroup does not exist where it must.
    """

    path: str
    """The cgroup path inside each hierarchy, e.g. ``/ketch/c1``."""

    def create(self) -> None:
        """Make the cgroup in every hierarchy (parents too). Idempotent.

        v1 cpuset levels get their parent's cpus/mems when empty; on cgroup2
        each ancestor enables its controllers for its children.
        """

    def apply(self, pid: int) -> None:
        """Move process ``pid`` (0: the caller) into the cgroup in every hierarchy."""

    def join_self(self, *, unified: bool = True) -> None:
        """Move the calling process, which must be single-threaded, into the cgroup.

        The cheap way where the host allows it: on v1 hierarchies the caller moves
        its one thread through ``tasks``, which skips the kernel's global
        threadgroup lock (taking it costs an RCU grace period, ~10 ms here).
        ``unified=False`` leaves a hybrid host's cgroup2 hierarchy alone (the
        container needs nothing from it: no hugetlb limits, no ``unified`` keys);
        on a pure cgroup2 host it has no effect.
        """

    def set(self, resources: Mapping[str, Any]) -> None:
        """Apply OCI ``linux.resources`` (after :meth:`create`); also used for updates.

        Everything is validated before the first write. ``devices`` rules are
        applied in order, the last matching rule deciding (v1 devices files,
        or an eBPF program on cgroup2).
        """

    def freeze(self) -> None:
        """Freeze every process; returns once the kernel reports them frozen."""

    def thaw(self) -> None:
        """Undo :meth:`freeze`; returns once the kernel reports them thawed."""

    def frozen(self) -> bool:
        """Whether the cgroup is frozen (``OSError`` if it does not exist)."""

    def pids(self) -> list[int]:
        """Every process in the cgroup and its sub-cgroups."""

    def kill_all(self, sig: int) -> None:
        """Send ``sig`` to every process (SIGKILL through cgroup.kill where it exists)."""

    def stats(self) -> dict[str, Any]:
        """Usage figures in runc's ``events --stats`` shape (see :mod:`.stats`)."""

    def oom_kills(self) -> int:
        """How many processes the OOM killer has killed in this cgroup so far."""

    def exists(self) -> bool:
        """Whether the cgroup exists (in any hierarchy)."""

    def destroy(self) -> None:
        """Remove the cgroup (and sub-cgroups) everywhere. Idempotent.

        Processes must be gone; a brief EBUSY while they exit is retried.
        """

    def mount_binds(self) -> list[tuple[str, str]]:
        """(name under the container's /sys/fs/cgroup, host directory) per hierarchy.

        A unified host has one entry whose name is ``""``.
        """


_MODES = {"v1": "legacy", "legacy": "legacy", "hybrid": "hybrid",
          "v2": "unified", "unified": "unified"}


def resolve_path(cgroups_path: str | None, container_id: str) -> str:
    """The normalised absolute cgroup path for ``linux.cgroupsPath`` (see the module doc)."""
    if not cgroups_path:
        if not container_id or "/" in container_id or container_id in (".", ".."):
            raise InvalidArgument(f"container id {container_id!r} cannot name a cgroup")
        return f"/ketch/{container_id}"
    if not isinstance(cgroups_path, str) or "\0" in cgroups_path or "\n" in cgroups_path:
        raise InvalidArgument(f"linux.cgroupsPath: {cgroups_path!r} is not a path")
    if not cgroups_path.startswith("/") and cgroups_path.count(":") == 2:
        raise InvalidArgument(
            f"linux.cgroupsPath: {cgroups_path!r} is systemd's slice:prefix:name form; "
            "the systemd cgroup driver is not supported, give a path such as /ketch/<id>")
    parts = [p for p in cgroups_path.split("/") if p and p != "."]
    if ".." in parts:
        raise InvalidArgument(f"linux.cgroupsPath: {cgroups_path!r} must not contain '..'")
    if not parts:
        raise InvalidArgument("linux.cgroupsPath: must not be the root cgroup")
    return "/" + "/".join(parts)


def _host() -> Host:
    from ketch.sys.cgroupfs import detect_host

    try:
        return detect_host()
    except OSError as e:
        raise Unavailable(f"cannot use cgroups: {e.strerror}: {e.filename}") from None


def new_manager(cgroups_path: str | None, container_id: str, *, mode: str | None = None,
                unified_root: str | None = None) -> CgroupManager:
    """The manager for a container's cgroup (nothing is created yet).

    ``mode`` ("legacy"/"v1", "hybrid", "unified"/"v2") overrides detection and
    ``unified_root`` the cgroup2 mountpoint; tests use them to drive the v2
    manager on a hybrid host's unified mount or on a plain directory tree.
    """
    path = resolve_path(cgroups_path, container_id)

    if mode is not None and mode not in _MODES:
        raise InvalidArgument(f"cgroup mode {mode!r}: use legacy, hybrid or unified")
    want = _MODES[mode] if mode is not None else None
    host = None
    if want is None or want != "unified" or unified_root is None:
        host = _host()
        want = want or host.mode
    if want == "unified":
        root = unified_root or (host.unified.mountpoint if host and host.unified else None)
        if root is None:
            raise Unavailable("cgroup v2 requested but no cgroup2 filesystem is mounted")
        from ketch.runtime.cgroups.v2 import V2Manager

        return V2Manager(path, root)
    from ketch.runtime.cgroups.v1 import V1Manager

    host = host or _host()
    if not host.hierarchies:
        raise Unavailable(f"cgroup mode {want}: this host has no cgroup v1 hierarchies")
    if want == "hybrid":
        root = unified_root or (host.unified.mountpoint if host.unified else None)
        if root is None:
            raise Unavailable("hybrid cgroups requested but no cgroup2 filesystem is mounted")
        return V1Manager(path, host.hierarchies, root)
    return V1Manager(path, host.hierarchies)
