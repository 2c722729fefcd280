"""Docker create body → OCI spec: each case's spec must also pass the runtime's validate."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ketch.engine.specconv import DEFAULT_CAPABILITIES, Converted, sort_mounts, to_oci_spec
from ketch.errors import InvalidArgument
from ketch.runtime.validate import validate
from ketch.sys.caps import CAPS, bounding_set

CID = "0123456789abcdef" * 4
IMAGE: dict[str, Any] = {
    "Env": ["PATH=/img/bin", "IMG=1", "SHARED=image"],
    "Entrypoint": ["/entry"],
    "Cmd": ["img-cmd"],
    "WorkingDir": "/srv",
    "Volumes": {"/data": {}},
}
PASSWD = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"
GROUP = "short:x:7\nroot:x:0:root\nwheel:x:10:root,alice\nstaff:x:50:alice\nalice:x:1000:\n"


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    etc = tmp_path / "rootfs" / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text(PASSWD)
    (etc / "group").write_text(GROUP)
    return tmp_path


def conv(bundle: Path, create: dict[str, Any], image: dict[str, Any] | None = None,
         **kw: Any) -> Converted:
    out = to_oci_spec(create, IMAGE if image is None else image, container_id=CID,
                      rootfs=str(bundle / "rootfs"), **kw)
    validate(out.spec, str(bundle))  # the runtime must accept what the engine produces
    return out


def env(out: Converted) -> dict[str, str]:
    return dict(e.split("=", 1) for e in out.spec["process"]["env"])


def mount(out: Converted, dest: str) -> dict[str, Any]:
    found = [m for m in out.spec["mounts"] if m["destination"] == dest]
    assert len(found) == 1, found
    return found[0]


# ---- process ------------------------------------------------------------------------
@pytest.mark.parametrize(("create", "args"), [
    ({}, ["/entry", "img-cmd"]),
    ({"Cmd": ["x", "y"]}, ["/entry", "x", "y"]),
    ({"Entrypoint": ["/e2"]}, ["/e2"]),  # a new entrypoint drops the image's Cmd
    ({"Entrypoint": "/e2", "Cmd": "c"}, ["/e2", "c"]),
    ({"Entrypoint": [""], "Cmd": ["sh"]}, ["sh"]),
    ({"Entrypoint": "", "Cmd": ["sh"]}, ["sh"]),
    ({"Entrypoint": [], "Cmd": ["sh"]}, ["sh"]),
])
def test_args(bundle: Path, create: dict[str, Any], args: list[str]) -> None:
    assert conv(bundle, create).spec["process"]["args"] == args


def test_no_command(bundle: Path) -> None:
    with pytest.raises(InvalidArgument, match="No command specified"):
        conv(bundle, {"Entrypoint": [""]})


def test_env_precedence(bundle: Path) -> None:
    out = conv(bundle, {"Env": ["SHARED=create", "NEW=2", "IMG"], "Tty": True,
                        "Hostname": "web"})
    e = env(out)
    assert e["SHARED"] == "create" and e["NEW"] == "2" and "IMG" not in e
    assert e["PATH"] == "/img/bin" and e["HOSTNAME"] == "web" and e["TERM"] == "xterm"
    assert out.spec["hostname"] == "web" and out.spec["process"]["terminal"] is True
    plain = conv(bundle, {"Cmd": ["x"]}, {})
    assert env(plain) == {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                          "HOSTNAME": CID[:12]}
    assert plain.spec["hostname"] == CID[:12] and plain.spec["process"]["cwd"] == "/"
    assert conv(bundle, {}).spec["process"]["cwd"] == "/srv"
    assert conv(bundle, {"WorkingDir": "/w"}).spec["process"]["cwd"] == "/w"


@pytest.mark.parametrize(("user", "group_add", "want"), [
    ("", [], {"uid": 0, "gid": 0, "additionalGids": [10]}),
    ("alice", [], {"uid": 1000, "gid": 1000, "additionalGids": [10, 50]}),
    ("1000", [], {"uid": 1000, "gid": 1000, "additionalGids": [10, 50]}),
    ("alice:staff", [], {"uid": 1000, "gid": 50}),
    ("4242", [], {"uid": 4242, "gid": 0}),
    ("4242:77", ["wheel", "9"], {"uid": 4242, "gid": 77, "additionalGids": [10, 9]}),
])
def test_user(bundle: Path, user: str, group_add: list[str], want: dict[str, Any]) -> None:
    out = conv(bundle, {"User": user, "HostConfig": {"GroupAdd": group_add}})
    assert out.spec["process"]["user"] == want


def test_user_unknown(bundle: Path) -> None:
    with pytest.raises(InvalidArgument, match="unable to find user bob: no matching entries "
                                              "in passwd file"):
        conv(bundle, {"User": "bob"})
    with pytest.raises(InvalidArgument, match="unable to find group nope"):
        conv(bundle, {"HostConfig": {"GroupAdd": ["nope"]}})


def test_user_symlinked_passwd_stays_inside(bundle: Path, tmp_path_factory: Any) -> None:
    outside = tmp_path_factory.mktemp("host") / "passwd"
    outside.write_text("evil:x:0:0::/:/bin/sh\n")
    (bundle / "rootfs" / "etc" / "passwd").unlink()
    os.symlink(str(outside), bundle / "rootfs" / "etc" / "passwd")
    with pytest.raises(InvalidArgument, match="unable to find user evil"):
        conv(bundle, {"User": "evil"})


# ---- capabilities -------------------------------------------------------------------
@pytest.mark.parametrize(("hc", "added", "dropped"), [
    ({}, set(), set()),
    ({"CapAdd": ["sys_admin", "CAP_NET_ADMIN"], "CapDrop": ["mknod", "CAP_KILL"]},
     {"CAP_SYS_ADMIN", "CAP_NET_ADMIN"}, {"CAP_MKNOD", "CAP_KILL"}),
    ({"CapDrop": ["ALL"], "CapAdd": ["chown"]}, set(), set(DEFAULT_CAPABILITIES) - {"CAP_CHOWN"}),
    ({"CapAdd": ["ALL"], "CapDrop": ["NET_RAW"]}, set(bounding_set()) - set(DEFAULT_CAPABILITIES),
     {"CAP_NET_RAW"}),
])
def test_caps(bundle: Path, hc: dict[str, Any], added: set[str], dropped: set[str]) -> None:
    caps = conv(bundle, {"HostConfig": hc}).spec["process"]["capabilities"]
    want = (set(DEFAULT_CAPABILITIES) | added) - dropped
    assert set(caps["bounding"]) == set(caps["effective"]) == set(caps["permitted"]) == want
    assert "inheritable" not in caps and "ambient" not in caps


def test_unknown_cap(bundle: Path) -> None:
    with pytest.raises(InvalidArgument, match='invalid CapAdd: unknown capability: "CAP_FOO"'):
        conv(bundle, {"HostConfig": {"CapAdd": ["foo"]}})


def test_privileged(bundle: Path) -> None:
    out = conv(bundle, {"HostConfig": {"Privileged": True, "CapDrop": ["KILL"]}})
    lx = out.spec["linux"]
    # every capability the daemon holds (here a sandbox may withhold some), never more
    assert set(out.spec["process"]["capabilities"]["bounding"]) == set(bounding_set())
    assert set(bounding_set()) <= set(CAPS)
    assert "seccomp" not in lx and "maskedPaths" not in lx and "readonlyPaths" not in lx
    assert lx["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert "rw" in mount(out, "/sys")["options"]
    assert "rw" in mount(out, "/sys/fs/cgroup")["options"]


# ---- mounts -------------------------------------------------------------------------
def test_default_mounts(bundle: Path) -> None:
    out = conv(bundle, {}, resolv_conf="/var/k/resolv.conf", hosts="/var/k/hosts",
               hostname_file="/var/k/hostname")
    dests = [m["destination"] for m in out.spec["mounts"]]
    for d in ("/proc", "/dev", "/dev/pts", "/sys", "/sys/fs/cgroup", "/dev/mqueue", "/dev/shm",
              "/etc/resolv.conf", "/etc/hosts", "/etc/hostname"):
        assert d in dests
    assert dests.index("/dev") < dests.index("/dev/shm")
    assert dests.index("/sys") < dests.index("/sys/fs/cgroup")
    assert "size=67108864" in mount(out, "/dev/shm")["options"]
    assert "ro" in mount(out, "/sys")["options"]
    assert mount(out, "/etc/hosts")["source"] == "/var/k/hosts"
    assert out.spec["root"] == {"path": str(bundle / "rootfs"), "readonly": False}
    assert out.spec["linux"]["cgroupsPath"] == f"/ketch/{CID}"
    assert out.volumes == [{"name": None, "destination": "/data", "read_only": False,
                            "options": []}]
    assert out.init is False


def test_binds(bundle: Path) -> None:
    out = conv(bundle, {"HostConfig": {"Binds": [
        "/host/a:/a:ro,rshared", "/host/b:/a/b", "named:/data:nocopy", "/anon",
        "other:/o:ro"]}})
    a = mount(out, "/a")
    assert a == {"destination": "/a", "type": "bind", "source": "/host/a",
                 "options": ["rbind", "rshared", "ro"]}
    assert mount(out, "/a/b")["options"] == ["rbind", "rprivate", "rw"]
    dests = [m["destination"] for m in out.spec["mounts"]]
    assert dests.index("/a") < dests.index("/a/b")
    assert out.spec["linux"]["rootfsPropagation"] == "rshared"
    # /data is covered by the named volume, so the image's anonymous one is not added
    assert out.volumes == [
        {"name": "named", "destination": "/data", "read_only": False, "options": ["nocopy"]},
        {"name": None, "destination": "/anon", "read_only": False, "options": []},
        {"name": "other", "destination": "/o", "read_only": True, "options": []},
    ]


@pytest.mark.parametrize(("binds", "msg"), [
    (["/a:/b:ro:x"], "invalid volume specification"),
    (["/a:/b:bogus"], "invalid mode: bogus"),
    (["/a:rel"], "must be absolute"),
    (["/a:/"], "destination can't be '/'"),
    (["bad name!:/x"], "invalid characters for a local volume name"),
    (["/a:/x", "/b:/x"], "Duplicate mount point: /x"),
])
def test_bad_binds(bundle: Path, binds: list[str], msg: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid Binds") as e:
        conv(bundle, {"HostConfig": {"Binds": binds}})
    assert msg in str(e.value)


def test_mounts_and_tmpfs(bundle: Path) -> None:
    out = conv(bundle, {"HostConfig": {
        "Mounts": [
            {"Type": "bind", "Source": "/h", "Target": "/m", "ReadOnly": True,
             "BindOptions": {"Propagation": "rslave", "NonRecursive": True}},
            {"Type": "volume", "Source": "vol", "Target": "/v",
             "VolumeOptions": {"NoCopy": True}},
            {"Type": "volume", "Target": "/anon2"},
            {"Type": "tmpfs", "Target": "/t",
             "TmpfsOptions": {"SizeBytes": 1048576, "Mode": 0o1777}},
        ],
        "Tmpfs": {"/run": "rw,exec,size=65536k"},
        "ReadonlyRootfs": True, "ShmSize": 1 << 20, "Init": True}})
    assert mount(out, "/m")["options"] == ["bind", "rslave", "ro"]
    assert out.spec["linux"]["rootfsPropagation"] == "rslave"
    assert mount(out, "/t")["options"] == ["nosuid", "noexec", "nodev", "size=1048576",
                                           "mode=1777", "rw"]
    assert mount(out, "/run")["options"] == ["nosuid", "nodev", "rw", "exec", "size=65536k"]
    assert "size=1048576" in mount(out, "/dev/shm")["options"]
    assert out.spec["root"]["readonly"] is True and out.init is True
    assert [v["name"] for v in out.volumes] == ["vol", None, None]
    assert out.volumes[0]["options"] == ["nocopy"]


@pytest.mark.parametrize(("m", "msg"), [
    ({"Type": "bind", "Target": "/x"}, 'type "bind": field Source must not be empty'),
    ({"Type": "bind", "Source": "/s"}, "field Target must not be empty"),
    ({"Type": "tmpfs", "Source": "/s", "Target": "/x"}, "field Source must not be specified"),
    ({"Type": "volume", "Target": "/x", "BindOptions": {"Propagation": "shared"}},
     "field BindOptions must not be specified"),
    ({"Type": "npipe", "Target": "/x"}, "mount type unknown"),
])
def test_bad_mounts(bundle: Path, m: dict[str, Any], msg: str) -> None:
    with pytest.raises(InvalidArgument, match=r"invalid Mounts\[0\]") as e:
        conv(bundle, {"HostConfig": {"Mounts": [m]}})
    assert msg in str(e.value)


def test_sort_and_extra_mounts(bundle: Path) -> None:
    extra = [{"destination": "/dev/shm", "type": "bind", "source": "/host/shm",
              "options": ["rbind"]}, {"destination": "/a/b/c", "type": "tmpfs",
                                      "source": "tmpfs"}]
    out = conv(bundle, {}, extra_mounts=extra)
    assert mount(out, "/dev/shm")["source"] == "/host/shm"
    dests = [m["destination"] for m in out.spec["mounts"]]
    assert dests[-1] == "/a/b/c"
    unsorted = [{"destination": "/a/b"}, {"destination": "/z"}, {"destination": "/a"}]
    assert [m["destination"] for m in sort_mounts(unsorted)] == ["/z", "/a", "/a/b"]


# ---- linux --------------------------------------------------------------------------
def ns(out: Converted) -> set[str]:
    return {n["type"] for n in out.spec["linux"]["namespaces"]}


def test_namespaces(bundle: Path) -> None:
    assert ns(conv(bundle, {})) == {"pid", "network", "ipc", "uts", "mount", "cgroup"}
    assert ns(conv(bundle, {"HostConfig": {"NetworkMode": "none"}})) >= {"network"}
    assert "network" not in ns(conv(bundle, {"HostConfig": {"NetworkMode": "host"}}))
    assert "pid" not in ns(conv(bundle, {"HostConfig": {"PidMode": "host"}}))
    ipc = conv(bundle, {"HostConfig": {"IpcMode": "host"}})
    assert "ipc" not in ns(ipc) and mount(ipc, "/dev/shm")["source"] == "/dev/shm"
    uts = conv(bundle, {"HostConfig": {"UTSMode": "host"}})
    assert "uts" not in ns(uts) and "hostname" not in uts.spec
    assert "cgroup" not in ns(conv(bundle, {}, cgroup_v2=False))
    assert "cgroup" in ns(conv(bundle, {"HostConfig": {"CgroupnsMode": "private"}},
                               cgroup_v2=False))
    assert "cgroup" not in ns(conv(bundle, {"HostConfig": {"CgroupnsMode": "host"}}))


@pytest.mark.parametrize(("hc", "msg"), [
    ({"PidMode": "container:abc"}, "invalid PidMode"),
    ({"IpcMode": "weird"}, "invalid IpcMode"),
    ({"NetworkMode": "host", "Sysctls": {"net.ipv4.ip_forward": "1"}}, "invalid Sysctls"),
])
def test_bad_modes(bundle: Path, hc: dict[str, Any], msg: str) -> None:
    with pytest.raises(InvalidArgument, match=msg):
        conv(bundle, {"HostConfig": hc})


@pytest.mark.parametrize(("hc", "want"), [
    ({"Memory": 64 << 20}, {"memory": {"limit": 64 << 20, "swap": 128 << 20}}),
    ({"Memory": 64 << 20, "MemorySwap": -1}, {"memory": {"limit": 64 << 20, "swap": -1}}),
    ({"Memory": 64 << 20, "MemorySwap": 100 << 20, "MemoryReservation": 32 << 20,
      "OomKillDisable": True},
     {"memory": {"limit": 64 << 20, "swap": 100 << 20, "reservation": 32 << 20,
                 "disableOOMKiller": True}}),
    ({"NanoCpus": 1_500_000_000}, {"cpu": {"quota": 150000, "period": 100000}}),
    ({"CpuQuota": 50000, "CpuPeriod": 200000, "CpuShares": 512, "CpusetCpus": "0-1",
      "CpusetMems": "0"},
     {"cpu": {"quota": 50000, "period": 200000, "shares": 512, "cpus": "0-1", "mems": "0"}}),
    ({"PidsLimit": 100, "BlkioWeight": 300}, {"pids": {"limit": 100},
                                              "blockIO": {"weight": 300}}),
    ({"PidsLimit": -1, "MemorySwappiness": -1}, {}),
])
def test_resources(bundle: Path, hc: dict[str, Any], want: dict[str, Any]) -> None:
    res = conv(bundle, {"HostConfig": hc}).spec["linux"]["resources"]
    assert res.pop("devices") == [{"allow": False, "access": "rwm"}]
    assert res == want


@pytest.mark.parametrize(("hc", "msg"), [
    ({"NanoCpus": 10**9, "CpuPeriod": 100000}, "Nano CPUs and CPU Period"),
    ({"NanoCpus": 10**9, "CpuQuota": 100000}, "Nano CPUs and CPU Quota"),
    ({"MemorySwap": 1 << 30}, "invalid MemorySwap"),
    ({"Memory": 1 << 30, "MemorySwap": 1 << 20}, "invalid MemorySwap"),
    ({"Memory": 1024}, "invalid Memory: Minimum memory limit"),
    ({"BlkioWeight": 5}, "invalid BlkioWeight"),
    ({"CpusetCpus": "a-b"}, "invalid CpusetCpus"),
    ({"ShmSize": -1}, "invalid ShmSize"),
    ({"OomScoreAdj": 5000}, "invalid OomScoreAdj"),
    ({"Ulimits": [{"Name": "bogus", "Soft": 1, "Hard": 1}]}, "invalid Ulimits"),
    ({"Ulimits": [{"Name": "nofile", "Soft": 10, "Hard": 1}]}, "invalid Ulimits"),
    ({"SecurityOpt": ["seccomp={nope"]}, "invalid SecurityOpt: decoding seccomp profile"),
    ({"SecurityOpt": ["frobnicate=1"]}, "invalid SecurityOpt"),
    ({"Devices": [{"PathOnHost": "/nonexistent-dev"}]}, "invalid Devices"),
    ({"Devices": ["/etc/hostname"]}, "invalid Devices"),
])
def test_bad_host_config(bundle: Path, hc: dict[str, Any], msg: str) -> None:
    with pytest.raises(InvalidArgument, match=msg):
        conv(bundle, {"HostConfig": hc})


def test_sysctls_ulimits_misc(bundle: Path) -> None:
    out = conv(bundle, {"Tty": True, "Domainname": "example.org", "HostConfig": {
        "Sysctls": {"net.ipv4.ip_forward": "1", "kernel.shmmax": "100"},
        "Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 2048},
                    {"Name": "core", "Soft": -1, "Hard": -1}],
        "SecurityOpt": ["no-new-privileges"], "OomScoreAdj": 500,
        "ConsoleSize": [40, 120]}})
    p = out.spec["process"]
    assert out.spec["linux"]["sysctl"] == {"net.ipv4.ip_forward": "1", "kernel.shmmax": "100"}
    assert p["rlimits"] == [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2048},
                            {"type": "RLIMIT_CORE", "soft": 2**64 - 1, "hard": 2**64 - 1}]
    assert p["noNewPrivileges"] is True and p["oomScoreAdj"] == 500
    assert p["consoleSize"] == {"height": 40, "width": 120}
    assert out.spec["domainname"] == "example.org"
    assert "rlimits" not in conv(bundle, {}).spec["process"]


def test_seccomp(bundle: Path) -> None:
    default = conv(bundle, {}).spec["linux"]["seccomp"]
    assert default["defaultAction"] == "SCMP_ACT_ERRNO"
    names = {n for r in default["syscalls"] for n in r["names"]}
    assert "mount" not in names  # CAP_SYS_ADMIN's calls stay off by default
    admin = conv(bundle, {"HostConfig": {"CapAdd": ["SYS_ADMIN"]}}).spec["linux"]["seccomp"]
    assert "mount" in {n for r in admin["syscalls"] for n in r["names"]}
    unconfined = conv(bundle, {"HostConfig": {"SecurityOpt": ["seccomp=unconfined"]}})
    assert "seccomp" not in unconfined.spec["linux"]
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
        {"names": ["mount"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
    ]}
    custom = conv(bundle, {"HostConfig": {"SecurityOpt": ["seccomp=" + json.dumps(profile)]}})
    assert custom.spec["linux"]["seccomp"] == {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}


def test_devices(bundle: Path) -> None:
    st = os.stat("/dev/null")
    out = conv(bundle, {"HostConfig": {
        "Devices": ["/dev/null:/dev/mynull:r",
                    {"PathOnHost": "/dev/zero", "PathInContainer": "", "CgroupPermissions": ""}],
        "DeviceCgroupRules": ["c 10:* rwm"]}})
    lx = out.spec["linux"]
    assert lx["devices"][0] == {"path": "/dev/mynull", "type": "c", "major": os.major(st.st_rdev),
                                "minor": os.minor(st.st_rdev),
                                "fileMode": st.st_mode & 0o7777, "uid": 0, "gid": 0}
    assert lx["devices"][1]["path"] == "/dev/zero"
    assert lx["resources"]["devices"] == [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "r"},
        {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
        {"allow": True, "type": "c", "major": 10, "access": "rwm"},
    ]
