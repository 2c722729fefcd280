"""The v1 and v2 managers driven against plain directory trees standing in for cgroupfs.

Control files are pre-created as empty files (the kernel would provide them);
a write to a file that is not there is how the managers learn a setting is not
available, so these tests also pin the exact file names.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ketch.errors import InvalidArgument, NotFound, Unavailable
from ketch.runtime.cgroups import new_manager
from ketch.runtime.cgroups import v2 as v2mod
from ketch.runtime.cgroups.v1 import V1Manager
from ketch.runtime.cgroups.v2 import V2Manager
from ketch.sys.cgroupfs import Hierarchy

V2_FILES = [
    "cgroup.procs", "cgroup.freeze", "cgroup.events", "cgroup.kill", "cgroup.max.descendants",
    "cpu.weight", "cpu.max", "cpu.max.burst", "cpu.idle", "cpuset.cpus", "cpuset.mems",
    "memory.max", "memory.low", "memory.high", "memory.swap.max", "memory.current",
    "pids.max", "io.weight", "io.max", "hugetlb.2MB.max", "rdma.max",
]


def touch(d: Path, names: list[str], content: str = "") -> None:
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        (d / n).write_text(content)


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    """Every (path, value) the managers write, in order (files keep only the last)."""
    from ketch.runtime.cgroups import convert, v1
    from ketch.sys.cgroupfs import write_text

    log: list[tuple[str, str]] = []

    def rec(path: str, value: str) -> None:
        write_text(path, value)
        log.append((path, value))

    for mod in (convert, v1, v2mod):
        monkeypatch.setattr(mod, "write_text", rec)
    from ketch.sys.cgroupfs import Writes

    real = Writes.write

    def rec_kept(self: Writes, path: str, value: str) -> None:
        real(self, path, value)
        log.append((path, value))

    monkeypatch.setattr(Writes, "write", rec_kept)
    yield log


# ---- v2 ------------------------------------------------------------------------------

@pytest.fixture
def v2root(tmp_path: Path) -> Path:
    root = tmp_path / "cg2"
    touch(root, ["cgroup.subtree_control"])
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma\n")
    return root


def test_v2_create_enables_controllers_top_down(v2root: Path,
                                                writes: list[tuple[str, str]]) -> None:
    (v2root / "cgroup.subtree_control").write_text("cpu memory\n")
    m = new_manager("/ketch-t/c1", "c1", mode="unified", unified_root=str(v2root))
    assert isinstance(m, V2Manager) and m.path == "/ketch-t/c1"
    m.create()
    assert (v2root / "ketch-t" / "c1").is_dir()
    sc = str(v2root / "cgroup.subtree_control")
    # one write per missing controller, the ones already enabled left alone
    assert writes == [(sc, "+cpuset"), (sc, "+io"), (sc, "+hugetlb"), (sc, "+pids"),
                      (sc, "+rdma")]
    m.create()  # idempotent
    assert m.mount_binds() == [("", str(v2root / "ketch-t" / "c1"))]


def test_v2_set_writes_files(v2root: Path) -> None:
    m = new_manager("/t/c1", "c1", mode="v2", unified_root=str(v2root))
    m.create()
    leaf = v2root / "t" / "c1"
    touch(leaf, V2_FILES)
    (leaf / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma\n")
    (leaf / "cpu.max").write_text("max 100000\n")
    m.set({
        "memory": {"limit": 64 << 20, "swap": 80 << 20, "reservation": 1 << 20},
        "cpu": {"shares": 2048, "period": 50000, "cpus": "0-1", "mems": "0", "idle": 1},
        "pids": {"limit": 100},
        "blockIO": {"weight": 100,
                    "throttleWriteBpsDevice": [{"major": 253, "minor": 0, "rate": 4096}]},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 2 << 21}],
        "rdma": {"mlx4_0": {"hcaHandles": 2}},
        "unified": {"memory.high": "60000000"},
    })

    def f(name: str) -> str:
        return (leaf / name).read_text()

    assert f("memory.max") == str(64 << 20)
    assert f("memory.swap.max") == str(16 << 20)
    assert f("memory.low") == str(1 << 20)
    assert f("cpu.weight") == str(1 + ((2048 - 2) * 9999) // 262142)
    assert f("cpu.max") == "max 50000"
    assert f("cpu.idle") == "1"
    assert f("cpuset.cpus") == "0-1" and f("cpuset.mems") == "0"
    assert f("pids.max") == "100"
    assert f("io.weight") == "default 910"  # no io.bfq.weight here
    assert f("io.max") == "253:0 wbps=4096"
    assert f("hugetlb.2MB.max") == str(2 << 21)
    assert f("rdma.max") == "mlx4_0 hca_handle=2"
    assert f("memory.high") == "60000000"


def test_v2_prefers_bfq_weight(v2root: Path) -> None:
    m = new_manager("/t/c1", "c1", mode="unified", unified_root=str(v2root))
    m.create()
    leaf = v2root / "t" / "c1"
    touch(leaf, ["io.weight", "io.bfq.weight"])
    (leaf / "cgroup.controllers").write_text("io\n")
    m.set({"blockIO": {"weight": 250}})
    assert (leaf / "io.bfq.weight").read_text() == "250"
    assert (leaf / "io.weight").read_text() == ""


def test_v2_missing_controller_is_unavailable_and_nothing_is_written(v2root: Path) -> None:
    m = new_manager("/t/c1", "c1", mode="unified", unified_root=str(v2root))
    m.create()
    leaf = v2root / "t" / "c1"
    touch(leaf, V2_FILES)
    (leaf / "cgroup.controllers").write_text("pids hugetlb\n")
    with pytest.raises(Unavailable, match=r"^linux\.resources\.memory\.limit: the memory "
                                          r"controller is not enabled"):
        m.set({"pids": {"limit": 5}, "memory": {"limit": 1 << 30}})
    assert (leaf / "pids.max").read_text() == ""
    with pytest.raises(Unavailable, match="huge page size 3MB"):
        m.set({"hugepageLimits": [{"pageSize": "3MB", "limit": 0}]})


def test_v2_kernel_refusal_is_invalid_argument(v2root: Path, monkeypatch: Any) -> None:
    m = new_manager("/t/c1", "c1", mode="unified", unified_root=str(v2root))
    m.create()
    leaf = v2root / "t" / "c1"
    touch(leaf, ["cpuset.cpus"])
    (leaf / "cgroup.controllers").write_text("cpuset\n")
    from ketch.runtime.cgroups import convert

    def refuse(path: str, value: str) -> None:
        raise OSError(22, "Invalid argument (writing '99')", path)

    monkeypatch.setattr(convert, "write_text", refuse)
    with pytest.raises(InvalidArgument, match=r"^linux\.resources\.cpu\.cpus: '99' rejected"):
        m.set({"cpu": {"cpus": "99"}})


def test_v2_set_before_create(v2root: Path) -> None:
    m = new_manager("/t/none", "c1", mode="unified", unified_root=str(v2root))
    with pytest.raises(NotFound):
        m.set({"pids": {"limit": 1}})
    assert not m.exists()
    m.destroy()  # nothing to remove is fine


# ---- v1 ------------------------------------------------------------------------------

@pytest.fixture
def v1tree(tmp_path: Path) -> dict[str, Path]:
    mounts = {name: tmp_path / name for name in ("cpu,cpuacct", "cpuset", "memory", "pids",
                                                  "devices", "blkio", "systemd")}
    for p in mounts.values():
        p.mkdir()
    (mounts["cpuset"] / "cpuset.cpus").write_text("0-7\n")
    (mounts["cpuset"] / "cpuset.mems").write_text("0\n")
    return mounts


def hierarchies(mounts: dict[str, Path]) -> list[Hierarchy]:
    out = []
    for name, p in mounts.items():
        ctrls = {"name=systemd"} if name == "systemd" else set(name.split(","))
        out.append(Hierarchy(1, str(p), frozenset(ctrls)))
    return out


def leaf_files(mounts: dict[str, Path], path: str) -> dict[str, Path]:
    leaves = {n: p / path.strip("/") for n, p in mounts.items()}
    for leaf in leaves.values():
        touch(leaf, ["cgroup.procs"])
    touch(leaves["cpu,cpuacct"], ["cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us"])
    touch(leaves["cpuset"], ["cpuset.cpus", "cpuset.mems"])
    touch(leaves["memory"], ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes",
                             "memory.soft_limit_in_bytes", "memory.swappiness",
                             "memory.oom_control"])
    touch(leaves["pids"], ["pids.max"])
    touch(leaves["devices"], ["devices.allow", "devices.deny"])
    touch(leaves["blkio"], ["blkio.bfq.weight", "blkio.throttle.read_bps_device"])
    return leaves


def test_v1_create_copies_cpuset_from_parents(v1tree: dict[str, Path]) -> None:
    leaves = leaf_files(v1tree, "/k/c1")
    touch(v1tree["cpuset"] / "k", ["cpuset.cpus", "cpuset.mems"])
    m = V1Manager("/k/c1", hierarchies(v1tree))
    m.create()
    assert (v1tree["cpuset"] / "k" / "cpuset.cpus").read_text() == "0-7"
    assert (leaves["cpuset"] / "cpuset.cpus").read_text() == "0-7"
    assert (leaves["cpuset"] / "cpuset.mems").read_text() == "0"
    assert m.exists()
    assert [n for n, _ in m.mount_binds()] == ["cpu,cpuacct", "cpuset", "memory", "pids",
                                               "devices", "blkio", "systemd"]


def test_v1_set_routes_each_controller(v1tree: dict[str, Path],
                                       writes: list[tuple[str, str]]) -> None:
    leaves = leaf_files(v1tree, "/c1")
    (leaves["memory"] / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    m = V1Manager("/c1", hierarchies(v1tree))
    m.create()
    writes.clear()
    m.set({
        "memory": {"limit": 64 << 20, "swap": 128 << 20, "swappiness": 0},
        "cpu": {"shares": 256, "quota": 10000, "period": 100000, "cpus": "2"},
        "pids": {"limit": 10},
        "blockIO": {"weight": 400,
                    "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 10}]},
        "devices": [{"allow": False}, {"allow": True, "type": "c", "major": 1, "minor": 3,
                                       "access": "rw"}],
    })
    rel = [(str(Path(p).relative_to(Path(p).parents[1])), v) for p, v in writes]
    assert rel == [
        # below the limit in force (unlimited): limit first, then memory+swap
        ("c1/memory.limit_in_bytes", str(64 << 20)),
        ("c1/memory.memsw.limit_in_bytes", str(128 << 20)),
        ("c1/memory.swappiness", "0"),
        ("c1/cpu.shares", "256"),
        ("c1/cpu.cfs_period_us", "100000"),
        ("c1/cpu.cfs_quota_us", "10000"),
        ("c1/cpuset.cpus", "2"),
        ("c1/pids.max", "10"),
        ("c1/blkio.bfq.weight", "400"),  # no blkio.weight on this "host"
        ("c1/blkio.throttle.read_bps_device", "8:0 10"),
        ("c1/devices.deny", "a"),
        ("c1/devices.allow", "c 1:3 rw"),
    ]
    assert writes[0][0].startswith(str(v1tree["memory"]))
    assert writes[3][0].startswith(str(v1tree["cpu,cpuacct"]))


def test_v1_controller_missing_everywhere(v1tree: dict[str, Path]) -> None:
    leaf_files(v1tree, "/c1")
    m = V1Manager("/c1", hierarchies(v1tree))
    m.create()
    with pytest.raises(Unavailable, match=r"^linux\.resources\.network\.classID: the net_cls "
                                          r"cgroup controller is not mounted"):
        m.set({"network": {"classID": 1}})
    with pytest.raises(Unavailable, match=r"hugetlb cgroup controller"):
        m.set({"hugepageLimits": [{"pageSize": "2MB", "limit": 1}]})
    with pytest.raises(Unavailable, match=r"unified needs cgroup v2"):
        m.set({"unified": {"memory.high": "1"}})


def test_hybrid_hands_v2_only_controllers_to_the_unified_cgroup(
        v1tree: dict[str, Path], v2root: Path) -> None:
    leaves = leaf_files(v1tree, "/c1")
    (v2root / "cgroup.controllers").write_text("hugetlb\n")
    m = V1Manager("/c1", hierarchies(v1tree), str(v2root))
    m.create()
    uleaf = v2root / "c1"
    assert uleaf.is_dir()
    assert (v2root / "cgroup.subtree_control").read_text() == "+hugetlb"
    touch(uleaf, ["hugetlb.2MB.max", "cgroup.max.depth", "cgroup.procs"])
    (uleaf / "cgroup.controllers").write_text("hugetlb\n")
    m.set({"pids": {"limit": 7}, "hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}],
           "unified": {"cgroup.max.depth": "2"}})
    assert (leaves["pids"] / "pids.max").read_text() == "7"
    assert (uleaf / "hugetlb.2MB.max").read_text() == str(4 << 20)
    assert (uleaf / "cgroup.max.depth").read_text() == "2"
    # a controller neither side has
    with pytest.raises(Unavailable, match="nor enabled on cgroup2"):
        m.set({"rdma": {"mlx4_0": {"hcaHandles": 1}}})
    assert m.mount_binds()[-1] == ("cg2", str(uleaf))
    m.apply(12345)
    assert (leaves["pids"] / "cgroup.procs").read_text() == "12345"
    assert (uleaf / "cgroup.procs").read_text() == "12345"


def test_new_manager_rejects_unknown_mode() -> None:
    with pytest.raises(InvalidArgument, match="cgroup mode"):
        new_manager(None, "c1", mode="v3")
