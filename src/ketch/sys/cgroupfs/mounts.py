"""Which cgroup hierarchies this host has, and where they are mounted.

Read from ``/proc/self/mountinfo`` (never assumed): each ``cgroup`` mount is a v1
hierarchy carrying one or more controllers (or a named one such as
``name=systemd``); a ``cgroup2`` mount is the unified hierarchy. The host's mode
follows the names systemd uses::

    legacy   v1 hierarchies only
    hybrid   v1 hierarchies for the controllers, plus a cgroup2 mount (often at
             /sys/fs/cgroup/unified) that holds whatever controllers v1 left over
    unified  cgroup2 only (at /sys/fs/cgroup on current distributions)

:func:`detect_host` caches its answer for the life of the process: mounts of
cgroup filesystems do not change under a running runtime.
"""

from __future__ import annotations

import errno
import os

from ketch.sys.cgroupfs.files import read_text

__all__ = [
    "HYBRID",
    "LEGACY",
    "UNIFIED",
    "Hierarchy",
    "Host",
    "detect_host",
    "hugepage_sizes",
    "own_cgroups",
    "parse_mountinfo",
    "parse_proc_cgroup",
]

LEGACY = "legacy"
HYBRID = "hybrid"
UNIFIED = "unified"

# Controllers a v1 "cgroup" mount can carry. Anything else in its super options
# is a mount option (rw, xattr, clone_children, release_agent=..., ...).
_V1_CONTROLLERS = frozenset({
    "blkio", "cpu", "cpuacct", "cpuset", "debug", "devices", "freezer", "hugetlb",
    "memory", "misc", "net_cls", "net_prio", "perf_event", "pids", "rdma",
})


class Hierarchy:
    """One mounted cgroup hierarchy.

    ``controllers`` are the v1 controllers bound to it, plus ``name=X`` for a
    named hierarchy; for cgroup2 it is the set in the root's
    ``cgroup.controllers`` (filled in by :func:`detect_host`).
    """

    __slots__ = ("controllers", "device", "mountpoint", "root", "version")

    def __init__(self, version: int, mountpoint: str, controllers: frozenset[str],
                 root: str = "/", device: str = "") -> None:
        self.version = version
        self.mountpoint = mountpoint
        self.controllers = controllers
        self.root = root
        self.device = device

    @property
    def name(self) -> str:
        """``cpu,cpuacct``-style name of a v1 hierarchy (sorted), ``""`` for cgroup2."""
        return ",".join(sorted(self.controllers)) if self.version == 1 else ""

    def __repr__(self) -> str:
        return f"Hierarchy(v{self.version}, {self.mountpoint!r}, {sorted(self.controllers)})"


class Host:
    """The cgroup layout of this host: its mode and its hierarchies.

    ``v1`` maps each v1 controller (and ``name=X``) to its hierarchy;
    ``hierarchies`` lists the distinct v1 hierarchies in mount order;
    ``unified`` is the cgroup2 mount, if any.
    """

    __slots__ = ("hierarchies", "mode", "unified", "v1")

    def __init__(self, hierarchies: list[Hierarchy], unified: Hierarchy | None) -> None:
        self.hierarchies = tuple(hierarchies)
        self.unified = unified
        self.v1: dict[str, Hierarchy] = {c: h for h in hierarchies for c in h.controllers}
        has_v1_controllers = any(not c.startswith("name=") for c in self.v1)
        if has_v1_controllers:
            self.mode = HYBRID if unified is not None else LEGACY
        elif unified is not None:
            self.mode = UNIFIED
            # A lone name=systemd hierarchy beside cgroup2 is systemd's business.
            self.hierarchies = ()
            self.v1 = {}
        else:
            raise OSError(errno.ENODEV, "no cgroup filesystem is mounted (neither cgroup "
                          "nor cgroup2 in mountinfo)", "/proc/self/mountinfo")

    def __repr__(self) -> str:
        return f"Host({self.mode}, v1={list(self.hierarchies)}, unified={self.unified})"


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    if "\\" not in field:
        return field
    out = []
    i = 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> tuple[list[Hierarchy], Hierarchy | None]:
    """The v1 hierarchies and the cgroup2 mount in a mountinfo text.

    A hierarchy mounted more than once (bind mounts) is reported once: the first
    mount of its root wins, else its first mount.
    """
    found: dict[str, Hierarchy] = {}
    order: list[str] = []
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        post_f = post.split()
        if len(post_f) < 3 or post_f[0] not in ("cgroup", "cgroup2"):
            continue
        pre_f = pre.split()
        device, root, mountpoint = pre_f[2], _unescape(pre_f[3]), _unescape(pre_f[4])
        if post_f[0] == "cgroup2":
            h = Hierarchy(2, mountpoint, frozenset(), root, device)
        else:
            opts = post_f[2].split(",")
            ctrls = frozenset(o for o in opts if o in _V1_CONTROLLERS or o.startswith("name="))
            if not ctrls:
                continue
            h = Hierarchy(1, mountpoint, ctrls, root, device)
        prev = found.get(device)
        if prev is None:
            found[device] = h
            order.append(device)
        elif prev.root != "/" and root == "/":
            found[device] = h
    v1 = [found[d] for d in order if found[d].version == 1]
    v2 = [found[d] for d in order if found[d].version == 2]
    return v1, (v2[0] if v2 else None)


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/<pid>/cgroup`` as {controller or ``name=X`` or ``""`` (cgroup2): path}."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        if not ctrls:
            out[""] = path
            continue
        for c in ctrls.split(","):
            out[c] = path
    return out


def own_cgroups(pid: int | str = "self") -> dict[str, str]:
    """The cgroups of process ``pid`` (default: the caller), see :func:`parse_proc_cgroup`."""
    return parse_proc_cgroup(read_text(f"/proc/{pid}/cgroup"))


_HOST: Host | None = None


def detect_host(*, refresh: bool = False) -> Host:
    """This host's cgroup layout, read once per process (``refresh`` reads again).

    Raises ``OSError`` (ENODEV) when no cgroup filesystem is mounted.
    """
    global _HOST
    if _HOST is None or refresh:
        v1, v2 = parse_mountinfo(read_text("/proc/self/mountinfo"))
        if v2 is not None:
            try:
                names = read_text(os.path.join(v2.mountpoint, "cgroup.controllers"))
            except OSError:
                names = ""
            v2.controllers = frozenset(names.split())
        _HOST = Host(v1, v2)
    return _HOST


_HUGEPAGE_SIZES: list[str] | None = None


def hugepage_sizes() -> list[str]:
    """Huge page sizes of this host in cgroup notation ("2MB", "1GB"), smallest first.

    Read from /sys/kernel/mm/hugepages; empty when the kernel has none.
    """
    global _HUGEPAGE_SIZES
    if _HUGEPAGE_SIZES is None:
        try:
            names = os.listdir("/sys/kernel/mm/hugepages")
        except OSError:
            names = []
        kbs = sorted(int(n[len("hugepages-"):-2]) for n in names
                     if n.startswith("hugepages-") and n.endswith("kB"))
        _HUGEPAGE_SIZES = [_size_name(kb) for kb in kbs]
    return list(_HUGEPAGE_SIZES)


def _size_name(kb: int) -> str:
    # The kernel names hugetlb files with the largest unit that divides the size.
    for unit, scale in (("GB", 1 << 20), ("MB", 1 << 10)):
        if kb % scale == 0:
            return f"{kb // scale}{unit}"
    return f"{kb}KB"
