"""cgroup statistics in the shape of runc's ``events --stats`` ``data`` object.

::

    cpu      usage {total, percpu, kernel, user} (ns)
             throttling {periods, throttledPeriods, throttledTime (ns)}
    memory   usage / swap / kernel {limit, usage, max, failcnt}, cache, raw {memory.stat}
    pids     {current, limit}          limit 0 = no limit
    blkio    ioServiceBytesRecursive / ioServicedRecursive [{major, minor, op, value}]
    hugetlb  {"2MB": {usage, max, failcnt}, ...}

Every key is always present (0 or empty when the controller is not there), so
readers need no existence checks. v2's ``memory.swap`` is reported as memory+swap,
like v1's memsw, so the numbers mean the same on both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ketch.sys.cgroupfs import (
    hugepage_sizes,
    read_flat_keyed,
    read_int,
    read_nested_keyed,
    read_text,
)

__all__ = ["empty_stats", "hugetlb_v1", "hugetlb_v2", "oom_kills_v1", "oom_kills_v2",
           "v1_stats", "v2_stats"]

_UNLIMITED = (1 << 64) - 1  # what runc reports for "max"


def _int(path: str, default: int = 0) -> int:
    try:
        v = read_int(path)
    except OSError:
        return default
    return _UNLIMITED if v == -1 else v


def _flat(path: str) -> dict[str, int]:
    try:
        return read_flat_keyed(path)
    except OSError:
        return {}


def _entry(limit: int = 0, usage: int = 0, max_: int = 0, failcnt: int = 0) -> dict[str, int]:
    return {"limit": limit, "usage": usage, "max": max_, "failcnt": failcnt}


def empty_stats() -> dict[str, Any]:
    """The stats object with every number zero."""
    return {
        "cpu": {"usage": {"total": 0, "percpu": [], "kernel": 0, "user": 0},
                "throttling": {"periods": 0, "throttledPeriods": 0, "throttledTime": 0}},
        "memory": {"usage": _entry(), "swap": _entry(), "kernel": _entry(), "cache": 0,
                   "raw": {}},
        "pids": {"current": 0, "limit": 0},
        "blkio": {"ioServiceBytesRecursive": [], "ioServicedRecursive": []},
        "hugetlb": {},
    }


# ---- v1 --------------------------------------------------------------------------------

def v1_stats(dirs: Mapping[str, str]) -> dict[str, Any]:
    """Stats from v1 hierarchies; ``dirs`` maps a controller to the cgroup's directory."""
    s = empty_stats()
    acct = dirs.get("cpuacct")
    if acct is not None:
        usage = s["cpu"]["usage"]
        usage["total"] = _int(f"{acct}/cpuacct.usage")
        try:
            usage["percpu"] = [int(x) for x in read_text(f"{acct}/cpuacct.usage_percpu").split()]
        except OSError:
            pass
        # cpuacct.stat counts USER_HZ ticks.
        ns_per_tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
        st = _flat(f"{acct}/cpuacct.stat")
        usage["user"] = st.get("user", 0) * ns_per_tick
        usage["kernel"] = st.get("system", 0) * ns_per_tick
    cpu = dirs.get("cpu")
    if cpu is not None:
        st = _flat(f"{cpu}/cpu.stat")
        s["cpu"]["throttling"] = {"periods": st.get("nr_periods", 0),
                                  "throttledPeriods": st.get("nr_throttled", 0),
                                  "throttledTime": st.get("throttled_time", 0)}
    mem = dirs.get("memory")
    if mem is not None:
        m = s["memory"]
        for key, prefix in (("usage", "memory"), ("swap", "memory.memsw"),
                            ("kernel", "memory.kmem")):
            m[key] = _entry(_int(f"{mem}/{prefix}.limit_in_bytes"),
                            _int(f"{mem}/{prefix}.usage_in_bytes"),
                            _int(f"{mem}/{prefix}.max_usage_in_bytes"),
                            _int(f"{mem}/{prefix}.failcnt"))
        raw = _flat(f"{mem}/memory.stat")
        m["raw"] = raw
        m["cache"] = raw.get("total_cache", raw.get("cache", 0))
    pids = dirs.get("pids")
    if pids is not None:
        s["pids"] = _pids(pids)
    blkio = dirs.get("blkio")
    if blkio is not None:
        for key, name in (("ioServiceBytesRecursive", "io_service_bytes_recursive"),
                          ("ioServicedRecursive", "io_serviced_recursive")):
            # bfq accounts only devices it schedules; the throttle layer sees all I/O.
            entries = _blkio_entries(f"{blkio}/blkio.bfq.{name}")
            s["blkio"][key] = entries or _blkio_entries(f"{blkio}/blkio.throttle.{name}")
    hugetlb = dirs.get("hugetlb")
    if hugetlb is not None:
        s["hugetlb"] = hugetlb_v1(hugetlb)
    return s


def _pids(d: str) -> dict[str, int]:
    limit = _int(f"{d}/pids.max")
    return {"current": _int(f"{d}/pids.current"), "limit": 0 if limit == _UNLIMITED else limit}


def _blkio_entries(path: str) -> list[dict[str, Any]]:
    try:
        text = read_text(path)
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) != 3 or ":" not in f[0]:
            continue  # the "Total N" line
        major, _, minor = f[0].partition(":")
        out.append({"major": int(major), "minor": int(minor), "op": f[1], "value": int(f[2])})
    return out


def hugetlb_v1(d: str) -> dict[str, dict[str, int]]:
    """hugetlb stats of a v1 cgroup directory, by page size."""
    return {size: {"usage": _int(f"{d}/hugetlb.{size}.usage_in_bytes"),
                   "max": _int(f"{d}/hugetlb.{size}.max_usage_in_bytes"),
                   "failcnt": _int(f"{d}/hugetlb.{size}.failcnt")}
            for size in hugepage_sizes()}


def oom_kills_v1(memory_dir: str) -> int:
    """OOM kills in a v1 memory cgroup (memory.oom_control's ``oom_kill``)."""
    return _flat(f"{memory_dir}/memory.oom_control").get("oom_kill", 0)


# ---- v2 --------------------------------------------------------------------------------

def v2_stats(d: str) -> dict[str, Any]:
    """Stats from one cgroup2 directory."""
    s = empty_stats()
    st = _flat(f"{d}/cpu.stat")
    s["cpu"]["usage"].update(total=st.get("usage_usec", 0) * 1000,
                             user=st.get("user_usec", 0) * 1000,
                             kernel=st.get("system_usec", 0) * 1000)
    s["cpu"]["throttling"] = {"periods": st.get("nr_periods", 0),
                              "throttledPeriods": st.get("nr_throttled", 0),
                              "throttledTime": st.get("throttled_usec", 0) * 1000}
    if os.path.exists(f"{d}/memory.current"):
        m = s["memory"]
        usage = _int(f"{d}/memory.current")
        limit = _int(f"{d}/memory.max", _UNLIMITED)
        events = _flat(f"{d}/memory.events")
        m["usage"] = _entry(limit, usage, _int(f"{d}/memory.peak"), events.get("max", 0))
        swap_usage = _int(f"{d}/memory.swap.current")
        swap_limit = _int(f"{d}/memory.swap.max", _UNLIMITED)
        both = _UNLIMITED if _UNLIMITED in (swap_limit, limit) else swap_limit + limit
        m["swap"] = _entry(both, usage + swap_usage, 0,
                           _flat(f"{d}/memory.swap.events").get("max", 0))
        raw = _flat(f"{d}/memory.stat")
        m["raw"] = raw
        m["cache"] = raw.get("file", 0)
    if os.path.exists(f"{d}/pids.current"):
        s["pids"] = _pids(d)
    try:
        io = read_nested_keyed(f"{d}/io.stat")
    except OSError:
        io = {}
    for dev, fields in io.items():
        major, _, minor = dev.partition(":")
        for key, rd, wr in (("ioServiceBytesRecursive", "rbytes", "wbytes"),
                            ("ioServicedRecursive", "rios", "wios")):
            for op, name in (("Read", rd), ("Write", wr)):
                s["blkio"][key].append({"major": int(major), "minor": int(minor), "op": op,
                                        "value": fields.get(name, 0)})
    s["hugetlb"] = hugetlb_v2(d)
    return s


def hugetlb_v2(d: str) -> dict[str, dict[str, int]]:
    """hugetlb stats of a cgroup2 directory, by page size (empty without the controller).

    ``max`` is the peak usage on v1; cgroup2 keeps no peak for hugetlb, so it is 0.
    """
    if not os.path.exists(f"{d}/hugetlb.{(hugepage_sizes() or ['2MB'])[0]}.current"):
        return {}
    return {size: {"usage": _int(f"{d}/hugetlb.{size}.current"),
                   "max": 0,
                   "failcnt": _flat(f"{d}/hugetlb.{size}.events").get("max", 0)}
            for size in hugepage_sizes()}


def oom_kills_v2(d: str) -> int:
    """OOM kills in a cgroup2 directory and below (memory.events ``oom_kill``)."""
    return _flat(f"{d}/memory.events").get("oom_kill", 0)
