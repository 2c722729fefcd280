"""docker stats conversion on runtime stats documents, and ps parsing for docker top.

The v1 documents were recorded from ketch's runtime library (``Runtime.stats``)
on a cgroup v1 host, one second apart, with a busy loop in a busybox container
(one core busy of two). The v2 documents are produced by ketch's own
``v2_stats`` from cgroup2 control files written to a temp dir.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import pytest

from ketch.engine.stats import ZERO_TIME, docker_stats, parse_ps_output, system_cpu_usage, top
from ketch.errors import InvalidArgument
from ketch.runtime.cgroups import stats as cgstats

GiB = 1 << 30

# Recorded by ``Runtime.stats`` (t1/t2: unix ns of the samples; sys1/sys2: host
# CPU time in ns from /proc/stat at the same moments, the way Docker reads it).
RECORDED_V1: dict[str, Any] = (
    {'a': {'blkio': {'ioServiceBytesRecursive': [], 'ioServicedRecursive': []},
           'cpu': {'throttling': {'periods': 0, 'throttledPeriods': 0, 'throttledTime': 0},
                   'usage': {'kernel': 10000000,
                             'percpu': [501986760, 7649492],
                             'total': 509636252,
                             'user': 490000000}},
           'hugetlb': {'1GB': {'failcnt': 0, 'max': 0, 'usage': 0},
                       '2MB': {'failcnt': 0, 'max': 0, 'usage': 0}},
           'memory': {'cache': 0,
                      'kernel': {'failcnt': 0,
                                 'limit': 9223372036854771712,
                                 'max': 401408,
                                 'usage': 245760},
                      'raw': {'active_anon': 4096,
                              'active_file': 0,
                              'cache': 0,
                              'dirty': 0,
                              'hierarchical_memory_limit': 9223372036854771712,
                              'hierarchical_memsw_limit': 9223372036854771712,
                              'inactive_anon': 8192,
                              'inactive_file': 0,
                              'mapped_file': 0,
                              'pgfault': 763,
                              'pgmajfault': 0,
                              'pgpgin': 454,
                              'pgpgout': 439,
                              'rss': 61440,
                              'rss_huge': 0,
                              'shmem': 0,
                              'swap': 0,
                              'swapcached': 0,
                              'total_active_anon': 4096,
                              'total_active_file': 0,
                              'total_cache': 0,
                              'total_dirty': 0,
                              'total_inactive_anon': 8192,
                              'total_inactive_file': 0,
                              'total_mapped_file': 0,
                              'total_pgfault': 763,
                              'total_pgmajfault': 0,
                              'total_pgpgin': 454,
                              'total_pgpgout': 439,
                              'total_rss': 61440,
                              'total_rss_huge': 0,
                              'total_shmem': 0,
                              'total_swap': 0,
                              'total_swapcached': 0,
                              'total_unevictable': 0,
                              'total_workingset_refault_anon': 0,
                              'total_workingset_refault_file': 0,
                              'total_writeback': 0,
                              'unevictable': 0,
                              'workingset_refault_anon': 0,
                              'workingset_refault_file': 0,
                              'writeback': 0},
                      'swap': {'failcnt': 0,
                               'limit': 9223372036854771712,
                               'max': 1970176,
                               'usage': 557056},
                      'usage': {'failcnt': 0,
                                'limit': 9223372036854771712,
                                'max': 1970176,
                                'usage': 557056}},
           'pids': {'current': 1, 'limit': 0}},
     'b': {'blkio': {'ioServiceBytesRecursive': [], 'ioServicedRecursive': []},
           'cpu': {'throttling': {'periods': 0, 'throttledPeriods': 0, 'throttledTime': 0},
                   'usage': {'kernel': 10000000,
                             'percpu': [1505041855, 7649492],
                             'total': 1512691347,
                             'user': 1500000000}},
           'hugetlb': {'1GB': {'failcnt': 0, 'max': 0, 'usage': 0},
                       '2MB': {'failcnt': 0, 'max': 0, 'usage': 0}},
           'memory': {'cache': 0,
                      'kernel': {'failcnt': 0,
                                 'limit': 9223372036854771712,
                                 'max': 401408,
                                 'usage': 245760},
                      'raw': {'active_anon': 4096,
                              'active_file': 0,
                              'cache': 0,
                              'dirty': 0,
                              'hierarchical_memory_limit': 9223372036854771712,
                              'hierarchical_memsw_limit': 9223372036854771712,
                              'inactive_anon': 8192,
                              'inactive_file': 0,
                              'mapped_file': 0,
                              'pgfault': 763,
                              'pgmajfault': 0,
                              'pgpgin': 454,
                              'pgpgout': 439,
                              'rss': 61440,
                              'rss_huge': 0,
                              'shmem': 0,
                              'swap': 0,
                              'swapcached': 0,
                              'total_active_anon': 4096,
                              'total_active_file': 0,
                              'total_cache': 0,
                              'total_dirty': 0,
                              'total_inactive_anon': 8192,
                              'total_inactive_file': 0,
                              'total_mapped_file': 0,
                              'total_pgfault': 763,
                              'total_pgmajfault': 0,
                              'total_pgpgin': 454,
                              'total_pgpgout': 439,
                              'total_rss': 61440,
                              'total_rss_huge': 0,
                              'total_shmem': 0,
                              'total_swap': 0,
                              'total_swapcached': 0,
                              'total_unevictable': 0,
                              'total_workingset_refault_anon': 0,
                              'total_workingset_refault_file': 0,
                              'total_writeback': 0,
                              'unevictable': 0,
                              'workingset_refault_anon': 0,
                              'workingset_refault_file': 0,
                              'writeback': 0},
                      'swap': {'failcnt': 0,
                               'limit': 9223372036854771712,
                               'max': 1970176,
                               'usage': 557056},
                      'usage': {'failcnt': 0,
                                'limit': 9223372036854771712,
                                'max': 1970176,
                                'usage': 557056}},
           'pids': {'current': 1, 'limit': 0}},
     'sys1': 995880000000,
     'sys2': 997890000000,
     't1': 1796024180678262980,
     't2': 1796024181681160663}
)


def cpu_percent(stats: dict[str, Any]) -> float:
    """What the docker CLI shows as CPU % (its calculateCPUPercentUnix)."""
    cpu, pre = stats["cpu_stats"], stats["precpu_stats"]
    cpu_delta = cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
    system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    online = cpu.get("online_cpus") or len(cpu["cpu_usage"].get("percpu_usage") or [])
    if cpu_delta > 0 and system_delta > 0:
        return float(cpu_delta / system_delta * online * 100.0)
    return 0.0


def mem_usage(stats: dict[str, Any]) -> int:
    """What the docker CLI shows as MEM USAGE (cache excluded)."""
    mem = stats["memory_stats"]
    inactive = mem["stats"].get("total_inactive_file", mem["stats"].get("inactive_file", 0))
    return int(mem["usage"] - inactive if inactive < mem["usage"] else mem["usage"])


def convert_pair(a: dict[str, Any], b: dict[str, Any], t1: int, t2: int, sys1: int,
                 sys2: int, **kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    common: dict[str, Any] = {"name": "/busy", "id": "c" * 64, "num_cpus": 2,
                              "host_memory": 2 * GiB, **kw}
    first = docker_stats(a, None, read_time=t1, system_cpu=sys1, **common)
    second = docker_stats(b, first, read_time=t2, system_cpu=sys2, **common)
    return first, second


def test_v1_recorded_conversion() -> None:
    r = RECORDED_V1
    first, second = convert_pair(r["a"], r["b"], r["t1"], r["t2"], r["sys1"], r["sys2"])
    assert first["name"] == "/busy" and first["id"] == "c" * 64
    assert first["preread"] == ZERO_TIME
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", first["read"])
    assert second["preread"] == first["read"] != second["read"]
    assert first["precpu_stats"]["cpu_usage"]["total_usage"] == 0
    assert second["precpu_stats"] == first["cpu_stats"]

    cpu = second["cpu_stats"]
    assert cpu["cpu_usage"]["total_usage"] == r["b"]["cpu"]["usage"]["total"]
    assert cpu["cpu_usage"]["percpu_usage"] == r["b"]["cpu"]["usage"]["percpu"]
    assert cpu["cpu_usage"]["usage_in_usermode"] == r["b"]["cpu"]["usage"]["user"]
    assert cpu["cpu_usage"]["usage_in_kernelmode"] == r["b"]["cpu"]["usage"]["kernel"]
    assert cpu["system_cpu_usage"] == r["sys2"] and cpu["online_cpus"] == 2
    assert cpu["throttling_data"] == {"periods": 0, "throttled_periods": 0, "throttled_time": 0}
    # one core of two busy for a second: the CLI shows about 100 %
    assert 90 < cpu_percent(second) < 110

    mem = second["memory_stats"]
    assert mem["usage"] == r["b"]["memory"]["usage"]["usage"] > 0
    assert mem["max_usage"] == r["b"]["memory"]["usage"]["max"]
    assert mem["stats"]["total_rss"] == r["b"]["memory"]["raw"]["total_rss"]
    assert mem["limit"] == 2 * GiB  # unlimited shows as the host's memory
    assert 0 < mem_usage(second) <= mem["usage"]
    assert second["pids_stats"] == {"current": 1}
    assert second["blkio_stats"]["io_service_bytes_recursive"] == []
    assert second["blkio_stats"]["io_queue_recursive"] is None
    assert second["num_procs"] == 0 and second["storage_stats"] == {}
    assert "networks" not in second


def test_limits_pids_and_networks() -> None:
    raw = copy.deepcopy(RECORDED_V1["b"])
    raw["memory"]["usage"]["limit"] = 64 << 20
    out = docker_stats(raw, None, name="/x", id="x", num_cpus=2, pids_limit=100,
                       read_time=1_700_000_000_000_000_000, system_cpu=1, host_memory=2 * GiB,
                       networks={"eth0": {"rx_bytes": 1}})
    assert out["memory_stats"]["limit"] == 64 << 20
    assert out["pids_stats"] == {"current": 1, "limit": 100}  # runtime said "no limit"
    assert out["read"] == "2023-11-14T22:13:20Z"
    assert out["networks"] == {"eth0": {"rx_bytes": 1}}
    raw["pids"]["limit"] = 50
    assert docker_stats(raw, None, name="/x", id="x", num_cpus=2, pids_limit=100,
                        read_time=1, system_cpu=1)["pids_stats"]["limit"] == 50


def test_blkio_v1_ops_kept() -> None:
    raw = copy.deepcopy(RECORDED_V1["b"])
    raw["blkio"]["ioServiceBytesRecursive"] = [
        {"major": 8, "minor": 0, "op": "Read", "value": 4096},
        {"major": 8, "minor": 0, "op": "Total", "value": 4096}]
    out = docker_stats(raw, None, name="/x", id="x", num_cpus=2, read_time=1, system_cpu=1)
    assert out["blkio_stats"]["io_service_bytes_recursive"] == [
        {"major": 8, "minor": 0, "op": "Read", "value": 4096},
        {"major": 8, "minor": 0, "op": "Total", "value": 4096}]


V2_MEMORY_STAT = """anon 2961408
file 1134592
kernel 372736
kernel_stack 32768
pagetables 86016
sock 0
shmem 0
file_mapped 1056768
file_dirty 0
file_writeback 0
anon_thp 0
inactive_anon 2949120
active_anon 12288
inactive_file 778240
active_file 356352
unevictable 0
slab_reclaimable 96128
slab_unreclaimable 115856
slab 211984
pgfault 2346
pgmajfault 11
"""


def v2_files(d: Path, usage_usec: int, memory_max: str = "max") -> str:
    d.mkdir(parents=True, exist_ok=True)
    files = {
        "cpu.stat": f"usage_usec {usage_usec}\nuser_usec {usage_usec * 3 // 4}\n"
                    f"system_usec {usage_usec // 4}\nnr_periods 10\nnr_throttled 2\n"
                    "throttled_usec 1500\n",
        "memory.current": "4644864\n", "memory.max": f"{memory_max}\n",
        "memory.peak": "6000000\n", "memory.events": "low 0\nhigh 0\nmax 0\noom 0\n",
        "memory.swap.current": "0\n", "memory.swap.max": "max\n",
        "memory.stat": V2_MEMORY_STAT,
        "pids.current": "2\n", "pids.max": "max\n",
        "io.stat": "254:0 rbytes=1130496 wbytes=8192 rios=37 wios=2 dbytes=0 dios=0\n",
    }
    for name, text in files.items():
        (d / name).write_text(text)
    return str(d)


def test_v2_generated_conversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgstats, "hugepage_sizes", lambda: ["2MB"])
    a = cgstats.v2_stats(v2_files(tmp_path / "a", 2_000_000))
    b = cgstats.v2_stats(v2_files(tmp_path / "b", 2_500_000, memory_max="268435456"))
    t1 = 1_700_000_000_000_000_000
    first, second = convert_pair(a, b, t1, t1 + 1_000_000_000, 10**12, 10**12 + 2 * 10**9)
    cpu = second["cpu_stats"]["cpu_usage"]
    assert cpu == {"total_usage": 2_500_000_000, "usage_in_kernelmode": 625_000_000,
                   "usage_in_usermode": 1_875_000_000}  # no percpu_usage on cgroup2
    assert second["cpu_stats"]["throttling_data"] == {
        "periods": 10, "throttled_periods": 2, "throttled_time": 1_500_000}
    # half a core for a second, on two CPUs: 50 %
    assert cpu_percent(second) == pytest.approx(50.0)
    mem = second["memory_stats"]
    assert set(mem) == {"usage", "stats", "limit"}  # no max_usage/failcnt on cgroup2
    assert mem["usage"] == 4644864 and mem["limit"] == 268435456
    assert first["memory_stats"]["limit"] == 2 * GiB
    assert mem["stats"]["anon"] == 2961408
    assert mem_usage(second) == 4644864 - 778240
    assert second["pids_stats"] == {"current": 2}
    assert second["blkio_stats"]["io_service_bytes_recursive"] == [
        {"major": 254, "minor": 0, "op": "read", "value": 1130496},
        {"major": 254, "minor": 0, "op": "write", "value": 8192}]
    assert second["blkio_stats"]["io_serviced_recursive"][0] == {
        "major": 254, "minor": 0, "op": "read", "value": 37}


def test_no_memory_controller_gives_empty_memory_stats() -> None:
    out = docker_stats(cgstats.empty_stats(), None, name="/x", id="x", num_cpus=1, read_time=0,
                       system_cpu=0)
    assert out["memory_stats"] == {} and out["pids_stats"] == {}
    assert out["read"] == "1970-01-01T00:00:00Z"


def test_system_cpu_usage(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 1 50 1000 9 0 5 7 0 0\ncpu0 50 0 25 500 4 0 2 3 0 0\n")
    tick = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq; steal and guests are not counted
    assert system_cpu_usage(str(stat)) == 1165 * 1_000_000_000 // tick
    assert system_cpu_usage(str(tmp_path / "missing")) == 0
    first = system_cpu_usage()
    assert first > 0 and system_cpu_usage() >= first


# -- top ----------------------------------------------------------------------------

PS_EF = """UID          PID    PPID  C STIME TTY          TIME CMD
root           1       0  0 07:27 ?        00:00:03 /sbin/init splash
root        4242       1  0 07:30 ?        00:00:00 sleep 1000
root        4243    4242  0 07:30 ?        00:00:00 /bin/sh -c echo  a   b
root        9999       1  0 07:31 ?        00:00:00 other
"""


def test_parse_ps_output_keeps_container_rows() -> None:
    out = parse_ps_output(PS_EF, {4242, 4243})
    assert out["Titles"] == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert out["Processes"] == [
        ["root", "4242", "1", "0", "07:30", "?", "00:00:00", "sleep 1000"],
        ["root", "4243", "4242", "0", "07:30", "?", "00:00:00", "/bin/sh -c echo a b"]]


def test_parse_ps_output_without_pid_column() -> None:
    with pytest.raises(InvalidArgument, match="Couldn't find PID field in ps output"):
        parse_ps_output("TID CMD\n1 init\n", {1})


def test_top_runs_host_ps() -> None:
    me = os.getpid()
    out = top([me])
    assert "PID" in out["Titles"] and "CMD" in out["Titles"]
    assert [row[out["Titles"].index("PID")] for row in out["Processes"]] == [str(me)]
    custom = top([me], "-o pid,ppid,comm")
    assert custom["Titles"] == ["PID", "PPID", "COMMAND"]
    assert custom["Processes"][0][:2] == [str(me), str(os.getppid())]
    aux = top([me], "aux")  # BSD syntax, as docker top accepts
    assert aux["Titles"][:2] == ["USER", "PID"] and len(aux["Processes"]) == 1
    assert top([], "-ef")["Processes"] == []


@pytest.mark.parametrize("args,message", [
    ("-o tid,comm", "Couldn't find PID field in ps output"),
    ("-o comm=PID", 'specifying "comm=PID" is not allowed'),
    ("--no-such-option", "Error running ps"),
])
def test_top_errors(args: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        top([os.getpid()], args)
