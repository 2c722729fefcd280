"""OCI ``linux.resources`` → cgroup file writes, for v1 and for v2.

The conversions are pure: :func:`v1_writes` and :func:`v2_writes` validate the
resources (``InvalidArgument`` naming the field) and return an ordered list of
:class:`Write`. A few need the cgroup's current values (which of memory limit
and memory+swap limit goes first on v1, the quota to keep when only the CPU
period changes on v2, the usage for ``checkBeforeUpdate``); they get them from
a ``read(controller, file)`` callback that returns ``None`` for a missing file.
:func:`apply_write` then performs one write against a directory.

Conventions, as runc and Docker use them: 0 means "unset" for memory limit,
reservation and swap, CPU shares, quota and period, and pids limit; -1 means
"unlimited". ``memory.swap`` is the memory+swap total (v1's memsw), so v2's
``memory.swap.max`` is ``swap - limit``. ``memory.kernel``, ``memory.kernelTCP``
and ``memory.useHierarchy`` are deprecated by the runtime-spec and ignored.

Device rules (``devices``) are normalised by :func:`device_rules`; on v1 they
become ``devices.allow``/``devices.deny`` lines, on v2 an eBPF program
(:mod:`ketch.runtime.cgroups.devices_bpf`).

The module is longer than our usual ~500 lines on purpose: both versions'
mappings of every setting, with their shared validation, read best in one place.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Mapping, Sequence

from ketch.errors import InvalidArgument, Unavailable
from ketch.sys.cgroupfs import Writes, hugepage_sizes, write_text

# typing costs ms to import on every container start; annotations are strings here
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "DeviceRule",
    "Read",
    "Write",
    "apply_write",
    "blkio_weight_to_io_weight",
    "default_device_rules",
    "device_rules",
    "shares_to_weight",
    "unified_writes",
    "v1_device_line",
    "v1_writes",
    "v2_writes",
]

Read = Callable[[str, str], "str | None"]
# (allow, type "a"/"b"/"c", major or -1 for any, minor or -1 for any, access "rwm" subset)
DeviceRule = tuple[bool, str, int, int, str]

_P = "linux.resources"
_V1_UNLIMITED = 1 << 62  # memory.limit_in_bytes reads 9223372036854771712 when unset
# Patterns are compiled on first use (re caches them), not at import.
_PAGE_SIZE = r"[1-9][0-9]*[KMGTP]B"
_UNIFIED_KEY = r"[a-z][a-z0-9_]*\.[a-z0-9_.]+"


class Write:
    """One value for one control file of one controller.

    ``candidates`` are (file, value) pairs tried in order; the first file that
    exists takes the write (e.g. ``blkio.weight`` then ``blkio.bfq.weight``). No
    candidates, or none present, is :class:`Unavailable` with ``missing`` as the
    message. ``controller`` is ``""`` for cgroup2 core files (``cgroup.*``).
    """

    __slots__ = ("candidates", "controller", "field", "missing")

    def __init__(self, controller: str, field: str, candidates: Sequence[tuple[str, str]],
                 missing: str = "") -> None:
        self.controller = controller
        self.field = field
        self.candidates = tuple(candidates)
        self.missing = missing or (
            f"{field}: {' / '.join(f for f, _ in self.candidates)} is not available "
            f"on this host's {controller or 'cgroup'} controller")

    def __repr__(self) -> str:
        return f"Write({self.controller!r}, {self.field!r}, {list(self.candidates)!r})"

    @property
    def file(self) -> str:
        """The first candidate file (what tests usually check)."""
        return self.candidates[0][0] if self.candidates else ""

    @property
    def value(self) -> str:
        """The first candidate value."""
        return self.candidates[0][1] if self.candidates else ""


def apply_write(directory: str, w: Write, writes: Writes | None = None) -> None:
    """Perform ``w`` in the cgroup directory ``directory`` (through ``writes`` when
    given: files written before are written again without another open).

    A value the kernel refuses (EINVAL, ERANGE) is ``InvalidArgument`` naming the
    field; a missing file is ``Unavailable``; other errors stay ``OSError``.
    """
    for name, value in w.candidates:
        path = f"{directory}/{name}"
        try:
            if writes is None:
                write_text(path, value)
            else:
                writes.write(path, value)
            return
        except OSError as e:
            if e.errno == errno.ENOENT:
                continue
            if e.errno in (errno.EINVAL, errno.ERANGE, errno.EOVERFLOW):
                raise InvalidArgument(f"{w.field}: {value!r} rejected by {path}: "
                                      f"{e.strerror}") from None
            if e.errno in (errno.EOPNOTSUPP, errno.ENODEV):
                raise Unavailable(f"{w.field}: {path}: {e.strerror}") from None
            raise
    raise Unavailable(w.missing)


# ---- validation helpers ---------------------------------------------------------------

def _section(res: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    v = res.get(key)
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise InvalidArgument(f"{_P}.{key}: must be an object")
    return v


def _int(obj: Mapping[str, Any], key: str, field: str, *, minimum: int | None = None,
         maximum: int | None = None) -> int | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidArgument(f"{field}: must be an integer, not {v!r}")
    if minimum is not None and v < minimum:
        raise InvalidArgument(f"{field}: {v} is below the minimum {minimum}")
    if maximum is not None and v > maximum:
        raise InvalidArgument(f"{field}: {v} is above the maximum {maximum}")
    return v


def _set(v: int | None) -> int | None:
    """0 is "unset" for most resource numbers (Docker's convention)."""
    return None if v == 0 else v


def _str(obj: Mapping[str, Any], key: str, field: str) -> str | None:
    v = obj.get(key)
    if v is None or v == "":
        return None
    if not isinstance(v, str) or "\n" in v:
        raise InvalidArgument(f"{field}: must be a one-line string, not {v!r}")
    return v


def _list(obj: Mapping[str, Any], key: str, field: str) -> list[Mapping[str, Any]]:
    v = obj.get(key)
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, Mapping) for x in v):
        raise InvalidArgument(f"{field}: must be a list of objects")
    return v


def _devnum(obj: Mapping[str, Any], field: str) -> str:
    major = _int(obj, "major", f"{field}.major", minimum=0)
    minor = _int(obj, "minor", f"{field}.minor", minimum=0)
    if major is None or minor is None:
        raise InvalidArgument(f"{field}: major and minor are required")
    return f"{major}:{minor}"


def _to_int(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.split()[0] if text.split() else ""
    if text == "max":
        return -1
    try:
        return int(text)
    except ValueError:
        return None


# ---- conversions shared by both versions -------------------------------------------------

def shares_to_weight(shares: int) -> int:
    """cpu.shares (2..262144) → cpu.weight (1..10000), the linear map both ends pin."""
    shares = min(max(shares, 2), 262144)
    return 1 + ((shares - 2) * 9999) // 262142


def blkio_weight_to_io_weight(weight: int) -> int:
    """blkio.weight (10..1000) → io.weight (1..10000)."""
    weight = min(max(weight, 10), 1000)
    return 1 + ((weight - 10) * 9999) // 990


def device_rules(res: Mapping[str, Any]) -> list[DeviceRule] | None:
    """``linux.resources.devices`` normalised; ``None`` when the key is absent.

    ``type`` defaults to ``"a"`` (all), a missing or negative major/minor is the
    wildcard -1, and ``access`` defaults to ``"rwm"``.
    """
    raw = res.get("devices")
    if raw is None:
        return None
    field = f"{_P}.devices"
    out: list[DeviceRule] = []
    for i, d in enumerate(_list(res, "devices", field)):
        f = f"{field}[{i}]"
        allow = d.get("allow")
        if not isinstance(allow, bool):
            raise InvalidArgument(f"{f}.allow: must be true or false")
        kind = d.get("type") or "a"
        if kind not in ("a", "b", "c"):
            raise InvalidArgument(f"{f}.type: must be 'a', 'b' or 'c', not {kind!r}")
        major = _int(d, "major", f"{f}.major", minimum=-1)
        minor = _int(d, "minor", f"{f}.minor", minimum=-1)
        access = d.get("access") or "rwm"
        if not isinstance(access, str) or not set(access) <= set("rwm"):
            raise InvalidArgument(f"{f}.access: must be letters from 'rwm', not {access!r}")
        access = "".join(c for c in "rwm" if c in access)
        out.append((allow, kind, -1 if major is None else major,
                    -1 if minor is None else minor, access))
    return out


def v1_device_line(rule: DeviceRule) -> tuple[str, str]:
    """(devices.allow or devices.deny, the line the v1 devices controller parses)."""
    allow, kind, major, minor, access = rule
    name = "devices.allow" if allow else "devices.deny"
    if kind == "a":
        return name, "a"
    ma = "*" if major < 0 else str(major)
    mi = "*" if minor < 0 else str(minor)
    return name, f"{kind} {ma}:{mi} {access}"


def default_device_rules(linux: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The allow rules a container needs besides ``linux.resources.devices``.

    The runtime-spec makes the runtime supply /dev/null, zero, full, random,
    urandom, tty, console and ptmx (and /dev/pts/*), mknod of any node (as runc
    allows), and every entry of
    ``linux.devices``; a spec that starts its rules with "deny all" still gets
    these. Append the result to ``linux.resources.devices`` before ``set``.
    """
    rules: list[dict[str, Any]] = [
        # mknod of any node: creating one is harmless, opening it is what is guarded
        {"allow": True, "type": "c", "access": "m"},
        {"allow": True, "type": "b", "access": "m"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},   # null
        {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},   # zero
        {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},   # full
        {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},   # random
        {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},   # urandom
        {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},   # tty
        {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},   # console
        {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},   # ptmx
        {"allow": True, "type": "c", "major": 136, "access": "rwm"},             # pts/*
    ]
    for dev in linux.get("devices") or []:
        kind = dev.get("type")
        if kind in ("c", "u", "b") and dev.get("major") is not None:
            rules.append({"allow": True, "type": "b" if kind == "b" else "c",
                          "major": dev["major"], "minor": dev.get("minor", -1),
                          "access": "rwm"})
    return rules


# ---- v1 --------------------------------------------------------------------------------

def v1_writes(res: Mapping[str, Any], read: Read) -> list[Write]:
    """The v1 writes for ``res``, in the order they must happen.

    Controllers named: memory, cpu, cpuset, pids, blkio, hugetlb, net_cls,
    net_prio, rdma, devices. ``unified`` is not handled here (the v1 manager
    hands it to the cgroup2 side of a hybrid host).
    """
    out: list[Write] = []
    out += _v1_memory(_section(res, "memory"), read)
    out += _v1_cpu(_section(res, "cpu"), read)
    out += _pids(_section(res, "pids"))
    out += _v1_blkio(_section(res, "blockIO"))
    out += _hugetlb(res, "limit_in_bytes")
    out += _v1_network(_section(res, "network"))
    out += _rdma(res)
    rules = device_rules(res)
    for i, rule in enumerate(rules or ()):
        out.append(Write("devices", f"{_P}.devices[{i}]", [v1_device_line(rule)]))
    return out


def _v1_memory(mem: Mapping[str, Any], read: Read) -> list[Write]:
    f = f"{_P}.memory"
    limit = _set(_int(mem, "limit", f"{f}.limit", minimum=-1))
    swap = _set(_int(mem, "swap", f"{f}.swap", minimum=-1))
    reservation = _set(_int(mem, "reservation", f"{f}.reservation", minimum=-1))
    swappiness = _int(mem, "swappiness", f"{f}.swappiness", minimum=-1, maximum=100)
    out: list[Write] = []
    _check_before_update(mem, limit, read, "memory.usage_in_bytes")
    if limit is not None and limit > 0 and swap is not None and 0 < swap < limit:
        raise InvalidArgument(f"{f}.swap: {swap} is below memory.limit {limit} "
                              "(swap is the memory+swap total)")
    if limit == -1 and swap is None:
        swap = -1  # unlimited memory needs unlimited memory+swap to be accepted
    memsw_present = read("memory", "memory.memsw.limit_in_bytes") is not None
    if swap is not None and not memsw_present:
        if swap != -1 and swap != limit:
            raise Unavailable(f"{f}.swap: this kernel has no swap accounting "
                              "(memory.memsw.limit_in_bytes is missing), so swap cannot "
                              "be limited; boot with swapaccount=1 or leave swap unset")
        swap = None
    lim_w = Write("memory", f"{f}.limit", [("memory.limit_in_bytes", str(limit))])
    swap_w = Write("memory", f"{f}.swap", [("memory.memsw.limit_in_bytes", str(swap))])
    if limit is not None and swap is not None:
        # limit <= memsw must hold after every single write: raise memsw first when
        # it grows past the current limit, else lower the limit first.
        current = _to_int(read("memory", "memory.limit_in_bytes"))
        new_swap = _V1_UNLIMITED if swap == -1 else swap
        if current is None or current < 0 or new_swap >= current:
            out += [swap_w, lim_w]
        else:
            out += [lim_w, swap_w]
    elif limit is not None:
        out.append(lim_w)
    elif swap is not None:
        out.append(swap_w)
    if reservation is not None:
        out.append(Write("memory", f"{f}.reservation",
                         [("memory.soft_limit_in_bytes", str(reservation))]))
    if swappiness is not None and swappiness >= 0:
        out.append(Write("memory", f"{f}.swappiness",
                         [("memory.swappiness", str(swappiness))]))
    oom = mem.get("disableOOMKiller")
    if oom is not None:
        if not isinstance(oom, bool):
            raise InvalidArgument(f"{f}.disableOOMKiller: must be true or false")
        if oom:
            out.append(Write("memory", f"{f}.disableOOMKiller",
                             [("memory.oom_control", "1")]))
    return out


def _check_before_update(mem: Mapping[str, Any], limit: int | None, read: Read,
                         usage_file: str) -> None:
    if not mem.get("checkBeforeUpdate") or limit is None or limit <= 0:
        return
    usage = _to_int(read("memory", usage_file))
    if usage is not None and usage > limit:
        raise InvalidArgument(f"{_P}.memory.limit: {limit} is below the current usage "
                              f"{usage} (checkBeforeUpdate)")


def _v1_cpu(cpu: Mapping[str, Any], read: Read) -> list[Write]:
    f = f"{_P}.cpu"
    out: list[Write] = []
    shares = _set(_int(cpu, "shares", f"{f}.shares", minimum=0))
    quota = _set(_int(cpu, "quota", f"{f}.quota", minimum=-1))
    period = _set(_int(cpu, "period", f"{f}.period", minimum=0))
    burst = _int(cpu, "burst", f"{f}.burst", minimum=0)
    rt_runtime = _set(_int(cpu, "realtimeRuntime", f"{f}.realtimeRuntime", minimum=-1))
    rt_period = _set(_int(cpu, "realtimePeriod", f"{f}.realtimePeriod", minimum=0))
    idle = _int(cpu, "idle", f"{f}.idle", minimum=0, maximum=1)
    if shares is not None:
        out.append(Write("cpu", f"{f}.shares", [("cpu.shares", str(shares))]))
    if period is not None:
        out.append(Write("cpu", f"{f}.period", [("cpu.cfs_period_us", str(period))]))
    if quota is not None:
        out.append(Write("cpu", f"{f}.quota", [("cpu.cfs_quota_us", str(quota))]))
    if burst is not None:
        out.append(Write("cpu", f"{f}.burst", [("cpu.cfs_burst_us", str(burst))]))
    rt = []
    if rt_period is not None:
        rt.append(Write("cpu", f"{f}.realtimePeriod", [("cpu.rt_period_us", str(rt_period))]))
    if rt_runtime is not None:
        rt.append(Write("cpu", f"{f}.realtimeRuntime",
                        [("cpu.rt_runtime_us", str(rt_runtime))]))
    if len(rt) == 2:
        # runtime <= period must hold after each write: shrink runtime first when
        # the new period is below the runtime in force.
        current = _to_int(read("cpu", "cpu.rt_runtime_us"))
        if current is not None and rt_period is not None and rt_period < current:
            rt.reverse()
    out += rt
    if idle is not None:
        out.append(Write("cpu", f"{f}.idle", [("cpu.idle", str(idle))]))
    out += _cpuset(cpu)
    return out


def _cpuset(cpu: Mapping[str, Any]) -> list[Write]:
    f = f"{_P}.cpu"
    out: list[Write] = []
    cpus = _str(cpu, "cpus", f"{f}.cpus")
    mems = _str(cpu, "mems", f"{f}.mems")
    for name, value in (("cpus", cpus), ("mems", mems)):
        if value is not None:
            if not re.fullmatch(r"[0-9,\- ]+", value):
                raise InvalidArgument(f"{f}.{name}: {value!r} is not a list like '0-2,4'")
            out.append(Write("cpuset", f"{f}.{name}", [(f"cpuset.{name}", value)]))
    return out


def _pids(pids: Mapping[str, Any]) -> list[Write]:
    limit = _set(_int(pids, "limit", f"{_P}.pids.limit"))
    if limit is None:
        return []
    value = "max" if limit < 0 else str(limit)
    return [Write("pids", f"{_P}.pids.limit", [("pids.max", value)])]


def _weight(obj: Mapping[str, Any], key: str, field: str) -> int | None:
    if obj.get(key) is None or obj.get(key) == 0:
        return None  # 0 is "unset", as for the other resource numbers
    return _int(obj, key, field, minimum=10, maximum=1000)


_THROTTLE = (
    ("throttleReadBpsDevice", "read_bps_device", "rbps"),
    ("throttleWriteBpsDevice", "write_bps_device", "wbps"),
    ("throttleReadIOPSDevice", "read_iops_device", "riops"),
    ("throttleWriteIOPSDevice", "write_iops_device", "wiops"),
)


def _v1_blkio(bio: Mapping[str, Any]) -> list[Write]:
    f = f"{_P}.blockIO"
    out: list[Write] = []
    weight = _weight(bio, "weight", f"{f}.weight")
    leaf = _weight(bio, "leafWeight", f"{f}.leafWeight")
    if weight is not None:
        out.append(Write("blkio", f"{f}.weight",
                         [("blkio.weight", str(weight)), ("blkio.bfq.weight", str(weight))]))
    if leaf is not None:
        out.append(Write("blkio", f"{f}.leafWeight", [("blkio.leaf_weight", str(leaf))]))
    for i, d in enumerate(_list(bio, "weightDevice", f"{f}.weightDevice")):
        df = f"{f}.weightDevice[{i}]"
        dev = _devnum(d, df)
        w = _int(d, "weight", f"{df}.weight", minimum=0, maximum=1000)
        lw = _int(d, "leafWeight", f"{df}.leafWeight", minimum=0, maximum=1000)
        if w is not None:
            out.append(Write("blkio", f"{df}.weight",
                             [("blkio.weight_device", f"{dev} {w}"),
                              ("blkio.bfq.weight_device", f"{dev} {w}")]))
        if lw is not None:
            out.append(Write("blkio", f"{df}.leafWeight",
                             [("blkio.leaf_weight_device", f"{dev} {lw}")]))
    for key, name, _ in _THROTTLE:
        for i, d in enumerate(_list(bio, key, f"{f}.{key}")):
            df = f"{f}.{key}[{i}]"
            dev = _devnum(d, df)
            rate = _int(d, "rate", f"{df}.rate", minimum=0) or 0
            out.append(Write("blkio", df, [(f"blkio.throttle.{name}", f"{dev} {rate}")]))
    return out


def _hugetlb(res: Mapping[str, Any], suffix: str) -> list[Write]:
    f = f"{_P}.hugepageLimits"
    out: list[Write] = []
    for i, h in enumerate(_list(res, "hugepageLimits", f)):
        hf = f"{f}[{i}]"
        size = h.get("pageSize")
        if not isinstance(size, str) or not re.fullmatch(_PAGE_SIZE, size):
            raise InvalidArgument(f"{hf}.pageSize: {size!r} is not a size like '2MB'")
        limit = _int(h, "limit", f"{hf}.limit", minimum=-1)
        if limit is None:
            raise InvalidArgument(f"{hf}.limit: required")
        value = ("max" if suffix == "max" else "-1") if limit < 0 else str(limit)
        out.append(Write("hugetlb", hf, [(f"hugetlb.{size}.{suffix}", value)],
                         missing=f"{hf}.pageSize: huge page size {size} is not supported "
                                 f"on this host (it has: {', '.join(hugepage_sizes()) or 'none'})"))
    return out


def _v1_network(net: Mapping[str, Any]) -> list[Write]:
    f = f"{_P}.network"
    out: list[Write] = []
    classid = _int(net, "classID", f"{f}.classID", minimum=0)
    if classid is not None:
        out.append(Write("net_cls", f"{f}.classID", [("net_cls.classid", str(classid))]))
    for i, p in enumerate(_list(net, "priorities", f"{f}.priorities")):
        pf = f"{f}.priorities[{i}]"
        name = _str(p, "name", f"{pf}.name")
        prio = _int(p, "priority", f"{pf}.priority", minimum=0)
        if name is None or prio is None or " " in name:
            raise InvalidArgument(f"{pf}: needs an interface name and a priority")
        out.append(Write("net_prio", pf, [("net_prio.ifpriomap", f"{name} {prio}")]))
    return out


def _rdma(res: Mapping[str, Any]) -> list[Write]:
    f = f"{_P}.rdma"
    out: list[Write] = []
    for dev, lim in _section(res, "rdma").items():
        df = f"{f}.{dev}"
        if not isinstance(lim, Mapping) or not re.fullmatch(r"[\w.:-]+", dev):
            raise InvalidArgument(f"{df}: must be an object under a device name")
        parts = []
        for key, name in (("hcaHandles", "hca_handle"), ("hcaObjects", "hca_object")):
            n = _int(lim, key, f"{df}.{key}", minimum=0)
            if n is not None:
                parts.append(f"{name}={n}")
        if parts:
            out.append(Write("rdma", df, [("rdma.max", f"{dev} {' '.join(parts)}")]))
    return out


# ---- v2 --------------------------------------------------------------------------------

def v2_writes(res: Mapping[str, Any], read: Read) -> list[Write]:
    """The cgroup2 writes for ``res``, in order (devices excluded: they are eBPF).

    Controllers named: memory, cpu, cpuset, pids, io, hugetlb, rdma, and the
    first word of each ``unified`` key ("" for ``cgroup.*``). Settings with no
    cgroup2 equivalent (swappiness, disableOOMKiller, real-time CPU, blkio leaf
    weights, network) come back as writes without candidates, so applying them
    is ``Unavailable`` with a message that says why.
    """
    out: list[Write] = []
    out += _v2_memory(_section(res, "memory"), read)
    out += _v2_cpu(_section(res, "cpu"), read)
    out += _pids(_section(res, "pids"))
    out += _v2_io(_section(res, "blockIO"))
    out += _hugetlb(res, "max")
    net = _section(res, "network")
    if net.get("classID") is not None or net.get("priorities"):
        out.append(Write("net_cls", f"{_P}.network", [],
                         f"{_P}.network: net_cls/net_prio do not exist on cgroup v2 "
                         "(use an eBPF or nftables classifier instead)"))
    out += _rdma(res)
    out += unified_writes(res)
    device_rules(res)  # validated here too, applied by the manager
    return out


def unified_writes(res: Mapping[str, Any]) -> list[Write]:
    """``linux.resources.unified``: raw cgroup2 file → value pairs, written as given."""
    f = f"{_P}.unified"
    raw = res.get("unified")
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"{f}: must be an object of file name to value")
    out: list[Write] = []
    for key, value in raw.items():
        kf = f"{f}.{key}"
        if not isinstance(key, str) or not re.fullmatch(_UNIFIED_KEY, key) or ".." in key:
            raise InvalidArgument(f"{kf}: not a cgroup2 file name like 'memory.high'")
        if not isinstance(value, str):
            raise InvalidArgument(f"{kf}: the value must be a string")
        ctrl = key.split(".", 1)[0]
        out.append(Write("" if ctrl == "cgroup" else ctrl, kf, [(key, value)],
                         f"{kf}: there is no such file in this cgroup"))
    return out


def _max(v: int) -> str:
    return "max" if v < 0 else str(v)


def _v2_memory(mem: Mapping[str, Any], read: Read) -> list[Write]:
    f = f"{_P}.memory"
    limit = _set(_int(mem, "limit", f"{f}.limit", minimum=-1))
    swap = _set(_int(mem, "swap", f"{f}.swap", minimum=-1))
    reservation = _set(_int(mem, "reservation", f"{f}.reservation", minimum=-1))
    swappiness = _int(mem, "swappiness", f"{f}.swappiness", minimum=-1, maximum=100)
    out: list[Write] = []
    _check_before_update(mem, limit, read, "memory.current")
    if limit is not None:
        out.append(Write("memory", f"{f}.limit", [("memory.max", _max(limit))]))
    if swap is not None:
        if swap == -1:
            value = "max"
        elif limit is None or limit < 0:
            raise InvalidArgument(f"{f}.swap: on cgroup v2 swap needs memory.limit as well "
                                  "(memory.swap.max is swap minus limit)")
        elif swap < limit:
            raise InvalidArgument(f"{f}.swap: {swap} is below memory.limit {limit} "
                                  "(swap is the memory+swap total)")
        else:
            value = str(swap - limit)
        out.append(Write("memory", f"{f}.swap", [("memory.swap.max", value)],
                         f"{f}.swap: memory.swap.max is missing (no swap accounting on "
                         "this kernel); leave swap unset"))
    if reservation is not None:
        out.append(Write("memory", f"{f}.reservation", [("memory.low", _max(reservation))]))
    if swappiness is not None and swappiness >= 0:
        out.append(Write("memory", f"{f}.swappiness", [],
                         f"{f}.swappiness: cgroup v2 has no per-cgroup swappiness"))
    if mem.get("disableOOMKiller"):
        out.append(Write("memory", f"{f}.disableOOMKiller", [],
                         f"{f}.disableOOMKiller: cgroup v2 cannot disable the OOM killer"))
    return out


def _v2_cpu(cpu: Mapping[str, Any], read: Read) -> list[Write]:
    f = f"{_P}.cpu"
    out: list[Write] = []
    shares = _set(_int(cpu, "shares", f"{f}.shares", minimum=0))
    quota = _set(_int(cpu, "quota", f"{f}.quota", minimum=-1))
    period = _set(_int(cpu, "period", f"{f}.period", minimum=0))
    burst = _int(cpu, "burst", f"{f}.burst", minimum=0)
    idle = _int(cpu, "idle", f"{f}.idle", minimum=0, maximum=1)
    if shares is not None:
        out.append(Write("cpu", f"{f}.shares", [("cpu.weight", str(shares_to_weight(shares)))]))
    if quota is not None or period is not None:
        if quota is None:
            # cpu.max takes "quota period" or "quota": keep the quota in force.
            cur = read("cpu", "cpu.max")
            q = cur.split()[0] if cur and cur.split() else "max"
        else:
            q = _max(quota)
        value = q if period is None else f"{q} {period}"
        out.append(Write("cpu", f"{f}.quota" if quota is not None else f"{f}.period",
                         [("cpu.max", value)]))
    if burst is not None:
        out.append(Write("cpu", f"{f}.burst", [("cpu.max.burst", str(burst))]))
    if _set(cpu.get("realtimeRuntime")) or _set(cpu.get("realtimePeriod")):
        out.append(Write("cpu", f"{f}.realtimeRuntime", [],
                         f"{f}.realtimeRuntime/realtimePeriod: cgroup v2 has no real-time "
                         "CPU bandwidth control"))
    if idle is not None:
        out.append(Write("cpu", f"{f}.idle", [("cpu.idle", str(idle))]))
    out += _cpuset(cpu)
    return out


def _v2_io(bio: Mapping[str, Any]) -> list[Write]:
    f = f"{_P}.blockIO"
    out: list[Write] = []
    weight = _weight(bio, "weight", f"{f}.weight")
    leaf = _weight(bio, "leafWeight", f"{f}.leafWeight")
    # io.bfq.weight takes blkio's own 1..1000 scale; io.weight has 1..10000.
    if weight is not None:
        out.append(Write("io", f"{f}.weight",
                         [("io.bfq.weight", str(weight)),
                          ("io.weight", f"default {blkio_weight_to_io_weight(weight)}")]))
    if leaf is not None:
        out.append(Write("io", f"{f}.leafWeight", [],
                         f"{f}.leafWeight: cgroup v2 has no leaf weights"))
    for i, d in enumerate(_list(bio, "weightDevice", f"{f}.weightDevice")):
        df = f"{f}.weightDevice[{i}]"
        dev = _devnum(d, df)
        w = _int(d, "weight", f"{df}.weight", minimum=10, maximum=1000)
        if d.get("leafWeight") is not None:
            out.append(Write("io", f"{df}.leafWeight", [],
                             f"{df}.leafWeight: cgroup v2 has no leaf weights"))
        if w is not None:
            out.append(Write("io", f"{df}.weight",
                             [("io.bfq.weight", f"{dev} {w}"),
                              ("io.weight", f"{dev} {blkio_weight_to_io_weight(w)}")]))
    for key, _, name in _THROTTLE:
        for i, d in enumerate(_list(bio, key, f"{f}.{key}")):
            df = f"{f}.{key}[{i}]"
            dev = _devnum(d, df)
            rate = _int(d, "rate", f"{df}.rate", minimum=0) or 0
            # v1 writes 0 to lift a limit; io.max spells that "max".
            out.append(Write("io", df, [("io.max", f"{dev} {name}={rate or 'max'}")]))
    return out

