"""The cgroup v1 manager (legacy and hybrid hosts).

The container's cgroup ``path`` is made in every v1 hierarchy (one per mount,
named ones such as name=systemd included) and, on a hybrid host, also in the
unified hierarchy::

    /sys/fs/cgroup/memory/ketch/c1     memory.limit_in_bytes, ...
    /sys/fs/cgroup/cpu/ketch/c1        cpu.shares, cpu.cfs_quota_us, ...
    ...                                (one per v1 hierarchy, wherever mounted)
    /sys/fs/cgroup/unified/ketch/c1    hybrid only: the process joins it too

Each setting goes to the v1 hierarchy of its controller. On a hybrid host a
controller that v1 does not have but cgroup2 does (hugetlb when it was bound to
cgroup2 first) is set through the unified cgroup with cgroup2's files, as are
``linux.resources.unified`` keys; the device rules fall back to eBPF there when
there is no v1 devices hierarchy, and freezing to ``cgroup.freeze`` when there is
no v1 freezer. SIGKILL for every process uses ``cgroup.kill`` when it exists.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence

from ketch.errors import NotFound, Unavailable
from ketch.runtime.cgroups.v2 import (
    V2Manager,
    kill_frozen,
    kill_pids,
    procs_recursive,
    rmdir_tree,
    wait_for,
)
from ketch.sys.cgroupfs import Hierarchy, read_text, write_text

# typing costs ms to import on every container start; annotations are strings here
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["V1Manager"]

_FREEZE_TIMEOUT = 10.0
# v1 controller → the cgroup2 controller that does its job.
_V2_NAME = {"blkio": "io", "cpuacct": "cpu"}
# linux.resources sections each cgroup2 controller reads.
_SECTIONS = {"memory": ("memory",), "cpu": ("cpu",), "cpuset": ("cpu",), "pids": ("pids",),
             "io": ("blockIO",), "hugetlb": ("hugepageLimits",), "rdma": ("rdma",),
             "devices": ("devices",)}
# Where pids() looks: the first of these the host has.
_PIDS_FROM = ("pids", "freezer", "memory", "cpu", "cpuacct", "devices", "blkio", "cpuset")


class V1Manager:
    """A container's cgroups on a v1 (or hybrid) host; see :class:`CgroupManager`."""

    __slots__ = ("_dirs", "_hier", "path", "unified")

    def __init__(self, path: str, hierarchies: Sequence[Hierarchy],
                 unified_root: str | None = None) -> None:
        self.path = path
        self._hier = [(h, h.mountpoint.rstrip("/") + path) for h in hierarchies]
        self._dirs = {c: d for h, d in self._hier for c in h.controllers}
        self.unified = V2Manager(path, unified_root) if unified_root else None

    def __repr__(self) -> str:
        return f"V1Manager({self.path!r}, {sorted(self._dirs)}, unified={self.unified})"

    def dir(self, controller: str) -> str | None:
        """The cgroup's directory in ``controller``'s hierarchy, if the host has one."""
        return self._dirs.get(controller)

    # ---- lifecycle -----------------------------------------------------------------

    def create(self) -> None:
        for h, d in self._hier:
            if "cpuset" in h.controllers:
                _make_cpuset(h.mountpoint.rstrip("/"), self.path)
            else:
                os.makedirs(d, 0o755, exist_ok=True)
        if self.unified is not None:
            self.unified.create()

    def apply(self, pid: int) -> None:
        for _, d in self._hier:
            write_text(f"{d}/cgroup.procs", str(pid))
        if self.unified is not None:
            self.unified.apply(pid)

    def join_self(self, *, unified: bool = True) -> None:
        for _, d in self._hier:
            write_text(f"{d}/tasks", "0")  # this thread only: no global lock
        if unified and self.unified is not None:
            self.unified.apply(0)

    def exists(self) -> bool:
        if any(os.path.isdir(d) for _, d in self._hier):
            return True
        return self.unified is not None and self.unified.exists()

    def destroy(self) -> None:
        first: OSError | None = None
        dirs = [d for _, d in self._hier]
        if self.unified is not None:
            dirs.append(self.unified.dir)
        for d in dirs:
            try:
                rmdir_tree(d)
            except OSError as e:
                first = first or e  # remove what can be removed, then report
        if first is not None:
            raise first

    def mount_binds(self) -> list[tuple[str, str]]:
        out = [(os.path.basename(h.mountpoint.rstrip("/")), d) for h, d in self._hier]
        if self.unified is not None:
            out.append((os.path.basename(self.unified.root) or "unified", self.unified.dir))
        return out

    # ---- resources -----------------------------------------------------------------

    def _read(self, controller: str, name: str) -> str | None:
        d = self._dirs.get(controller)
        if d is None:
            return None
        try:
            return read_text(f"{d}/{name}")
        except FileNotFoundError:
            return None

    def set(self, resources: Mapping[str, Any]) -> None:
        from ketch.runtime.cgroups.convert import apply_write, unified_writes, v1_writes

        if not self.exists():
            raise NotFound(f"cgroup {self.path} does not exist (create it first)")
        writes = v1_writes(resources, self._read)
        raw = unified_writes(resources)
        have2 = self.unified.available() if self.unified is not None else frozenset()
        delegate = {w.controller for w in raw}
        for w in writes:
            if w.controller in self._dirs:
                continue
            c2 = _V2_NAME.get(w.controller, w.controller)
            if self.unified is not None and (c2 in have2 or c2 == "devices"):
                delegate.add(c2)
                continue
            where = " nor enabled on cgroup2" if self.unified is not None else ""
            raise Unavailable(f"{w.field}: the {w.controller} cgroup controller is not "
                              f"mounted on this host{where}")
        if raw and self.unified is None:
            raise Unavailable(f"{raw[0].field}: linux.resources.unified needs cgroup v2, "
                              "and this host has only v1 hierarchies")
        if delegate and self.unified is not None:
            sub = {k: resources[k] for c in delegate for k in _SECTIONS.get(c, ())
                   if k in resources}
            if raw:
                sub["unified"] = resources["unified"]
            self.unified.set(sub, only=delegate)
        from ketch.sys.cgroupfs import Writes

        with Writes() as files:
            for w in writes:
                if w.controller in self._dirs:
                    apply_write(self._dirs[w.controller], w, files)

    # ---- freezer -------------------------------------------------------------------

    def freeze(self) -> None:
        self._set_frozen(True)

    def thaw(self) -> None:
        self._set_frozen(False)

    def frozen(self) -> bool:
        d = self._dirs.get("freezer")
        if d is not None:
            return read_text(f"{d}/freezer.state") == "FROZEN"
        if self.unified is not None:
            return self.unified.frozen()
        return False

    def _set_frozen(self, on: bool) -> None:
        d = self._dirs.get("freezer")
        if d is None:
            if self.unified is not None:
                if on:
                    self.unified.freeze()
                else:
                    self.unified.thaw()
                return
            raise Unavailable("this host has no freezer cgroup controller")
        path = f"{d}/freezer.state"
        want = "FROZEN" if on else "THAWED"
        try:
            write_text(path, want)
        except FileNotFoundError:
            raise NotFound(f"cgroup {d} does not exist") from None

        def reached() -> bool:
            state = read_text(path)
            if state == "FREEZING" and on:
                # A task that could not be frozen yet is retried on each write.
                write_text(path, want)
            return state == want

        if not wait_for(reached, _FREEZE_TIMEOUT):
            if on:
                write_text(path, "THAWED")
            raise Unavailable(f"cgroup {d} did not {'freeze' if on else 'thaw'} "
                              f"within {_FREEZE_TIMEOUT:.0f}s")

    # ---- processes -----------------------------------------------------------------

    def pids(self) -> list[int]:
        for c in _PIDS_FROM:
            if c in self._dirs:
                return procs_recursive(self._dirs[c])
        if self._hier:
            return procs_recursive(self._hier[0][1])
        return self.unified.pids() if self.unified is not None else []

    def kill_all(self, sig: int) -> None:
        if sig != signal.SIGKILL:
            kill_pids(self.pids(), sig)
            return
        if self.unified is not None and self.unified.pids() and \
                os.path.exists(f"{self.unified.dir}/cgroup.kill"):
            self.unified.kill_all(sig)  # atomic, for those that joined cgroup2 too
            kill_pids(self.pids(), sig)  # and whatever joined only the v1 hierarchies
            return
        if "freezer" in self._dirs:
            kill_frozen(self, sig)
        else:
            kill_pids(self.pids(), sig)

    # ---- statistics ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        from ketch.runtime.cgroups.stats import hugetlb_v2, v1_stats, v2_stats

        s = v1_stats(self._dirs)
        if self.unified is not None:
            if "hugetlb" not in self._dirs:
                s["hugetlb"] = hugetlb_v2(self.unified.dir)
            if "cpuacct" not in self._dirs:
                # cgroup2's cpu.stat has usage even without the cpu controller.
                s["cpu"]["usage"] = v2_stats(self.unified.dir)["cpu"]["usage"]
        return s

    def oom_kills(self) -> int:
        from ketch.runtime.cgroups.stats import oom_kills_v1, oom_kills_v2

        if "memory" in self._dirs:
            return oom_kills_v1(self._dirs["memory"])
        if self.unified is not None:
            return oom_kills_v2(self.unified.dir)
        return 0


def _make_cpuset(mountpoint: str, path: str) -> None:
    """mkdir -p in the cpuset hierarchy, giving each level its parent's cpus and mems.

    A new v1 cpuset starts with empty cpuset.cpus/mems and refuses tasks until
    both are set (unless clone_children is on, which we do not rely on).
    """
    parent = mountpoint
    for part in path.strip("/").split("/"):
        cur = f"{parent}/{part}"
        try:
            os.mkdir(cur, 0o755)
        except FileExistsError:
            pass
        for name in ("cpuset.cpus", "cpuset.mems"):
            if not read_text(f"{cur}/{name}"):
                write_text(f"{cur}/{name}", read_text(f"{parent}/{name}"))
        parent = cur
