"""Host detection from mountinfo and /proc/<pid>/cgroup, and cgroupsPath resolution."""

from __future__ import annotations

import pytest

from ketch.errors import InvalidArgument
from ketch.runtime.cgroups import resolve_path
from ketch.sys.cgroupfs import (
    HYBRID,
    LEGACY,
    UNIFIED,
    Host,
    parse_mountinfo,
    parse_proc_cgroup,
)
from ketch.sys.cgroupfs.mounts import _size_name

HYBRID_MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
90 27 0:32 /docker/abc /mnt/mem\\040copy rw - cgroup cgroup rw,memory
"""

UNIFIED_MOUNTINFO = """\
23 27 0:22 / /sys rw - sysfs sysfs rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""


def test_hybrid_layout() -> None:
    v1, v2 = parse_mountinfo(HYBRID_MOUNTINFO)
    assert [h.mountpoint for h in v1] == [
        "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpuset", "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/systemd"]
    assert v1[0].controllers == {"cpu", "cpuacct"}
    assert v1[0].name == "cpu,cpuacct"
    assert v1[1].controllers == {"cpuset"}  # clone_children is an option, not a controller
    assert v1[3].controllers == {"name=systemd"}
    assert v2 is not None and v2.mountpoint == "/sys/fs/cgroup/unified" and v2.version == 2
    host = Host(v1, v2)
    assert host.mode == HYBRID
    assert host.v1["cpuacct"] is host.v1["cpu"]
    assert host.v1["memory"].mountpoint == "/sys/fs/cgroup/memory"


def test_bind_mount_of_a_hierarchy_is_reported_once_root_first() -> None:
    text = ("90 27 0:32 /sub /mnt/x rw - cgroup cgroup rw,memory\n"
            "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    v1, _ = parse_mountinfo(text)
    assert len(v1) == 1 and v1[0].mountpoint == "/sys/fs/cgroup/memory"


def test_escaped_mountpoint() -> None:
    v1, _ = parse_mountinfo("90 27 0:40 / /mnt/a\\040b rw - cgroup cgroup rw,pids\n")
    assert v1[0].mountpoint == "/mnt/a b"


def test_unified_and_legacy_modes() -> None:
    v1, v2 = parse_mountinfo(UNIFIED_MOUNTINFO)
    assert v1 == [] and v2 is not None and v2.mountpoint == "/sys/fs/cgroup"
    assert Host(v1, v2).mode == UNIFIED
    v1, v2 = parse_mountinfo("35 31 0:32 / /cg/memory rw - cgroup cgroup rw,memory\n")
    assert Host(v1, v2).mode == LEGACY


def test_named_hierarchy_beside_cgroup2_is_unified() -> None:
    text = UNIFIED_MOUNTINFO + "40 31 0:37 / /run/systemd/x rw - cgroup cgroup rw,name=systemd\n"
    host = Host(*parse_mountinfo(text))
    assert host.mode == UNIFIED and host.hierarchies == () and host.v1 == {}


def test_no_cgroups_at_all() -> None:
    with pytest.raises(OSError, match="no cgroup filesystem"):
        Host(*parse_mountinfo("22 27 0:21 / /proc rw - proc proc rw\n"))


def test_proc_cgroup() -> None:
    text = "12:cpu,cpuacct:/a\n1:name=systemd:/user.slice\n0::/b/c\n"
    assert parse_proc_cgroup(text) == {"cpu": "/a", "cpuacct": "/a",
                                       "name=systemd": "/user.slice", "": "/b/c"}


def test_hugepage_size_names() -> None:
    assert _size_name(2048) == "2MB"
    assert _size_name(1048576) == "1GB"
    assert _size_name(64) == "64KB"


@pytest.mark.parametrize(("given", "want"), [
    (None, "/ketch/c1"),
    ("", "/ketch/c1"),
    ("/a/b", "/a/b"),
    ("a/b", "/a/b"),
    ("//a/./b/", "/a/b"),
    ("/x:y", "/x:y"),
])
def test_resolve_path(given: str | None, want: str) -> None:
    assert resolve_path(given, "c1") == want


@pytest.mark.parametrize(("given", "msg"), [
    ("/a/../b", r"'\.\.'"),
    ("..", r"'\.\.'"),
    ("system.slice:ketch:c1", "systemd"),
    ("/", "root cgroup"),
])
def test_resolve_path_rejects(given: str, msg: str) -> None:
    with pytest.raises(InvalidArgument, match=msg) as e:
        resolve_path(given, "c1")
    assert "cgroupsPath" in str(e.value)


def test_resolve_path_rejects_bad_ids() -> None:
    with pytest.raises(InvalidArgument):
        resolve_path(None, "a/b")
