"""Statistics parsing from v1 and v2 control files (fabricated in a temp dir)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ketch.runtime.cgroups import stats
from ketch.runtime.cgroups.stats import empty_stats, oom_kills_v1, oom_kills_v2, v1_stats, v2_stats


@pytest.fixture(autouse=True)
def sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats, "hugepage_sizes", lambda: ["2MB"])


def files(d: Path, **contents: str) -> str:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in contents.items():
        (d / name.replace("__", ".")).write_text(text)
    return str(d)


def test_v1(tmp_path: Path) -> None:
    tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    dirs = {
        "cpuacct": files(tmp_path / "cpuacct", cpuacct__usage="5000\n",
                         cpuacct__usage_percpu="3000 2000 \n",
                         cpuacct__stat="user 3\nsystem 1\n"),
        "cpu": files(tmp_path / "cpu",
                     cpu__stat="nr_periods 10\nnr_throttled 2\nthrottled_time 777\n"),
        "memory": files(tmp_path / "memory", memory__limit_in_bytes="1048576\n",
                        memory__usage_in_bytes="4096\n", memory__max_usage_in_bytes="8192\n",
                        memory__failcnt="1\n", memory__stat="cache 12\ntotal_cache 24\nrss 5\n",
                        memory__oom_control="oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"),
        "pids": files(tmp_path / "pids", pids__current="2\n", pids__max="max\n"),
        "blkio": files(tmp_path / "blkio",
                       blkio__throttle__io_service_bytes_recursive=(
                           "8:0 Read 100\n8:0 Write 50\nTotal 150\n"),
                       blkio__bfq__io_service_bytes_recursive="Total 0\n"),
        "hugetlb": files(tmp_path / "hugetlb", hugetlb__2MB__usage_in_bytes="2097152\n",
                         hugetlb__2MB__max_usage_in_bytes="4194304\n",
                         hugetlb__2MB__failcnt="0\n"),
    }
    s = v1_stats(dirs)
    assert s["cpu"] == {"usage": {"total": 5000, "percpu": [3000, 2000],
                                  "user": 3 * tick_ns, "kernel": tick_ns},
                        "throttling": {"periods": 10, "throttledPeriods": 2,
                                       "throttledTime": 777}}
    assert s["memory"]["usage"] == {"limit": 1048576, "usage": 4096, "max": 8192, "failcnt": 1}
    assert s["memory"]["cache"] == 24 and s["memory"]["raw"]["rss"] == 5
    assert s["memory"]["swap"] == {"limit": 0, "usage": 0, "max": 0, "failcnt": 0}
    assert s["pids"] == {"current": 2, "limit": 0}
    assert s["blkio"]["ioServiceBytesRecursive"] == [
        {"major": 8, "minor": 0, "op": "Read", "value": 100},
        {"major": 8, "minor": 0, "op": "Write", "value": 50}]
    assert s["blkio"]["ioServicedRecursive"] == []
    assert s["hugetlb"] == {"2MB": {"usage": 2097152, "max": 4194304, "failcnt": 0}}
    assert oom_kills_v1(dirs["memory"]) == 3


def test_v2(tmp_path: Path) -> None:
    d = files(tmp_path / "c",
              cpu__stat="usage_usec 10\nuser_usec 6\nsystem_usec 4\nnr_periods 3\n"
                        "nr_throttled 1\nthrottled_usec 2\n",
              memory__current="4096\n", memory__max="max\n", memory__peak="9000\n",
              memory__events="low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
              memory__swap__current="100\n", memory__swap__max="1000\n",
              memory__stat="anon 1\nfile 77\n",
              pids__current="3\n", pids__max="50\n",
              io__stat="8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n",
              hugetlb__2MB__current="0\n", hugetlb__2MB__max="4194304\n",
              hugetlb__2MB__events="max 2\n")
    s = v2_stats(d)
    assert s["cpu"]["usage"] == {"total": 10_000, "percpu": [], "user": 6000, "kernel": 4000}
    assert s["cpu"]["throttling"] == {"periods": 3, "throttledPeriods": 1, "throttledTime": 2000}
    unlimited = (1 << 64) - 1
    assert s["memory"]["usage"] == {"limit": unlimited, "usage": 4096, "max": 9000, "failcnt": 4}
    assert s["memory"]["swap"]["usage"] == 4196 and s["memory"]["swap"]["limit"] == unlimited
    assert s["memory"]["cache"] == 77
    assert s["pids"] == {"current": 3, "limit": 50}
    assert s["blkio"]["ioServiceBytesRecursive"] == [
        {"major": 8, "minor": 0, "op": "Read", "value": 10},
        {"major": 8, "minor": 0, "op": "Write", "value": 20}]
    assert s["blkio"]["ioServicedRecursive"][1]["value"] == 2
    assert s["hugetlb"] == {"2MB": {"usage": 0, "max": 0, "failcnt": 2}}
    assert oom_kills_v2(d) == 1


def test_missing_controllers_give_zeros(tmp_path: Path) -> None:
    assert v2_stats(files(tmp_path / "empty")) == empty_stats()
    assert v1_stats({}) == empty_stats()
