"""The ``CgroupManager`` seam (see the package docstring for the lifecycle).

A module of its own so that starting a container need not import ``typing``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["CgroupManager"]


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
