"""System facts of this engine and host: what ``docker version`` and ``docker info`` show.

Static facts (kernel, OS, CPUs, runtimes, cgroup layout) are read once; counters
and the clock are read per call. ApiVersion/MinAPIVersion are the API layer's
business and are added there. Container and image counts come from ``counts``,
which the engine sets once its stores exist.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ketch
from ketch.sys.cgroupfs import UNIFIED, detect_host

__all__ = ["STORAGE_DRIVER", "System", "go_arch", "os_release"]

log = logging.getLogger(__name__)

STORAGE_DRIVER = "overlayfs"  # ketch's snapshotter name; docker prints it as "Storage Driver"

# Go's GOARCH names, which clients compare against image platforms.
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm",
           "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x",
           "riscv64": "riscv64"}


def go_arch(machine: str | None = None) -> str:
    m = machine or os.uname().machine
    return _GOARCH.get(m, m)


def os_release(path: str = "/etc/os-release") -> dict[str, str]:
    """KEY=value pairs of os-release(5), quotes removed; empty if unreadable."""
    out: dict[str, str] = {}
    try:
        text = Path(path).read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            out[key.strip()] = value
    return out


def _mem_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _engine_id(data_root: str) -> str:
    """A stable engine ID kept in ``<data-root>/engine-id`` (a fresh one if unwritable)."""
    path = os.path.join(data_root, "engine-id")
    try:
        with open(path) as f:
            existing = f.read().strip()
        if existing:
            return existing
    except OSError:
        pass
    new = str(uuid.uuid4())
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(new + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot persist engine id in %s: %s", path, e)
    return new


class System:
    """The real ``SystemBackend`` of ketchd."""

    def __init__(self, *, data_root: str, exec_root: str, debug: bool = False,
                 default_runtime: str = "ketch",
                 runtimes: Mapping[str, str] | None = None, live_restore: bool = False,
                 log_driver: str = "json-file") -> None:
        """``runtimes``: name → binary of each runtime the engine can run containers
        with (ketch's in-process one included); the engine knows, this only reports."""
        self.data_root = data_root
        self.exec_root = exec_root
        self.debug = debug
        self.default_runtime = default_runtime
        self._runtimes = dict(runtimes or {"ketch": "ketch"})
        self.live_restore = live_restore
        self.log_driver = log_driver
        self.id = _engine_id(data_root)
        uname = os.uname()
        self.kernel = uname.release
        self.arch = go_arch(uname.machine)
        self.python = f"python{platform.python_version()}"
        osr = os_release()
        self.os_name = osr.get("PRETTY_NAME") or osr.get("NAME") or "Linux"
        self.os_version = osr.get("VERSION_ID", "")
        self.build_time = _rfc3339(dt.datetime.fromtimestamp(
            os.stat(ketch.__file__).st_mtime, dt.UTC))
        self._static: dict[str, Any] | None = None
        # Set by the engine once its stores exist: {"Containers": n, ...} figures.
        self.counts: Callable[[], dict[str, int]] = lambda: {}

    # -- GET /version ----------------------------------------------------------

    def version(self) -> dict[str, Any]:
        details = {"GitCommit": "unknown", "GoVersion": self.python, "KernelVersion": self.kernel,
                   "Os": "linux", "Arch": self.arch, "BuildTime": self.build_time,
                   "Experimental": "false"}
        return {
            "Platform": {"Name": f"ketch Engine {ketch.__version__}"},
            "Components": [{"Name": "Engine", "Version": ketch.__version__, "Details": details}],
            "Version": ketch.__version__,
            "GitCommit": "unknown",
            "GoVersion": self.python,
            "Os": "linux",
            "Arch": self.arch,
            "KernelVersion": self.kernel,
            "BuildTime": self.build_time,
        }

    # -- GET /info ---------------------------------------------------------------

    def runtimes(self) -> dict[str, dict[str, str]]:
        return {name: {"path": path} for name, path in self._runtimes.items()}

    def _cgroup_facts(self) -> dict[str, Any]:
        try:
            host = detect_host()
        except OSError as e:
            log.warning("no cgroup filesystem: %s", e)
            return {"CgroupVersion": "", "MemoryLimit": False, "SwapLimit": False,
                    "CpuCfsPeriod": False, "CpuCfsQuota": False, "CPUShares": False,
                    "CPUSet": False, "PidsLimit": False, "OomKillDisable": False}
        if host.mode == UNIFIED:
            assert host.unified is not None
            ctl = host.unified.controllers
            return {"CgroupVersion": "2", "MemoryLimit": "memory" in ctl,
                    "SwapLimit": "memory" in ctl, "CpuCfsPeriod": "cpu" in ctl,
                    "CpuCfsQuota": "cpu" in ctl, "CPUShares": "cpu" in ctl,
                    "CPUSet": "cpuset" in ctl, "PidsLimit": "pids" in ctl,
                    "OomKillDisable": False}
        v1 = host.v1
        mem = v1.get("memory")
        swap = mem is not None and os.path.exists(
            os.path.join(mem.mountpoint, "memory.memsw.limit_in_bytes"))
        return {"CgroupVersion": "1", "MemoryLimit": mem is not None, "SwapLimit": swap,
                "CpuCfsPeriod": "cpu" in v1, "CpuCfsQuota": "cpu" in v1,
                "CPUShares": "cpu" in v1, "CPUSet": "cpuset" in v1,
                "PidsLimit": "pids" in v1, "OomKillDisable": mem is not None}

    def _static_info(self) -> dict[str, Any]:
        if self._static is None:
            self._static = {
                "ID": self.id,
                "Driver": STORAGE_DRIVER,
                "DriverStatus": [],
                "DockerRootDir": self.data_root,
                "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "null"],
                            "Authorization": None, "Log": ["json-file"]},
                "KernelMemoryTCP": False,
                "BridgeNfIptables": _read_flag("/proc/sys/net/bridge/bridge-nf-call-iptables"),
                "BridgeNfIp6tables": _read_flag(
                    "/proc/sys/net/bridge/bridge-nf-call-ip6tables"),
                "IPv4Forwarding": _read_flag("/proc/sys/net/ipv4/ip_forward"),
                "LoggingDriver": self.log_driver,
                "CgroupDriver": "cgroupfs",
                **self._cgroup_facts(),
                "KernelVersion": self.kernel,
                "OperatingSystem": self.os_name,
                "OSVersion": self.os_version,
                "OSType": "linux",
                "Architecture": os.uname().machine,
                "NCPU": os.cpu_count() or 1,
                "MemTotal": _mem_total(),
                "IndexServerAddress": "https://index.docker.io/v1/",
                "RegistryConfig": {
                    "AllowNondistributableArtifactsCIDRs": None,
                    "AllowNondistributableArtifactsHostnames": None,
                    "InsecureRegistryCIDRs": ["::1/128", "127.0.0.0/8"],
                    "IndexConfigs": {"docker.io": {"Name": "docker.io", "Mirrors": [],
                                                   "Secure": True, "Official": True}},
                    "Mirrors": None,
                },
                "GenericResources": None,
                "HttpProxy": os.environ.get("HTTP_PROXY", ""),
                "HttpsProxy": os.environ.get("HTTPS_PROXY", ""),
                "NoProxy": os.environ.get("NO_PROXY", ""),
                "Labels": [],
                "ExperimentalBuild": False,
                "ServerVersion": ketch.__version__,
                "Runtimes": self.runtimes(),
                "DefaultRuntime": self.default_runtime,
                "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive",
                          "ControlAvailable": False, "Error": "", "RemoteManagers": None},
                "LiveRestoreEnabled": self.live_restore,
                "Isolation": "",
                "InitBinary": "",
                "ContainerdCommit": {"ID": ""},
                "RuncCommit": {"ID": ""},
                "InitCommit": {"ID": ""},
                "SecurityOptions": ["name=seccomp,profile=builtin"]
                + (["name=cgroupns"] if self._cgroup_v2() else []),
                "CDISpecDirs": [],
                "DefaultAddressPools": [],
            }
        return self._static

    def _cgroup_v2(self) -> bool:
        try:
            return detect_host().mode == UNIFIED
        except OSError:
            return False

    def info(self) -> dict[str, Any]:
        info = dict(self._static_info())
        try:
            nfd = len(os.listdir("/proc/self/fd"))
        except OSError:
            nfd = 0
        info.update({
            "Containers": 0, "ContainersRunning": 0, "ContainersPaused": 0,
            "ContainersStopped": 0, "Images": 0, **self.counts(),
            "Debug": self.debug,
            "NFd": nfd,
            "NGoroutines": threading.active_count(),  # threads: the nearest honest figure
            "SystemTime": _rfc3339(dt.datetime.now(dt.UTC)),
            "NEventsListener": 0,
            "Name": socket.gethostname(),
            "Warnings": self._warnings(info),
        })
        return info

    @staticmethod
    def _warnings(info: dict[str, Any]) -> list[str]:
        out = []
        if not info.get("MemoryLimit"):
            out.append("WARNING: No memory limit support")
        if not info.get("SwapLimit"):
            out.append("WARNING: No swap limit support")
        return out


def _read_flag(path: str) -> bool:
    try:
        return Path(path).read_text().strip() == "1"
    except OSError:
        return False
