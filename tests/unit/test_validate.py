"""config.json loading and validation, and the mount option tables they rely on."""

from __future__ import annotations

import copy
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ketch.errors import InvalidArgument, NotImplementedYet
from ketch.oci.runtime_spec import (
    MOUNT_ATTR,
    MOUNT_OPTIONS,
    PROPAGATION,
    RECURSIVE_MOUNT_OPTIONS,
    parse_mount_options,
)
from ketch.runtime.validate import load_config, validate, validate_process
from ketch.sys.mount import MS

Config = dict[str, Any]


def _good() -> Config:
    """A config that uses most of what validate checks, all of it valid."""
    return {
        "ociVersion": "1.2.0",
        "root": {"path": "rootfs", "readonly": True},
        "process": {
            "terminal": False,
            "consoleSize": {"height": 24, "width": 80},
            "user": {"uid": 1000, "gid": 1000, "umask": 0o22, "additionalGids": [5, 20]},
            "args": ["/bin/sh", "-c", "true"],
            "env": ["PATH=/usr/bin:/bin", "EMPTY="],
            "cwd": "/",
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                             "ambient": []},
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096},
                        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}],
            "oomScoreAdj": -500,
            "noNewPrivileges": True,
        },
        "hostname": "box",
        "domainname": "example.org",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "data", "type": "bind", "source": "/srv/data",
             "options": ["rbind", "ro", "rprivate"]},
        ],
        "hooks": {
            "prestart": [{"path": "/usr/bin/hook", "args": ["hook", "x"], "env": ["A=1"],
                          "timeout": 5}],
            "poststop": [{"path": "/bin/true"}],
        },
        "annotations": {"org.example.key": "value"},
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                           {"type": "uts"}, {"type": "mount"},
                           {"type": "cgroup", "path": "/proc/1/ns/cgroup"}],
            "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
                         "fileMode": 0o666, "uid": 0, "gid": 0},
                        {"path": "/dev/myfifo", "type": "p"}],
            "cgroupsPath": "/ketch/test",
            "resources": {
                "devices": [{"allow": False, "access": "rwm"},
                            {"allow": True, "type": "c", "major": 1, "minor": 3,
                             "access": "rw"},
                            {"allow": True, "type": "b", "major": None, "minor": -1,
                             "access": "m"}],
                "memory": {"limit": 1 << 30, "swap": 2 << 30, "reservation": -1,
                           "swappiness": 60, "disableOOMKiller": False},
                "cpu": {"shares": 1024, "quota": 50000, "period": 100000,
                        "cpus": "0-2,4", "mems": "0"},
                "pids": {"limit": 100},
                "blockIO": {"weight": 500, "leafWeight": 0,
                            "weightDevice": [{"major": 8, "minor": 0, "weight": 100}],
                            "throttleReadBpsDevice": [{"major": 8, "minor": 0,
                                                       "rate": 1 << 20}]},
                "hugepageLimits": [{"pageSize": "2MB", "limit": 1 << 21}],
                "unified": {"memory.high": "max"},
            },
            "sysctl": {"net.ipv4.ip_forward": "1", "kernel.shmmax": "65536",
                       "fs.mqueue.msg_max": "10", "kernel.domainname": "x",
                       "net/core/somaxconn": "128"},
            "rootfsPropagation": "rslave",
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"],
            "personality": {"domain": "LINUX"},
            "intelRdt": {"closID": "whatever: not ours to check"},
        },
    }


@pytest.fixture
def bundle(tmp_path: Path) -> str:
    (tmp_path / "rootfs").mkdir()
    return str(tmp_path)


# ---- the good case -------------------------------------------------------------------


def test_good_config_passes(bundle: str) -> None:
    validate(_good(), bundle)


def test_minimal_config_passes(bundle: str) -> None:
    validate({"ociVersion": "1.0.0", "root": {"path": "rootfs"},
              "process": {"args": ["x"], "cwd": "/"}}, bundle)


def test_absolute_root_path(bundle: str, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    cfg = _good()
    cfg["root"]["path"] = str(other)
    validate(cfg, bundle)


def test_unknown_properties_are_ignored(bundle: str) -> None:
    cfg = _good()
    cfg["somethingNew"] = {"x": 1}
    cfg["process"]["capabilities"]["sideways"] = ["CAP_NOPE"]
    cfg["linux"]["memoryPolicy"] = {"mode": "MPOL_BIND"}
    cfg["hooks"]["someday"] = "not an array"
    validate(cfg, bundle)


def test_nulls_read_as_absent(bundle: str) -> None:
    cfg = _good()
    cfg["hostname"] = None
    cfg["process"]["rlimits"] = None
    cfg["linux"]["resources"]["memory"]["swappiness"] = None
    validate(cfg, bundle)


def test_process_optional_when_not_needed(bundle: str) -> None:
    cfg = _good()
    del cfg["process"]
    validate(cfg, bundle, need_process=False)
    with pytest.raises(InvalidArgument, match=r"^process: missing"):
        validate(cfg, bundle)


def test_check_rootfs_off_skips_the_stat(tmp_path: Path) -> None:
    validate(_good(), str(tmp_path / "gone"), check_rootfs=False)


def test_joined_user_namespace_needs_no_mappings(bundle: str) -> None:
    cfg = _good()
    cfg["linux"]["namespaces"].append({"type": "user", "path": "/proc/1/ns/user"})
    validate(cfg, bundle)


def test_new_user_namespace_with_mappings(bundle: str) -> None:
    cfg = _good()
    cfg["linux"]["namespaces"].append({"type": "user"})
    cfg["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    cfg["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    validate(cfg, bundle)


def test_time_offsets_with_time_namespace(bundle: str) -> None:
    cfg = _good()
    cfg["linux"]["namespaces"].append({"type": "time"})
    cfg["linux"]["timeOffsets"] = {"monotonic": {"secs": -10, "nanosecs": 5}}
    validate(cfg, bundle)


def test_input_is_not_modified(bundle: str) -> None:
    cfg = _good()
    before = copy.deepcopy(cfg)
    validate(cfg, bundle)
    assert cfg == before


# ---- bad configs: one line, naming the field ---------------------------------------------


def _ns(cfg: Config, *types: str) -> None:
    cfg["linux"]["namespaces"] = [{"type": t} for t in types]


def _drop_ns(cfg: Config, kind: str) -> None:
    cfg["linux"]["namespaces"] = [n for n in cfg["linux"]["namespaces"] if n["type"] != kind]


def _set(path: str, value: Any) -> Callable[[Config], None]:
    """A mutation setting a dotted path (list items as integers)."""
    def mutate(cfg: Config) -> None:
        *parents, last = path.split(".")
        node: Any = cfg
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return mutate


def _all(*mutations: Callable[[Config], None]) -> Callable[[Config], None]:
    def mutate(cfg: Config) -> None:
        for m in mutations:
            m(cfg)
    return mutate


BAD: list[tuple[str, Callable[[Config], None], str]] = [
    ("unknown namespace type",
     lambda c: c["linux"]["namespaces"].insert(2, {"type": "foo"}),
     'linux.namespaces[2].type: unknown namespace type "foo"'),
    ("duplicate namespace",
     lambda c: c["linux"]["namespaces"].append({"type": "pid"}),
     'linux.namespaces[6].type: duplicate namespace "pid"'),
    ("relative namespace path", _set("linux.namespaces.0.path", "proc/1/ns/pid"),
     "linux.namespaces[0].path: must be an absolute path"),
    ("namespaces not a list", _set("linux.namespaces", {"type": "pid"}),
     "linux.namespaces: must be an array, got an object"),
    ("missing ociVersion", lambda c: c.pop("ociVersion"), "ociVersion: missing"),
    ("ociVersion 2", _set("ociVersion", "2.0.0"), 'ociVersion: unsupported version "2.0.0"'),
    ("ociVersion garbage", _set("ociVersion", "latest"),
     'ociVersion: "latest" is not a version number'),
    ("ociVersion number", _set("ociVersion", 1), "ociVersion: must be a string, got 1"),
    ("missing root", lambda c: c.pop("root"), "root: missing"),
    ("missing root.path", _set("root", {}), "root.path: missing"),
    ("missing rootfs", _set("root.path", "nope"), "root.path: rootfs {bundle}/nope does not exist"),
    ("rootfs is a file", _set("root.path", "file"),
     "root.path: rootfs {bundle}/file is not a directory"),
    ("root.readonly not bool", _set("root.readonly", "yes"),
     'root.readonly: must be true or false, got "yes"'),
    ("process not an object", _set("process", ["sh"]), "process: must be an object"),
    ("non-absolute cwd", _set("process.cwd", "tmp"),
     'process.cwd: must be an absolute path, got "tmp"'),
    ("missing cwd", lambda c: c["process"].pop("cwd"), "process.cwd: missing"),
    ("empty args", _set("process.args", []), "process.args: must not be empty"),
    ("missing args", lambda c: c["process"].pop("args"), "process.args: missing"),
    ("empty program", _set("process.args", [""]), "process.args[0]: must not be empty"),
    ("non-string arg", _set("process.args", ["sh", 3]),
     "process.args[1]: must be a string, got 3"),
    ("NUL in arg", _set("process.args", ["sh\0x"]), "process.args[0]: must not contain a NUL"),
    ("env without =", _set("process.env", ["PATH=/bin", "FOO"]),
     'process.env[1]: must be KEY=VALUE, got "FOO"'),
    ("env with empty key", _set("process.env", ["=x"]), "process.env[0]: must be KEY=VALUE"),
    ("terminal not bool", _set("process.terminal", 1),
     "process.terminal: must be true or false, got 1"),
    ("consoleSize half", _set("process.consoleSize", {"height": 1}),
     "process.consoleSize.width: missing"),
    ("negative uid", _set("process.user.uid", -1), "process.user.uid: must not be negative"),
    ("bool gid", _set("process.user.gid", True), "process.user.gid: must be an integer, got true"),
    ("bad additional gid", _set("process.user.additionalGids", [1, "wheel"]),
     "process.user.additionalGids[1]: must be an integer"),
    ("unknown capability", _set("process.capabilities.effective", ["CAP_KILL", "CAP_FOO"]),
     'process.capabilities.effective[1]: unknown capability "CAP_FOO"'),
    ("unknown rlimit", _set("process.rlimits.1.type", "RLIMIT_FOO"),
     'process.rlimits[1].type: unknown rlimit "RLIMIT_FOO"'),
    ("soft > hard", _set("process.rlimits.0.soft", 8192),
     "process.rlimits[0]: soft limit 8192 is above hard limit 4096"),
    ("duplicate rlimit", _set("process.rlimits.1.type", "RLIMIT_NOFILE"),
     'process.rlimits[1].type: duplicate rlimit "RLIMIT_NOFILE"'),
    ("rlimit without hard", _set("process.rlimits.0", {"type": "RLIMIT_CPU", "soft": 1}),
     "process.rlimits[0].hard: missing"),
    ("oomScoreAdj out of range", _set("process.oomScoreAdj", 1001),
     "process.oomScoreAdj: must be between -1000 and 1000, got 1001"),
    ("noNewPrivileges not bool", _set("process.noNewPrivileges", "true"),
     "process.noNewPrivileges: must be true or false"),
    ("unknown ioprio class", _set("process.ioPriority", {"class": "FAST"}),
     'process.ioPriority.class: unknown I/O priority class "FAST"'),
    ("hostname without uts ns", lambda c: _drop_ns(c, "uts"),
     'hostname: needs its own UTS namespace (add {"type": "uts"} to linux.namespaces)'),
    ("domainname without uts ns", _all(lambda c: _drop_ns(c, "uts"), _set("hostname", "")),
     "domainname: needs its own UTS namespace"),
    ("hostname without linux", _all(lambda c: c.pop("linux")),
     "hostname: needs its own UTS namespace"),
    ("hostname too long", _set("hostname", "h" * 65),
     "hostname: must be at most 64 bytes, got 65"),
    ("mount without destination", _set("mounts.0", {"type": "proc"}),
     "mounts[0].destination: missing"),
    ("mount option not a string", _set("mounts.1.options", ["ro", None]),
     "mounts[1].options[1]: must be a string, got null"),
    ("bind without source", _set("mounts.2.source", ""),
     "mounts[2].source: required for a bind mount"),
    ("rbind option without source",
     _set("mounts.0", {"destination": "/x", "options": ["rbind"]}),
     "mounts[0].source: required for a bind mount"),
    ("bad hook path", _set("hooks.prestart.0.path", "hook"),
     'hooks.prestart[0].path: must be an absolute path, got "hook"'),
    ("hook without path", _set("hooks.poststop.0", {"args": []}),
     "hooks.poststop[0].path: missing"),
    ("hook timeout zero", _set("hooks.prestart.0.timeout", 0),
     "hooks.prestart[0].timeout: must be a positive number of seconds, got 0"),
    ("hook args not strings", _set("hooks.prestart.0.args", [1]),
     "hooks.prestart[0].args[0]: must be a string"),
    ("annotation not a string", _set("annotations", {"a": 1}),
     'annotations["a"]: must be a string'),
    ("user ns without mappings", lambda c: c["linux"]["namespaces"].append({"type": "user"}),
     "linux.uidMappings: required when creating a new user namespace"),
    ("user ns without gid mappings",
     _all(lambda c: c["linux"]["namespaces"].append({"type": "user"}),
          _set("linux.uidMappings", [{"containerID": 0, "hostID": 1000, "size": 1}])),
     "linux.gidMappings: required when creating a new user namespace"),
    ("mappings without user ns",
     _set("linux.uidMappings", [{"containerID": 0, "hostID": 1000, "size": 1}]),
     "linux.uidMappings: only meaningful with a user namespace"),
    ("mapping of size 0",
     _all(lambda c: c["linux"]["namespaces"].append({"type": "user"}),
          _set("linux.uidMappings", [{"containerID": 0, "hostID": 1000, "size": 0}])),
     "linux.uidMappings[0].size: must be at least 1"),
    ("mapping without hostID",
     _all(lambda c: c["linux"]["namespaces"].append({"type": "user"}),
          _set("linux.uidMappings", [{"containerID": 0, "size": 1}])),
     "linux.uidMappings[0].hostID: missing"),
    ("bad device type", _set("linux.devices.0.type", "x"),
     'linux.devices[0].type: must be one of c, b, u, p, got "x"'),
    ("relative device path", _set("linux.devices.0.path", "dev/fuse"),
     "linux.devices[0].path: must be an absolute path"),
    ("char device without major",
     _set("linux.devices.0", {"path": "/dev/x", "type": "c", "minor": 1}),
     'linux.devices[0].major: required for a device of type "c"'),
    ("cgroupsPath not a string", _set("linux.cgroupsPath", 5),
     "linux.cgroupsPath: must be a string"),
    ("bad resources.devices access", _set("linux.resources.devices.1.access", "rwx"),
     'linux.resources.devices[1].access: must be a combination of r, w and m, got "rwx"'),
    ("empty resources.devices access", _set("linux.resources.devices.1.access", ""),
     "linux.resources.devices[1].access: must be a combination"),
    ("resources.devices without allow", _set("linux.resources.devices.0", {"access": "rwm"}),
     "linux.resources.devices[0].allow: missing"),
    ("bad resources.devices type", _set("linux.resources.devices.1.type", "p"),
     'linux.resources.devices[1].type: must be "a", "b" or "c", got "p"'),
    ("bad resources.devices major", _set("linux.resources.devices.1.major", "1"),
     'linux.resources.devices[1].major: must be an integer, got "1"'),
    ("bad cpus string", _set("linux.resources.cpu.cpus", "0-"),
     'linux.resources.cpu.cpus: invalid CPU list "0-"'),
    ("backwards cpus range", _set("linux.resources.cpu.cpus", "3-1"),
     'linux.resources.cpu.cpus: invalid CPU list "3-1"'),
    ("bad mems string", _set("linux.resources.cpu.mems", "0,,1"),
     'linux.resources.cpu.mems: invalid memory node list "0,,1"'),
    ("cpu shares not int", _set("linux.resources.cpu.shares", 1.5),
     "linux.resources.cpu.shares: must be an integer, got 1.5"),
    ("memory limit not int", _set("linux.resources.memory.limit", "1g"),
     'linux.resources.memory.limit: must be an integer, got "1g"'),
    ("swap below limit", _set("linux.resources.memory.swap", 1 << 20),
     "linux.resources.memory.swap: memory+swap limit 1048576 is below the memory limit"),
    ("swappiness > 100", _set("linux.resources.memory.swappiness", 101),
     "linux.resources.memory.swappiness: must be between -1 and 100, got 101"),
    ("pids limit not int", _set("linux.resources.pids.limit", "max"),
     "linux.resources.pids.limit: must be an integer"),
    ("blkio weight too low", _set("linux.resources.blockIO.weight", 5),
     "linux.resources.blockIO.weight: must be between 10 and 1000, got 5"),
    ("blkio device weight too high", _set("linux.resources.blockIO.weightDevice.0.weight", 2000),
     "linux.resources.blockIO.weightDevice[0].weight: must be between 10 and 1000, got 2000"),
    ("throttle without minor", _set("linux.resources.blockIO.throttleReadBpsDevice.0",
                                    {"major": 8, "rate": 1}),
     "linux.resources.blockIO.throttleReadBpsDevice[0].minor: missing"),
    ("bad hugepage size", _set("linux.resources.hugepageLimits.0.pageSize", "2M"),
     'linux.resources.hugepageLimits[0].pageSize: must look like "2MB" or "1GB", got "2M"'),
    ("hugepage limit not int", _set("linux.resources.hugepageLimits.0.limit", "1"),
     "linux.resources.hugepageLimits[0].limit: must be an integer"),
    ("unified key is a path", _set("linux.resources.unified", {"../memory.max": "1"}),
     'linux.resources.unified["../memory.max"]: must name a file of the cgroup'),
    ("sysctl net.* without netns", lambda c: _drop_ns(c, "network"),
     'linux.sysctl["net.ipv4.ip_forward"]: needs its own network namespace'),
    ("sysctl kernel.shm* without ipc ns", lambda c: _drop_ns(c, "ipc"),
     'linux.sysctl["kernel.shmmax"]: needs its own IPC namespace'),
    ("sysctl mqueue without ipc ns",
     _all(lambda c: _drop_ns(c, "ipc"), _set("linux.sysctl", {"fs.mqueue.msg_max": "1"})),
     'linux.sysctl["fs.mqueue.msg_max"]: needs its own IPC namespace'),
    ("sysctl kernel.domainname without uts",
     _all(lambda c: _drop_ns(c, "uts"), _set("hostname", ""), _set("domainname", "")),
     'linux.sysctl["kernel.domainname"]: needs its own UTS namespace'),
    ("sysctl not namespaced", _set("linux.sysctl", {"vm.swappiness": "10"}),
     'linux.sysctl["vm.swappiness"]: not namespaced'),
    ("sysctl value not a string", _set("linux.sysctl", {"net.core.somaxconn": 128}),
     'linux.sysctl["net.core.somaxconn"]: must be a string, got 128'),
    ("bad rootfsPropagation", _set("linux.rootfsPropagation", "sideways"),
     'linux.rootfsPropagation: unknown propagation "sideways"'),
    ("relative masked path", _set("linux.maskedPaths", ["/proc/kcore", "proc/keys"]),
     'linux.maskedPaths[1]: must be an absolute path, got "proc/keys"'),
    ("relative readonly path", _set("linux.readonlyPaths", ["sys"]),
     "linux.readonlyPaths[0]: must be an absolute path"),
    ("bad personality", _set("linux.personality.domain", "BSD"),
     'linux.personality.domain: must be "LINUX" or "LINUX32", got "BSD"'),
    ("timeOffsets without time ns", _set("linux.timeOffsets", {"boottime": {"secs": 1}}),
     "linux.timeOffsets: needs its own time namespace"),
    ("timeOffsets joining a time ns",
     _all(lambda c: c["linux"]["namespaces"].append({"type": "time", "path": "/proc/1/ns/time"}),
          _set("linux.timeOffsets", {"boottime": {"secs": 1}})),
     "linux.timeOffsets: cannot be set when joining an existing time namespace"),
    ("linux not an object", _set("linux", []), "linux: must be an object, got an array"),
]


@pytest.mark.parametrize(("mutate", "expect"), [(m, e) for _, m, e in BAD],
                         ids=[name for name, _, _ in BAD])
def test_bad_config(bundle: str, mutate: Callable[[Config], None], expect: str) -> None:
    (Path(bundle) / "file").write_text("")
    cfg = _good()
    mutate(cfg)
    with pytest.raises(InvalidArgument) as e:
        validate(cfg, bundle)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(expect.replace("{bundle}", bundle)), msg


@pytest.mark.parametrize(("mutate", "expect"), [
    (_set("mounts.1.options", ["rro"]),
     'mounts[1].options[0]: recursive mount option "rro" is not supported'),
    (_set("mounts.1.options", ["nosuid", "idmap"]),
     "mounts[1].options[1]: idmapped mounts are not supported"),
    (_set("mounts.2.uidMappings", [{"containerID": 0, "hostID": 1, "size": 1}]),
     "mounts[2].uidMappings: idmapped mounts are not supported"),
    (_set("linux.netDevices", {"eth1": {"name": "eth0"}}), "linux.netDevices: "),
], ids=["recursive option", "idmap option", "mount uidMappings", "netDevices"])
def test_valid_but_unsupported(bundle: str, mutate: Callable[[Config], None],
                               expect: str) -> None:
    cfg = _good()
    mutate(cfg)
    with pytest.raises(NotImplementedYet) as e:
        validate(cfg, bundle)
    assert str(e.value).startswith(expect), str(e.value)


def test_first_error_wins(bundle: str) -> None:
    cfg = _good()
    cfg["process"]["cwd"] = "rel"
    cfg["linux"]["rootfsPropagation"] = "nope"
    with pytest.raises(InvalidArgument, match=r"^process\.cwd"):
        validate(cfg, bundle)


# ---- exec's process.json ------------------------------------------------------------------


def test_validate_process_alone() -> None:
    validate_process({"args": ["ls"], "cwd": "/", "env": ["A=b"]})
    with pytest.raises(InvalidArgument, match=r'^process\.cwd: must be an absolute path'):
        validate_process({"args": ["ls"], "cwd": "."})
    with pytest.raises(InvalidArgument, match=r"^exec\.args: must not be empty"):
        validate_process({"args": [], "cwd": "/"}, "exec")
    with pytest.raises(InvalidArgument, match=r"^process: must be an object, got null"):
        validate_process(None)


# ---- seccomp is compiled during validation --------------------------------------------------


def test_bad_seccomp_is_rejected(bundle: str) -> None:
    if importlib.util.find_spec("ketch.runtime.seccomp") is None:
        pytest.skip("ketch.runtime.seccomp not written yet")
    cfg = _good()
    cfg["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_NOPE"}
    with pytest.raises(InvalidArgument, match=r"defaultAction"):
        validate(cfg, bundle)
    cfg["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW",
                               "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO"}]}
    validate(cfg, bundle)


def test_seccomp_not_an_object(bundle: str) -> None:
    cfg = _good()
    cfg["linux"]["seccomp"] = "default"
    with pytest.raises(InvalidArgument, match=r'^linux\.seccomp: must be an object, got "default"'):
        validate(cfg, bundle)


# ---- load_config ----------------------------------------------------------------------------


def test_load_config_reads_the_file(tmp_path: Path) -> None:
    cfg = _good()
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert load_config(str(tmp_path)) == cfg


def test_load_config_missing(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as e:
        load_config(str(tmp_path))
    assert str(e.value) == (f"config.json: open {tmp_path}/config.json: "
                            "no such file or directory")


def test_load_config_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "config.json").mkdir()
    with pytest.raises(InvalidArgument, match=r"^config\.json: open .*: is a directory$"):
        load_config(str(tmp_path))


def test_load_config_malformed(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{\n  "ociVersion": "1.2.0",\n  "process": ')
    with pytest.raises(InvalidArgument) as e:
        load_config(str(tmp_path))
    assert str(e.value).startswith("config.json: invalid JSON at line 3, column 14: "), e.value


def test_load_config_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(InvalidArgument, match=r"^config\.json: .* is not UTF-8 text"):
        load_config(str(tmp_path))


@pytest.mark.parametrize(("text", "kind"), [("[]", "an array"), ('"x"', '"x"'), ("null", "null")])
def test_load_config_not_an_object(tmp_path: Path, text: str, kind: str) -> None:
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(InvalidArgument) as e:
        load_config(str(tmp_path))
    assert str(e.value) == f"config.json: must hold a JSON object, got {kind}"


# ---- parse_mount_options --------------------------------------------------------------------


def test_parse_flags_later_options_win() -> None:
    flags, prop, data, rec = parse_mount_options(["ro", "nosuid", "rw", "nodev", "noexec"])
    assert flags == MS.NOSUID | MS.NODEV | MS.NOEXEC
    assert (prop, data, rec) == (0, "", {})


def test_parse_bind_and_rbind() -> None:
    assert parse_mount_options(["bind"])[0] == MS.BIND
    assert parse_mount_options(["rbind", "ro"])[0] == MS.BIND | MS.REC | MS.RDONLY


def test_parse_unknown_options_are_filesystem_data() -> None:
    flags, prop, data, rec = parse_mount_options(
        ["nosuid", "mode=755", "strictatime", "size=65536k", "newinstance"])
    assert flags == MS.NOSUID | MS.STRICTATIME
    assert data == "mode=755,size=65536k,newinstance"
    assert (prop, rec) == (0, {})


def test_parse_propagation_last_wins() -> None:
    _, prop, data, _ = parse_mount_options(["rprivate", "rslave"])
    assert prop == MS.SLAVE | MS.REC and data == ""
    assert parse_mount_options(["unbindable"])[1] == MS.UNBINDABLE


def test_parse_recursive_attributes() -> None:
    _, _, data, rec = parse_mount_options(["rro", "rnosuid", "rnoatime"])
    assert data == ""
    assert rec == {"attr_set": MOUNT_ATTR.RDONLY | MOUNT_ATTR.NOSUID | MOUNT_ATTR.NOATIME,
                   "attr_clr": MOUNT_ATTR.ATIME_MASK}
    # rrw undoes rro; rstrictatime replaces rnoatime in the 3-bit atime field
    _, _, _, rec = parse_mount_options(["rro", "rnoatime", "rrw", "rstrictatime"])
    assert rec == {"attr_set": MOUNT_ATTR.STRICTATIME,
                   "attr_clr": MOUNT_ATTR.RDONLY | MOUNT_ATTR.ATIME_MASK}


def test_parse_does_not_keep_intflag_masks() -> None:
    # clearing a bit must not drop bits that MS does not name (MS_I_VERSION)
    flags = parse_mount_options(["iversion", "rw"])[0]
    assert flags == 1 << 23 and type(flags) is int


def test_option_tables_are_disjoint_and_complete() -> None:
    assert not set(MOUNT_OPTIONS) & set(PROPAGATION)
    assert not set(MOUNT_OPTIONS) & set(RECURSIVE_MOUNT_OPTIONS)
    wanted = {"ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "sync", "async",
              "dirsync", "remount", "mand", "nomand", "atime", "noatime", "diratime",
              "nodiratime", "relatime", "norelatime", "strictatime", "nostrictatime", "bind",
              "rbind", "nosymfollow", "lazytime"}
    assert wanted <= set(MOUNT_OPTIONS)
    assert set(PROPAGATION) == {"private", "rprivate", "shared", "rshared", "slave", "rslave",
                                "unbindable", "runbindable"}
    # each positive/negative pair touches the same bits, one setting, one clearing
    for on, off in (("ro", "rw"), ("nosuid", "suid"), ("noatime", "atime"),
                    ("relatime", "norelatime"), ("strictatime", "nostrictatime")):
        assert MOUNT_OPTIONS[on][0] == MOUNT_OPTIONS[off][0]
        assert (MOUNT_OPTIONS[on][1], MOUNT_OPTIONS[off][1]) == (False, True)
