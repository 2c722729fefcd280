"""OCI linux.resources → cgroup v1 / v2 file writes (pure conversions, no cgroupfs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from ketch.errors import InvalidArgument, Unavailable
from ketch.runtime.cgroups.convert import (
    Write,
    apply_write,
    blkio_weight_to_io_weight,
    default_device_rules,
    device_rules,
    shares_to_weight,
    v1_writes,
    v2_writes,
)

V1_DEFAULTS = {
    ("memory", "memory.limit_in_bytes"): "9223372036854771712",
    ("memory", "memory.memsw.limit_in_bytes"): "9223372036854771712",
    ("memory", "memory.usage_in_bytes"): "1000",
    ("cpu", "cpu.rt_runtime_us"): "0",
}


def reader(values: Mapping[tuple[str, str], str]) -> Any:
    return lambda controller, name: values.get((controller, name))


def pairs(writes: list[Write]) -> list[tuple[str, str]]:
    return [(w.file, w.value) for w in writes]


def v1(res: Mapping[str, Any]) -> list[tuple[str, str]]:
    return pairs(v1_writes(res, reader(V1_DEFAULTS)))


def v2(res: Mapping[str, Any], values: Mapping[tuple[str, str], str] | None = None
       ) -> list[tuple[str, str]]:
    return pairs(v2_writes(res, reader(values or {})))


# ---- formulas ------------------------------------------------------------------------

def test_shares_to_weight() -> None:
    assert shares_to_weight(2) == 1
    assert shares_to_weight(1024) == 1 + (1022 * 9999) // 262142  # 39
    assert shares_to_weight(262144) == 10000
    assert shares_to_weight(1) == 1 and shares_to_weight(10**9) == 10000


def test_blkio_weight_to_io_weight() -> None:
    assert blkio_weight_to_io_weight(10) == 1
    assert blkio_weight_to_io_weight(1000) == 10000
    assert blkio_weight_to_io_weight(500) == 1 + (490 * 9999) // 990


# ---- v1 ------------------------------------------------------------------------------

def test_v1_memory_raise_writes_memsw_first() -> None:
    cur = {("memory", "memory.limit_in_bytes"): str(64 << 20),
           ("memory", "memory.memsw.limit_in_bytes"): str(128 << 20)}
    got = pairs(v1_writes({"memory": {"limit": 256 << 20, "swap": 512 << 20}}, reader(cur)))
    assert got == [("memory.memsw.limit_in_bytes", str(512 << 20)),
                   ("memory.limit_in_bytes", str(256 << 20))]


def test_v1_memory_lower_writes_limit_first() -> None:
    cur = {("memory", "memory.limit_in_bytes"): str(256 << 20),
           ("memory", "memory.memsw.limit_in_bytes"): str(512 << 20)}
    got = pairs(v1_writes({"memory": {"limit": 32 << 20, "swap": 64 << 20}}, reader(cur)))
    assert got == [("memory.limit_in_bytes", str(32 << 20)),
                   ("memory.memsw.limit_in_bytes", str(64 << 20))]


def test_v1_memory_other_files() -> None:
    got = pairs(v1_writes({"memory": {"reservation": 1 << 20, "swappiness": 10,
                                      "disableOOMKiller": True}}, reader(V1_DEFAULTS)))
    assert got == [("memory.soft_limit_in_bytes", str(1 << 20)),
                   ("memory.swappiness", "10"), ("memory.oom_control", "1")]


def test_v1_unlimited_memory_also_unlimits_memsw() -> None:
    got = pairs(v1_writes({"memory": {"limit": -1}}, reader(V1_DEFAULTS)))
    assert sorted(got) == [("memory.limit_in_bytes", "-1"),
                           ("memory.memsw.limit_in_bytes", "-1")]


def test_v1_swap_without_swap_accounting() -> None:
    no_memsw = {k: v for k, v in V1_DEFAULTS.items() if "memsw" not in k[1]}
    with pytest.raises(Unavailable, match=r"memory\.swap.*swap accounting"):
        v1_writes({"memory": {"limit": 10 << 20, "swap": 20 << 20}}, reader(no_memsw))
    # swap equal to the limit, -1 or unset asks for nothing that needs accounting
    for mem in ({"limit": 10 << 20, "swap": 10 << 20}, {"limit": 10 << 20, "swap": -1},
                {"limit": 10 << 20}):
        assert pairs(v1_writes({"memory": mem}, reader(no_memsw))) == [
            ("memory.limit_in_bytes", str(10 << 20))]


@pytest.mark.parametrize(("res", "field"), [
    ({"memory": {"limit": "1G"}}, "linux.resources.memory.limit"),
    ({"memory": {"limit": True}}, "linux.resources.memory.limit"),
    ({"memory": {"limit": 10 << 20, "swap": 5 << 20}}, "linux.resources.memory.swap"),
    ({"memory": {"swappiness": 101}}, "linux.resources.memory.swappiness"),
    ({"cpu": {"shares": -5}}, "linux.resources.cpu.shares"),
    ({"cpu": {"cpus": "0-3; rm"}}, "linux.resources.cpu.cpus"),
    ({"blockIO": {"weight": 5}}, "linux.resources.blockIO.weight"),
    ({"blockIO": {"throttleReadBpsDevice": [{"major": 8, "rate": 1}]}},
     "linux.resources.blockIO.throttleReadBpsDevice[0]"),
    ({"hugepageLimits": [{"pageSize": "2M", "limit": 1}]},
     "linux.resources.hugepageLimits[0].pageSize"),
    ({"devices": [{"allow": True, "type": "x"}]}, "linux.resources.devices[0].type"),
    ({"devices": [{"allow": True, "access": "rwx"}]}, "linux.resources.devices[0].access"),
    ({"devices": [{"type": "c"}]}, "linux.resources.devices[0].allow"),
    ({"memory": {"limit": 10 << 20, "checkBeforeUpdate": True}}, None),
])
def test_bad_values_name_the_field(res: dict[str, Any], field: str | None) -> None:
    if field is None:  # usage 1000 < limit: accepted
        v1_writes(res, reader(V1_DEFAULTS))
        return
    with pytest.raises(InvalidArgument) as e:
        v1_writes(res, reader(V1_DEFAULTS))
    assert str(e.value).startswith(field)


def test_check_before_update() -> None:
    cur = dict(V1_DEFAULTS)
    cur[("memory", "memory.usage_in_bytes")] = str(50 << 20)
    with pytest.raises(InvalidArgument, match="below the current usage"):
        v1_writes({"memory": {"limit": 10 << 20, "checkBeforeUpdate": True}}, reader(cur))
    with pytest.raises(InvalidArgument, match="below the current usage"):
        v2_writes({"memory": {"limit": 10 << 20, "checkBeforeUpdate": True}},
                  reader({("memory", "memory.current"): str(50 << 20)}))


def test_v1_cpu() -> None:
    got = v1({"cpu": {"shares": 512, "quota": 50000, "period": 100000, "burst": 1000,
                      "realtimePeriod": 1000000, "realtimeRuntime": 950000, "idle": 0,
                      "cpus": "0-1", "mems": "0"}})
    assert got == [
        ("cpu.shares", "512"), ("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "50000"),
        ("cpu.cfs_burst_us", "1000"), ("cpu.rt_period_us", "1000000"),
        ("cpu.rt_runtime_us", "950000"), ("cpu.idle", "0"),
        ("cpuset.cpus", "0-1"), ("cpuset.mems", "0")]


def test_v1_rt_shrinking_period_writes_runtime_first() -> None:
    cur = {("cpu", "cpu.rt_runtime_us"): "900000"}
    got = pairs(v1_writes({"cpu": {"realtimePeriod": 500000, "realtimeRuntime": 400000}},
                          reader(cur)))
    assert got == [("cpu.rt_runtime_us", "400000"), ("cpu.rt_period_us", "500000")]


def test_zero_means_unset() -> None:
    assert v1({"memory": {"limit": 0, "swap": 0, "reservation": 0},
               "cpu": {"shares": 0, "quota": 0, "period": 0}, "pids": {"limit": 0},
               "blockIO": {"weight": 0}}) == []


def test_v1_pids_blkio_hugetlb_network_rdma() -> None:
    res = {
        "pids": {"limit": -1},
        "blockIO": {"weight": 300, "leafWeight": 200,
                    "weightDevice": [{"major": 8, "minor": 0, "weight": 500}],
                    "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
                    "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 100}]},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}],
        "network": {"classID": 0x100001, "priorities": [{"name": "eth0", "priority": 5}]},
        "rdma": {"mlx5_1": {"hcaHandles": 3, "hcaObjects": 10000}},
    }
    writes = v1_writes(res, reader(V1_DEFAULTS))
    assert [(w.controller, *w.candidates) for w in writes] == [
        ("pids", ("pids.max", "max")),
        ("blkio", ("blkio.weight", "300"), ("blkio.bfq.weight", "300")),
        ("blkio", ("blkio.leaf_weight", "200")),
        ("blkio", ("blkio.weight_device", "8:0 500"), ("blkio.bfq.weight_device", "8:0 500")),
        ("blkio", ("blkio.throttle.read_bps_device", "8:0 1048576")),
        ("blkio", ("blkio.throttle.write_iops_device", "8:16 100")),
        ("hugetlb", ("hugetlb.2MB.limit_in_bytes", str(4 << 20))),
        ("net_cls", ("net_cls.classid", str(0x100001))),
        ("net_prio", ("net_prio.ifpriomap", "eth0 5")),
        ("rdma", ("rdma.max", "mlx5_1 hca_handle=3 hca_object=10000")),
    ]


def test_device_rules_and_v1_lines() -> None:
    res = {"devices": [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "wr"},
        {"allow": True, "type": "b", "major": 8, "access": "m"},
        {"allow": False, "type": "c", "major": -1, "minor": 7},
    ]}
    assert device_rules(res) == [(False, "a", -1, -1, "rwm"), (True, "c", 1, 3, "rw"),
                                 (True, "b", 8, -1, "m"), (False, "c", -1, 7, "rwm")]
    assert v1(res) == [("devices.deny", "a"), ("devices.allow", "c 1:3 rw"),
                       ("devices.allow", "b 8:* m"), ("devices.deny", "c *:7 rwm")]
    assert device_rules({}) is None and device_rules({"devices": []}) == []


def test_default_device_rules_cover_spec_devices() -> None:
    rules = default_device_rules({"devices": [{"path": "/dev/fuse", "type": "c",
                                               "major": 10, "minor": 229}]})
    norm = device_rules({"devices": rules})
    assert norm is not None
    assert (True, "c", 1, 3, "rwm") in norm and (True, "c", 136, -1, "rwm") in norm
    assert norm[-1] == (True, "c", 10, 229, "rwm")


# ---- v2 ------------------------------------------------------------------------------

def test_v2_memory() -> None:
    assert v2({"memory": {"limit": 64 << 20, "swap": 96 << 20, "reservation": 16 << 20}}) == [
        ("memory.max", str(64 << 20)), ("memory.swap.max", str(32 << 20)),
        ("memory.low", str(16 << 20))]
    assert v2({"memory": {"limit": 64 << 20, "swap": 64 << 20}})[1] == ("memory.swap.max", "0")
    assert v2({"memory": {"limit": -1, "swap": -1}}) == [("memory.max", "max"),
                                                         ("memory.swap.max", "max")]
    with pytest.raises(InvalidArgument, match=r"^linux\.resources\.memory\.swap"):
        v2({"memory": {"swap": 64 << 20}})


def test_v2_cpu() -> None:
    assert v2({"cpu": {"shares": 1024, "quota": 20000, "period": 100000, "idle": 1,
                       "burst": 500, "cpus": "1", "mems": "0"}}) == [
        ("cpu.weight", "39"), ("cpu.max", "20000 100000"), ("cpu.max.burst", "500"),
        ("cpu.idle", "1"), ("cpuset.cpus", "1"), ("cpuset.mems", "0")]
    assert v2({"cpu": {"quota": -1, "period": 50000}}) == [("cpu.max", "max 50000")]
    assert v2({"cpu": {"quota": 30000}}) == [("cpu.max", "30000")]
    # period alone keeps the quota in force
    cur = {("cpu", "cpu.max"): "25000 100000"}
    assert v2({"cpu": {"period": 50000}}, cur) == [("cpu.max", "25000 50000")]
    assert v2({"cpu": {"period": 50000}}) == [("cpu.max", "max 50000")]


def test_v2_pids_io_hugetlb_unified() -> None:
    res = {
        "pids": {"limit": 64},
        "blockIO": {"weight": 500,
                    "weightDevice": [{"major": 8, "minor": 0, "weight": 100}],
                    "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
                    "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 0}]},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 8 << 20}],
        "unified": {"memory.high": "50000000", "cgroup.max.descendants": "10"},
    }
    writes = v2_writes(res, reader({}))
    io_w = blkio_weight_to_io_weight(500)
    assert [(w.controller, *w.candidates) for w in writes] == [
        ("pids", ("pids.max", "64")),
        ("io", ("io.bfq.weight", "500"), ("io.weight", f"default {io_w}")),
        ("io", ("io.bfq.weight", "8:0 100"),
         ("io.weight", f"8:0 {blkio_weight_to_io_weight(100)}")),
        ("io", ("io.max", "8:0 rbps=1048576")),
        ("io", ("io.max", "8:0 wiops=max")),
        ("hugetlb", ("hugetlb.2MB.max", str(8 << 20))),
        ("memory", ("memory.high", "50000000")),
        ("", ("cgroup.max.descendants", "10")),
    ]


@pytest.mark.parametrize("key", ["../memory.max", "memory/../x", "memory", "Memory.max", "a.b/c"])
def test_v2_unified_rejects_bad_keys(key: str) -> None:
    with pytest.raises(InvalidArgument, match=r"linux\.resources\.unified"):
        v2({"unified": {key: "1"}})


@pytest.mark.parametrize(("res", "why"), [
    ({"memory": {"swappiness": 60}}, "swappiness"),
    ({"memory": {"disableOOMKiller": True}}, "OOM"),
    ({"cpu": {"realtimeRuntime": 1000}}, "real-time"),
    ({"network": {"classID": 1}}, "net_cls"),
    ({"blockIO": {"leafWeight": 100}}, "leaf"),
])
def test_v2_settings_without_equivalent_are_unavailable(tmp_path: Any, res: dict[str, Any],
                                                        why: str) -> None:
    (w,) = v2_writes(res, reader({}))
    assert w.candidates == ()
    with pytest.raises(Unavailable, match=why):
        apply_write(str(tmp_path), w)


# ---- apply_write -----------------------------------------------------------------------

def test_apply_write_falls_back_and_reports(tmp_path: Any) -> None:
    (tmp_path / "blkio.bfq.weight").write_text("100\n")
    w = Write("blkio", "linux.resources.blockIO.weight",
              [("blkio.weight", "300"), ("blkio.bfq.weight", "300")])
    apply_write(str(tmp_path), w)
    assert (tmp_path / "blkio.bfq.weight").read_text() == "300"
    assert not (tmp_path / "blkio.weight").exists()
    with pytest.raises(Unavailable, match=r"^linux\.resources\.x: a\.b is not available"):
        apply_write(str(tmp_path), Write("a", "linux.resources.x", [("a.b", "1")]))
