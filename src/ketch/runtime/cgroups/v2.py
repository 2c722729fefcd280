"""The cgroup v2 manager: one directory in the unified hierarchy.

Layout for ``path`` ``/ketch/c1`` on a cgroup2 mount at ``root``::

    root/                     cgroup.subtree_control  += every controller root offers
    └── ketch/                cgroup.subtree_control  += every controller it offers
        └── c1/               the container: cgroup.procs, memory.max, cpu.max, ...
                              + an eBPF device program (devices_bpf) when rules are set

Controllers are enabled top-down on :meth:`create` because a cgroup2 directory
only has the files of the controllers its parent enabled for its children. The
same class serves the unified half of a hybrid host (``ketch.runtime.cgroups.v1``
holds one), where the root may offer only a few controllers (e.g. hugetlb).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Collection, Mapping

from ketch.errors import NotFound, Unavailable
from ketch.sys.cgroupfs import read_flat_keyed, read_text, write_text

# typing costs ms to import on every container start; annotations are strings here
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["V2Manager", "kill_frozen", "kill_pids", "procs_recursive", "rmdir_tree", "wait_for"]

_FREEZE_TIMEOUT = 10.0
_RMDIR_TIMEOUT = 2.0


def procs_recursive(directory: str) -> list[int]:
    """Every pid in ``cgroup.procs`` of ``directory`` and of all its sub-cgroups."""
    out: list[int] = []
    stack = [directory]
    while stack:
        d = stack.pop()
        try:
            out += [int(p) for p in read_text(f"{d}/cgroup.procs").split()]
            with os.scandir(d) as it:
                stack += [e.path for e in it if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            continue  # removed while we walked
    return out


def rmdir_tree(directory: str) -> None:
    """Remove the cgroup ``directory`` and its sub-cgroups, deepest first.

    Absent is fine. EBUSY (processes still leaving) is retried for a short
    while, then raised as ``OSError``.
    """
    dirs: list[str] = []
    stack = [directory]
    while stack:
        d = stack.pop()
        dirs.append(d)
        try:
            with os.scandir(d) as it:
                stack += [e.path for e in it if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            continue
    for d in reversed(dirs):
        deadline = time.monotonic() + _RMDIR_TIMEOUT
        delay = 0.001
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def wait_for(done: Any, timeout: float) -> bool:
    """Poll ``done()`` with a growing pause until it is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    return True


def kill_frozen(mgr: Any, sig: int) -> None:
    """Signal every process of ``mgr`` with the cgroup frozen, so nothing forks past us.

    For SIGKILL where no atomic ``cgroup.kill`` can do it. Thawing afterwards
    is what lets the signal be delivered.
    """
    thaw = mgr.exists() and not mgr.frozen()
    if thaw:
        mgr.freeze()
    try:
        kill_pids(mgr.pids(), sig)
    finally:
        if thaw:
            mgr.thaw()


def kill_pids(pids: list[int], sig: int) -> None:
    """Signal each pid; ones that are already gone are skipped."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class V2Manager:
    """A container's cgroup in a cgroup2 hierarchy; see :class:`CgroupManager`."""

    __slots__ = ("dir", "path", "root")

    def __init__(self, path: str, root: str) -> None:
        self.path = path
        self.root = root.rstrip("/") or "/"
        self.dir = self.root + path

    def __repr__(self) -> str:
        return f"V2Manager({self.dir!r})"

    # ---- lifecycle -----------------------------------------------------------------

    def create(self) -> None:
        cur = self.root
        for part in self.path.strip("/").split("/"):
            _enable_controllers(cur)
            cur = f"{cur}/{part}"
            try:
                os.mkdir(cur, 0o755)
            except FileExistsError:
                pass

    def apply(self, pid: int) -> None:
        write_text(f"{self.dir}/cgroup.procs", str(pid))

    def join_self(self, *, unified: bool = True) -> None:
        # cgroup.threads cannot cross domains; a whole-process move it is
        self.apply(0)

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    def destroy(self) -> None:
        rmdir_tree(self.dir)

    def mount_binds(self) -> list[tuple[str, str]]:
        return [("", self.dir)]

    # ---- resources -----------------------------------------------------------------

    def available(self) -> frozenset[str]:
        """Controllers this cgroup has files for (its ``cgroup.controllers``)."""
        try:
            return frozenset(read_text(f"{self.dir}/cgroup.controllers").split())
        except FileNotFoundError:
            return frozenset()

    def read(self, controller: str, name: str) -> str | None:
        """The content of control file ``name``, ``None`` if it does not exist."""
        try:
            return read_text(f"{self.dir}/{name}")
        except FileNotFoundError:
            return None

    def set(self, resources: Mapping[str, Any], *, only: Collection[str] | None = None) -> None:
        """Apply ``resources``; with ``only``, just those controllers' settings
        ("devices" for the device rules, "" for core files)."""
        from ketch.runtime.cgroups.convert import apply_write, device_rules, v2_writes

        if not self.exists():
            raise NotFound(f"cgroup {self.dir} does not exist (create it first)")
        writes = v2_writes(resources, self.read)
        rules = device_rules(resources)
        if only is not None:
            writes = [w for w in writes if w.controller in only]
            if "devices" not in only:
                rules = None
        have = self.available()
        for w in writes:
            if w.controller and w.controller not in have and w.candidates:
                raise Unavailable(f"{w.field}: the {w.controller} controller is not "
                                  f"enabled for {self.dir} (it has: "
                                  f"{' '.join(sorted(have)) or 'none'})")
        for w in writes:
            apply_write(self.dir, w)
        if rules is not None:
            from ketch.runtime.cgroups.devices_bpf import install

            try:
                install(self.dir, rules)
            except OSError as e:
                raise Unavailable(f"linux.resources.devices: cannot install the eBPF "
                                  f"device filter on {self.dir}: {e}") from None

    # ---- freezer -------------------------------------------------------------------

    def freeze(self) -> None:
        self._set_frozen(True)

    def thaw(self) -> None:
        self._set_frozen(False)

    def frozen(self) -> bool:
        return read_flat_keyed(f"{self.dir}/cgroup.events").get("frozen") == 1

    def _set_frozen(self, on: bool) -> None:
        path = f"{self.dir}/cgroup.freeze"
        try:
            write_text(path, "1" if on else "0")
        except FileNotFoundError:
            if not self.exists():
                raise NotFound(f"cgroup {self.dir} does not exist") from None
            raise Unavailable(f"{path} is missing: this kernel cannot freeze cgroup2 "
                              "groups (needs Linux 5.2)") from None
        # The kernel freezes asynchronously; cgroup.events says when it is done.
        if not wait_for(lambda: self.frozen() == on, _FREEZE_TIMEOUT):
            if on:
                write_text(path, "0")
            raise Unavailable(f"cgroup {self.dir} did not {'freeze' if on else 'thaw'} "
                              f"within {_FREEZE_TIMEOUT:.0f}s")

    # ---- processes -----------------------------------------------------------------

    def pids(self) -> list[int]:
        return procs_recursive(self.dir)

    def kill_all(self, sig: int) -> None:
        if sig != signal.SIGKILL:
            kill_pids(self.pids(), sig)
            return
        try:
            write_text(f"{self.dir}/cgroup.kill", "1")
            return
        except FileNotFoundError:
            if not self.exists():
                return
        kill_frozen(self, sig)  # no cgroup.kill (Linux < 5.14)

    # ---- statistics ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        from ketch.runtime.cgroups.stats import v2_stats

        return v2_stats(self.dir)

    def oom_kills(self) -> int:
        from ketch.runtime.cgroups.stats import oom_kills_v2

        return oom_kills_v2(self.dir)


def _enable_controllers(directory: str) -> None:
    """Enable for the children of ``directory`` every controller it has.

    One write per controller so that one refusal (say "cpu" while a real-time
    task sits in a parent, or EBUSY when ``directory`` holds processes and is not
    the root) does not block the others; a setting that needs a missing one
    fails later, in ``set``, naming the field.
    """
    try:
        have = read_text(f"{directory}/cgroup.controllers").split()
        enabled = set(read_text(f"{directory}/cgroup.subtree_control").split())
    except FileNotFoundError:
        return
    for c in have:
        if c not in enabled:
            try:
                write_text(f"{directory}/cgroup.subtree_control", f"+{c}")
            except OSError:
                pass
