"""cgroup managers against the real kernel (root).

Two families: the manager the host's mode selects (on a hybrid host: v1
hierarchies plus the unified cgroup), and the v2 manager forced onto the host's
cgroup2 mount (``mode="unified"``), which exercises cgroup.freeze, cgroup.kill,
hugetlb and the eBPF device filter for real even on a hybrid host.

Every test uses its own ``/ketch-test-<random>`` cgroup; the ``lab`` fixture
kills the processes the test forked, thaws, removes the cgroups everywhere,
and checks nothing is left, even when the test fails.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ketch.errors import InvalidArgument, Unavailable
from ketch.runtime.cgroups import CgroupManager, new_manager
from ketch.runtime.cgroups.devices_bpf import attached, compile_rules
from ketch.runtime.cgroups.v1 import V1Manager
from ketch.runtime.cgroups.v2 import V2Manager
from ketch.sys.bpf import AttachType, ProgType, prog_load
from ketch.sys.cgroupfs import Host, detect_host, hugepage_sizes, own_cgroups, read_text

HOST: Host = detect_host()


def _all_mountpoints() -> list[str]:
    out = [h.mountpoint for h in HOST.hierarchies]
    if HOST.unified is not None:
        out.append(HOST.unified.mountpoint)
    return out


class Lab:
    """Cgroup managers and forked children of one test, all cleaned up afterwards."""

    def __init__(self) -> None:
        self.path = f"/ketch-test-{uuid.uuid4().hex[:10]}"
        self.managers: list[CgroupManager] = []
        self.kids: list[int] = []

    def manager(self, suffix: str = "", **kw: Any) -> CgroupManager:
        m = new_manager(self.path + suffix, "unused", **kw)
        self.managers.append(m)
        return m

    def v2(self, suffix: str = "") -> V2Manager:
        if HOST.unified is None:
            pytest.skip("no cgroup2 mount on this host")
        m = self.manager(suffix, mode="unified", unified_root=HOST.unified.mountpoint)
        assert isinstance(m, V2Manager)
        return m

    def spawn(self, body: Callable[[], int], into: CgroupManager | None = None) -> int:
        """Fork a child that runs ``body`` once it is in ``into``; its exit code is the result."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            code = 99
            try:
                os.close(w)
                os.read(r, 1)
                code = body()
            finally:
                os._exit(code)
        os.close(r)
        self.kids.append(pid)
        try:
            if into is not None:
                into.apply(pid)
        finally:
            os.write(w, b"g")
            os.close(w)
        return pid

    def wait(self, pid: int, timeout: float = 20) -> int:
        """The raw wait status of child ``pid``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got, status = os.waitpid(pid, os.WNOHANG)
            if got:
                self.kids.remove(pid)
                return status
            time.sleep(0.01)
        raise AssertionError(f"child {pid} did not exit in {timeout}s")

    def cleanup(self) -> None:
        for m in self.managers:
            try:
                if m.exists() and m.frozen():
                    m.thaw()
            except (OSError, Unavailable):
                pass
        for pid in self.kids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        for m in self.managers:
            try:
                if m.exists():
                    m.kill_all(signal.SIGKILL)
                m.destroy()
            except OSError:
                pass
        top = self.path.split("/")[1]
        for mp in _all_mountpoints():
            d = f"{mp}/{top}"
            if os.path.isdir(d):
                for sub, _, _ in sorted(os.walk(d), key=lambda t: -len(t[0])):
                    try:
                        os.rmdir(sub)
                    except OSError:
                        pass


@pytest.fixture
def lab() -> Iterator[Lab]:
    lb = Lab()
    try:
        yield lb
    finally:
        lb.cleanup()
    top = lb.path.split("/")[1]
    assert not [mp for mp in _all_mountpoints() if os.path.exists(f"{mp}/{top}")]


# ---- child bodies ------------------------------------------------------------------------

def sleeper() -> int:
    time.sleep(60)
    return 0


def busy() -> int:
    while True:
        pass


def utime(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11])  # field 14 overall: utime in ticks


def wait_until(cond: Callable[[], bool], timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def open_result(path: str, flags: int) -> int:
    try:
        os.close(os.open(path, flags))
        return 0
    except OSError as e:
        return e.errno or -1


def device_probe() -> int:
    """Bit 0: /dev/null rw failed; bit 1: /dev/full rw did not fail with EPERM;
    bit 2: /dev/zero read failed; bit 3: /dev/zero write did not fail with EPERM."""
    code = 0
    code |= 1 if open_result("/dev/null", os.O_RDWR) else 0
    code |= 2 if open_result("/dev/full", os.O_RDWR) != errno.EPERM else 0
    code |= 4 if open_result("/dev/zero", os.O_RDONLY) else 0
    code |= 8 if open_result("/dev/zero", os.O_WRONLY) != errno.EPERM else 0
    return code


RULES = [{"allow": False, "access": "rwm"},
         {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
         {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "r"}]


# ---- the host's own manager ----------------------------------------------------------------

def test_create_apply_destroy_leaves_nothing(lab: Lab) -> None:
    m = lab.manager()
    m.create()
    m.create()
    binds = m.mount_binds()
    assert binds and all(os.path.isdir(d) for _, d in binds)
    pid = lab.spawn(sleeper, into=m)
    mine = own_cgroups(pid)
    for h in HOST.hierarchies:
        for c in h.controllers:
            assert mine[c] == m.path, c
    if HOST.mode != "legacy":
        assert mine[""] == m.path
    assert m.pids() == [pid]
    os.kill(pid, signal.SIGKILL)
    lab.wait(pid)
    m.destroy()
    assert not m.exists()
    assert not any(os.path.exists(d) for _, d in binds)
    m.destroy()


def test_memory_limit_is_enforced_and_oom_kills_counted(lab: Lab) -> None:
    m = lab.manager()
    m.create()
    m.set({"memory": {"limit": 32 << 20}})
    assert m.stats()["memory"]["usage"]["limit"] == 32 << 20
    assert m.oom_kills() == 0

    def hog() -> int:
        data = b"x" * (256 << 20)  # touched: every page is charged
        return len(data) and 0

    status = lab.wait(lab.spawn(hog, into=m))
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert m.oom_kills() >= 1


@pytest.mark.skipif(HOST.mode == "unified", reason="v1 memsw ordering")
def test_v1_memory_and_swap_raise_and_lower(lab: Lab) -> None:
    m = lab.manager()
    assert isinstance(m, V1Manager)
    m.create()
    d = m.dir("memory")
    if d is None:
        pytest.skip("no v1 memory hierarchy")
    if not os.path.exists(f"{d}/memory.memsw.limit_in_bytes"):
        with pytest.raises(Unavailable, match="swap accounting"):
            m.set({"memory": {"limit": 64 << 20, "swap": 128 << 20}})
        return
    for limit, swap in ((64 << 20, 128 << 20), (256 << 20, 512 << 20), (32 << 20, 64 << 20)):
        m.set({"memory": {"limit": limit, "swap": swap}})
        assert int(read_text(f"{d}/memory.limit_in_bytes")) == limit
        assert int(read_text(f"{d}/memory.memsw.limit_in_bytes")) == swap


def test_pids_limit_makes_fork_fail_with_eagain(lab: Lab) -> None:
    m = lab.manager()
    m.create()
    m.set({"pids": {"limit": 4}})

    def forker() -> int:
        kids = []
        try:
            for _ in range(20):
                pid = os.fork()
                if pid == 0:
                    time.sleep(60)
                    os._exit(0)
                kids.append(pid)
        except BlockingIOError as e:
            assert e.errno == errno.EAGAIN
            return len(kids)
        finally:
            for k in kids:
                os.kill(k, signal.SIGKILL)
                os.waitpid(k, 0)
        return 100

    status = lab.wait(lab.spawn(forker, into=m))
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3  # itself + 3 = 4


def test_cpu_files(lab: Lab) -> None:
    m = lab.manager()
    m.create()
    m.set({"cpu": {"shares": 512, "quota": 25000, "period": 50000}})
    if isinstance(m, V1Manager):
        d = m.dir("cpu")
        assert d is not None
        assert read_text(f"{d}/cpu.shares") == "512"
        assert read_text(f"{d}/cpu.cfs_quota_us") == "25000"
        assert read_text(f"{d}/cpu.cfs_period_us") == "50000"
        m.set({"cpu": {"quota": -1}})
        assert read_text(f"{d}/cpu.cfs_quota_us") == "-1"
    else:
        assert isinstance(m, V2Manager)
        assert read_text(f"{m.dir}/cpu.weight") == "20"
        assert read_text(f"{m.dir}/cpu.max") == "25000 50000"
        m.set({"cpu": {"period": 100000}})
        assert read_text(f"{m.dir}/cpu.max") == "25000 100000"


def test_cpuset(lab: Lab) -> None:
    m = lab.manager()
    m.create()
    m.set({"cpu": {"cpus": "0", "mems": "0"}})

    def show() -> int:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("Cpus_allowed_list:"))
        return 0 if line.split()[1] == "0" else 1

    status = lab.wait(lab.spawn(show, into=m))
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    with pytest.raises(InvalidArgument, match=r"^linux\.resources\.cpu\.cpus: '4095'"):
        m.set({"cpu": {"cpus": "4095"}})


def _freeze_thaw(lab: Lab, m: CgroupManager) -> None:
    m.create()
    pid = lab.spawn(busy, into=m)
    assert wait_until(lambda: utime(pid) > 0)
    assert not m.frozen()
    m.freeze()
    assert m.frozen()
    before = utime(pid)
    time.sleep(0.3)
    assert utime(pid) == before
    m.thaw()
    assert not m.frozen()
    assert wait_until(lambda: utime(pid) > before)


def test_freeze_thaw(lab: Lab) -> None:
    _freeze_thaw(lab, lab.manager())


def _kill_all(lab: Lab, m: CgroupManager, sig: int) -> None:
    m.create()
    r, w = os.pipe()

    def family() -> int:
        for _ in range(2):
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
        os.write(w, b"r")
        time.sleep(60)
        return 0

    pid = lab.spawn(family, into=m)
    os.close(w)
    assert os.read(r, 1) == b"r"
    os.close(r)
    assert len(m.pids()) == 3
    m.kill_all(sig)
    status = lab.wait(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == sig
    assert wait_until(lambda: m.pids() == [])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_kill_all(lab: Lab, sig: int) -> None:
    _kill_all(lab, lab.manager(), sig)


def _stats(lab: Lab, m: CgroupManager) -> dict[str, Any]:
    m.create()
    r, w = os.pipe()

    def worker() -> int:
        data = b"y" * (20 << 20)
        t = time.monotonic()
        while time.monotonic() - t < 0.1:
            pass
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        os.write(w, b"r")
        time.sleep(60)
        return len(data) and 0

    lab.spawn(worker, into=m)
    os.close(w)
    assert os.read(r, 1) == b"r"
    os.close(r)
    s = m.stats()
    assert s["cpu"]["usage"]["total"] > 0
    return s


def test_stats(lab: Lab) -> None:
    m = lab.manager()
    s = _stats(lab, m)
    assert s["memory"]["usage"]["usage"] > 10 << 20
    assert s["pids"]["current"] == len(m.pids()) == 2
    assert set(s) >= {"cpu", "memory", "pids", "blkio", "hugetlb"}


def test_hugetlb_limit(lab: Lab) -> None:
    sizes = hugepage_sizes()
    if not sizes:
        pytest.skip("no huge page sizes on this host")
    m = lab.manager()
    m.create()
    size = sizes[0]
    limit = 2 * (2 << 20 if size == "2MB" else 1 << 30)
    try:
        m.set({"hugepageLimits": [{"pageSize": size, "limit": limit}]})
    except Unavailable:
        assert "hugetlb" not in HOST.v1 and (
            HOST.unified is None or "hugetlb" not in HOST.unified.controllers)
        pytest.skip("no hugetlb controller on this host")
    if isinstance(m, V1Manager) and "hugetlb" in HOST.v1:
        d = m.dir("hugetlb")
        assert d is not None
        assert int(read_text(f"{d}/hugetlb.{size}.limit_in_bytes")) == limit
    else:
        # hybrid with hugetlb bound to cgroup2, or a unified host
        d = m.unified.dir if isinstance(m, V1Manager) and m.unified else m.mount_binds()[0][1]
        assert int(read_text(f"{d}/hugetlb.{size}.max")) == limit
    assert size in m.stats()["hugetlb"]
    with pytest.raises(Unavailable, match="huge page size 3MB"):
        m.set({"hugepageLimits": [{"pageSize": "3MB", "limit": limit}]})


@pytest.mark.skipif("devices" not in HOST.v1, reason="no v1 devices hierarchy")
def test_v1_device_rules(lab: Lab) -> None:
    m = lab.manager()
    assert isinstance(m, V1Manager)
    m.create()
    m.set({"devices": RULES})
    d = m.dir("devices")
    assert d is not None
    assert read_text(f"{d}/devices.list").splitlines() == ["c 1:3 rwm", "c 1:5 r"]
    status = lab.wait(lab.spawn(device_probe, into=m))
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    m.set({"devices": [{"allow": True, "access": "rwm"}]})
    assert read_text(f"{d}/devices.list") == "a *:* rwm"


@pytest.mark.skipif(HOST.mode != "hybrid", reason="hybrid hosts only")
def test_hybrid_unified_keys_and_missing_controllers(lab: Lab) -> None:
    m = lab.manager()
    assert isinstance(m, V1Manager) and m.unified is not None
    m.create()
    m.set({"unified": {"cgroup.max.descendants": "5"}})
    assert read_text(f"{m.unified.dir}/cgroup.max.descendants") == "5"
    if "net_cls" not in HOST.v1:
        with pytest.raises(Unavailable, match=r"^linux\.resources\.network\.classID"):
            m.set({"network": {"classID": 0x10001}})


# ---- the v2 manager on the host's cgroup2 mount ---------------------------------------------

def test_v2_create_apply_destroy(lab: Lab) -> None:
    m = lab.v2()
    m.create()
    pid = lab.spawn(sleeper, into=m)
    assert own_cgroups(pid)[""] == m.path
    assert m.pids() == [pid]
    # pids() walks sub-cgroups; destroy removes them too
    sub = lab.v2("/inner")
    sub.create()
    pid2 = lab.spawn(sleeper, into=sub)
    assert sorted(m.pids()) == sorted([pid, pid2])
    m.kill_all(signal.SIGKILL)
    lab.wait(pid)
    lab.wait(pid2)
    m.destroy()
    assert not m.exists() and not sub.exists()


def test_v2_freeze_thaw(lab: Lab) -> None:
    _freeze_thaw(lab, lab.v2())


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_v2_kill_all(lab: Lab, sig: int) -> None:
    _kill_all(lab, lab.v2(), sig)


def test_v2_stats(lab: Lab) -> None:
    m = lab.v2()
    s = _stats(lab, m)
    if "pids" in m.available():
        assert s["pids"]["current"] == 2
    if "memory" in m.available():
        assert s["memory"]["usage"]["usage"] > 10 << 20


def test_v2_hugetlb_and_missing_controllers(lab: Lab) -> None:
    m = lab.v2()
    m.create()
    have = m.available()
    sizes = hugepage_sizes()
    if "hugetlb" in have and sizes:
        m.set({"hugepageLimits": [{"pageSize": sizes[0], "limit": 4 << 21}]})
        assert int(read_text(f"{m.dir}/hugetlb.{sizes[0]}.max")) == 4 << 21
    if "memory" not in have:
        with pytest.raises(Unavailable, match=r"^linux\.resources\.memory\.limit: the memory "
                                              r"controller is not enabled"):
            m.set({"memory": {"limit": 1 << 30}})


def test_v2_device_filter(lab: Lab) -> None:
    m = lab.v2()
    m.create()
    m.set({"devices": RULES})
    assert len(attached(m.dir)) == 1
    status = lab.wait(lab.spawn(device_probe, into=m))
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0

    # an update from a fresh manager (another process would do the same) replaces it
    m2 = lab.v2()
    m2.set({"devices": [*RULES, {"allow": True, "type": "c", "major": 1, "minor": 7}]})
    assert len(attached(m.dir)) == 1
    status = lab.wait(lab.spawn(device_probe, into=m))
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 2  # /dev/full opens now

    m2.set({"devices": []})
    assert attached(m.dir) == []
    status = lab.wait(lab.spawn(device_probe, into=m))
    assert os.WEXITSTATUS(status) == 2 | 8  # everything allowed


def test_verifier_accepts_generated_programs() -> None:
    rnd = random.Random(7)
    for _ in range(50):
        rules = [(rnd.random() < 0.5, rnd.choice("abc"), rnd.choice([-1, 1, 4, 136]),
                  rnd.choice([-1, 0, 3]), "".join(c for c in "rwm" if rnd.random() < 0.7) or "m")
                 for _ in range(rnd.randint(1, 12))]
        fd = prog_load(ProgType.CGROUP_DEVICE, compile_rules(rules),
                       expected_attach_type=AttachType.CGROUP_DEVICE)
        os.close(fd)
