"""``docker stats`` and ``docker top``: the runtime's figures in Docker's shapes.

Stats: :meth:`OCIRuntime.stats` returns runc's ``events --stats`` data (see
``ketch.runtime.cgroups.stats``); :func:`docker_stats` turns one such sample,
plus the previous converted sample, into Docker's ``ContainerStatsResponse``::

    raw sample ─┬─ cpu      ─▶ cpu_stats {cpu_usage, system_cpu_usage, online_cpus,
                │                          throttling_data}
    prev result ┴────────────▶ precpu_stats, preread
                ├─ memory   ─▶ memory_stats {usage, max_usage¹, failcnt¹, stats, limit}
                ├─ pids     ─▶ pids_stats {current, limit}
                └─ blkio    ─▶ blkio_stats {io_service_bytes_recursive, io_serviced_recursive}
    ¹ cgroup v1 only, as in Docker (cgroup2 keeps no such figures per container)

Clients compute CPU % as ``Δtotal_usage / Δsystem_cpu_usage * online_cpus * 100``,
so ``system_cpu_usage`` must be the host's total CPU time in ns, read from
``/proc/stat`` at the same moment as the sample (:func:`system_cpu_usage`).

Top: :func:`top` runs the host's ``ps`` and keeps the rows of the container's pids.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any, Final

from ketch.errors import InvalidArgument

__all__ = ["ZERO_TIME", "docker_stats", "machine_memory", "system_cpu_usage", "top"]

ZERO_TIME: Final = "0001-01-01T00:00:00Z"  # Go's zero time.Time, which Docker sends for "none"

# memory.stat keys only cgroup v1 has; cgroup2's has anon/file/... instead.
_V1_MEMORY_KEYS: Final = ("hierarchical_memory_limit", "total_rss", "rss")


def system_cpu_usage(stat_path: str = "/proc/stat") -> int:
    """Host CPU time in ns since boot, as Docker reports it.

    The sum of user, nice, system, idle, iowait, irq and softirq of the
    ``cpu`` line (clock ticks) converted to ns. 0 if the file cannot be read.
    """
    try:
        with open(stat_path) as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] == "cpu":
                    ticks = sum(int(v) for v in fields[1:8])
                    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        pass
    return 0


def machine_memory() -> int:
    """Host RAM in bytes (0 if unknown): the memory "limit" of a container without one."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _rfc3339_nano(ns: int) -> str:
    """Go's time.Time JSON form in UTC: fraction with trailing zeros trimmed."""
    base = dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{ns % 1_000_000_000:09d}".rstrip("0")
    return f"{base}.{frac}Z" if frac else f"{base}Z"


def _is_v1(raw: Mapping[str, Any]) -> bool:
    cpu_usage = raw.get("cpu", {}).get("usage", {})
    memory_raw = raw.get("memory", {}).get("raw", {})
    return bool(cpu_usage.get("percpu")) or any(k in memory_raw for k in _V1_MEMORY_KEYS)


def _empty_cpu() -> dict[str, Any]:
    return {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}


def _cpu_stats(raw: Mapping[str, Any], system_ns: int, num_cpus: int) -> dict[str, Any]:
    usage = raw.get("cpu", {}).get("usage", {})
    thr = raw.get("cpu", {}).get("throttling", {})
    cpu_usage: dict[str, Any] = {"total_usage": usage.get("total", 0),
                                 "usage_in_kernelmode": usage.get("kernel", 0),
                                 "usage_in_usermode": usage.get("user", 0)}
    if usage.get("percpu"):
        cpu_usage["percpu_usage"] = list(usage["percpu"])
    return {"cpu_usage": cpu_usage, "system_cpu_usage": system_ns, "online_cpus": num_cpus,
            "throttling_data": {"periods": thr.get("periods", 0),
                                "throttled_periods": thr.get("throttledPeriods", 0),
                                "throttled_time": thr.get("throttledTime", 0)}}


def _memory_stats(raw: Mapping[str, Any], v1: bool, host_memory: int) -> dict[str, Any]:
    mem = raw.get("memory", {})
    usage = mem.get("usage", {})
    stats = dict(mem.get("raw", {}))
    if not stats and not usage.get("usage"):
        return {}  # no memory controller
    limit = usage.get("limit", 0)
    if host_memory and (not limit or limit > host_memory):
        limit = host_memory  # "unlimited" shows as the host's RAM, as in Docker
    out: dict[str, Any] = {"usage": usage.get("usage", 0)}
    if v1:
        out["max_usage"] = usage.get("max", 0)
    out["stats"] = stats
    if v1 and usage.get("failcnt"):
        out["failcnt"] = usage["failcnt"]
    out["limit"] = limit
    return out


def _blkio_stats(raw: Mapping[str, Any], v1: bool) -> dict[str, Any]:
    blkio = raw.get("blkio", {})

    def entries(key: str) -> list[dict[str, Any]]:
        # Docker passes v1's op names through ("Read", "Total") and writes v2's lower-case.
        return [{"major": e["major"], "minor": e["minor"],
                 "op": e["op"] if v1 else e["op"].lower(), "value": e["value"]}
                for e in blkio.get(key, [])]

    out: dict[str, Any] = {
        "io_service_bytes_recursive": entries("ioServiceBytesRecursive"),
        "io_serviced_recursive": entries("ioServicedRecursive"),
    }
    for key in ("io_queue_recursive", "io_service_time_recursive", "io_wait_time_recursive",
                "io_merged_recursive", "io_time_recursive", "sectors_recursive"):
        out[key] = None  # ketch's runtime does not collect these (Docker's cgroup2 neither)
    if not v1:
        for key in ("io_service_bytes_recursive", "io_serviced_recursive"):
            out[key] = out[key] or None
    return out


def _pids_stats(raw: Mapping[str, Any], pids_limit: int | None) -> dict[str, int]:
    pids = raw.get("pids", {})
    out: dict[str, int] = {}
    if pids.get("current"):
        out["current"] = pids["current"]
    limit = pids.get("limit") or (pids_limit if pids_limit and pids_limit > 0 else 0)
    if limit:
        out["limit"] = limit
    return out


def docker_stats(raw: Mapping[str, Any], prev: Mapping[str, Any] | None, *, name: str,
                 id: str, num_cpus: int, pids_limit: int | None = None,
                 read_time: int, system_cpu: int | None = None,
                 host_memory: int | None = None,
                 networks: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One ``ContainerStatsResponse`` from a runtime stats sample.

    ``raw``: the ``OCIRuntime.stats`` document (cgroup v1 or v2, told apart by
    its content). ``prev``: this function's previous result for the same
    container, or None for the first sample (``precpu_stats`` is then zeros and
    ``preread`` Go's zero time). ``name`` is Docker's (``/web``); ``num_cpus``
    the host's online CPUs; ``pids_limit`` the container's configured limit,
    used when the runtime reports none; ``read_time`` the sample's unix ns.
    ``system_cpu`` defaults to :func:`system_cpu_usage` now and ``host_memory``
    to :func:`machine_memory` (the limit shown for an unlimited container).
    ``networks`` (Docker's per-interface map) is left out when None, as Docker
    does for network modes none and host.
    """
    v1 = _is_v1(raw)
    system_ns = system_cpu_usage() if system_cpu is None else system_cpu
    mem_total = machine_memory() if host_memory is None else host_memory
    out: dict[str, Any] = {
        "name": name, "id": id,
        "read": _rfc3339_nano(read_time),
        "preread": prev.get("read", ZERO_TIME) if prev else ZERO_TIME,
        "pids_stats": _pids_stats(raw, pids_limit),
        "blkio_stats": _blkio_stats(raw, v1),
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": _cpu_stats(raw, system_ns, num_cpus),
        "precpu_stats": dict(prev["cpu_stats"]) if prev and "cpu_stats" in prev
        else _empty_cpu(),
        "memory_stats": _memory_stats(raw, v1, mem_total),
    }
    if networks is not None:
        out["networks"] = dict(networks)
    return out


# ---- top --------------------------------------------------------------------------------

_PID_ASSIGN = re.compile(r"\s+([^\s]*)=\s*(PID[^\s]*)")


def _ps(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["ps", *args], capture_output=True, check=False, timeout=30,
                          env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C"})


def top(pids: Sequence[int], ps_args: str = "-ef") -> dict[str, Any]:
    """``GET /containers/{id}/top``: the host's ``ps <ps_args>`` rows of ``pids``.

    ``pids`` are host pids (``OCIRuntime.ps``); ``ps_args`` defaults to ``-ef``.
    The header line gives ``Titles``; a row is kept when its PID column is in
    ``pids``, and words past the last title are joined into the last column
    (the command line). Blocking (runs ``ps``): call it from a worker thread.

    Errors are InvalidArgument: renaming a column to ``PID`` (``-o x=PID``),
    ``ps`` failing on the arguments, or output without a PID column
    (``Couldn't find PID field in ps output``).
    """
    args = ps_args.split() or ["-ef"]
    for key, value in _PID_ASSIGN.findall(" " + ps_args):
        if key != "pid":
            raise InvalidArgument(f'specifying "{key}={value}" is not allowed')
    want = set(pids)
    proc = None
    if want:  # ask ps for just these pids (-q); some options refuse -q, then list everything
        proc = _ps([*args, "-q", ",".join(str(p) for p in sorted(want))])
    if proc is None or proc.returncode != 0:
        proc = _ps(args)
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise InvalidArgument("Error running ps: " + (detail[0] if detail else
                                                      f"exit status {proc.returncode}"))
    return parse_ps_output(proc.stdout.decode(errors="replace"), want)


def parse_ps_output(text: str, pids: set[int]) -> dict[str, Any]:
    """``Titles`` and the ``Processes`` rows whose PID is in ``pids`` (see :func:`top`)."""
    lines = text.splitlines()
    titles = lines[0].split() if lines else []
    try:
        pid_col = titles.index("PID")
    except ValueError:
        raise InvalidArgument("Couldn't find PID field in ps output") from None
    rows: list[list[str]] = []
    for line in lines[1:]:
        fields = line.split()
        if len(fields) <= pid_col:
            continue
        try:
            pid = int(fields[pid_col])
        except ValueError:
            continue
        if pid not in pids:
            continue
        if len(fields) > len(titles):
            fields = [*fields[:len(titles) - 1], " ".join(fields[len(titles) - 1:])]
        rows.append(fields)
    return {"Titles": titles, "Processes": rows}
