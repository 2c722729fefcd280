"""The container record: what ketchd knows about one container, and how it is shown.

A :class:`Container` is persisted as ``<data-root>/containers/<id>/config.v2.json``
(replaced whole by write-then-rename on every change, like dockerd's file of the
same name). Transient, per-boot facts (the supervisor's state dir, the mounted
rootfs) are derived from the exec root, never stored.

``inspect()`` and ``summary()`` build the Docker API shapes (``ContainerInspectResponse``
and ``ContainerSummary``); times are RFC 3339 with nanoseconds, as dockerd prints them.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from ketch.runtime.state import atomic_write
from ketch.units import human_duration

__all__ = ["ZERO_TIME", "Container", "State", "now_rfc3339", "parse_rfc3339"]

ZERO_TIME = "0001-01-01T00:00:00Z"


def now_rfc3339() -> str:
    ns = time.time_ns()
    base = dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{ns % 1_000_000_000:09d}Z"


@functools.lru_cache(maxsize=4096)
def parse_rfc3339(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time as written by :func:`now_rfc3339`
    (memoised: ``docker ps`` parses every container's times on every call)."""
    if not text or text.startswith("0001-"):
        return 0.0
    main, _, frac = text.rstrip("Z").partition(".")
    base = dt.datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC).timestamp()
    return base + (int(frac[:9].ljust(9, "0")) / 1e9 if frac else 0.0)


@dataclass
class State:
    """Docker's ``ContainerState``; ``status`` is one of created, running, paused,
    restarting, removing, exited, dead."""

    status: str = "created"
    pid: int = 0
    exit_code: int = 0
    error: str = ""
    oom_killed: bool = False
    started_at: str = ZERO_TIME
    finished_at: str = ZERO_TIME
    health: dict[str, Any] | None = None

    @property
    def running(self) -> bool:
        return self.status in ("running", "paused", "restarting")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "Status": self.status, "Running": self.status in ("running", "paused"),
            "Paused": self.status == "paused", "Restarting": self.status == "restarting",
            "OOMKilled": self.oom_killed, "Dead": self.status == "dead", "Pid": self.pid,
            "ExitCode": self.exit_code, "Error": self.error, "StartedAt": self.started_at,
            "FinishedAt": self.finished_at,
        }
        if self.health is not None:
            out["Health"] = self.health
        return out

    def to_record(self) -> dict[str, Any]:
        return {"status": self.status, "pid": self.pid, "exit_code": self.exit_code,
                "error": self.error, "oom_killed": self.oom_killed,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "health": self.health}

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> State:
        return cls(**{k: r[k] for k in cls.__dataclass_fields__ if k in r})


@dataclass
class Container:
    """One container. ``config`` is the create body's Config part, ``host_config`` its
    HostConfig, both as normalised by the engine at create time."""

    id: str
    name: str  # with the leading "/"
    created: str
    image_id: str
    image_name: str  # as the user gave it (``docker ps`` IMAGE column)
    config: dict[str, Any]
    host_config: dict[str, Any]
    path: str
    args: list[str]
    runtime: str
    state: State = field(default_factory=State)
    restart_count: int = 0
    manually_stopped: bool = False
    anonymous_volumes: list[str] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)  # MountPoint shapes
    log_path: str = ""
    snapshot_key: str = ""
    hostname_path: str = ""
    hosts_path: str = ""
    resolv_conf_path: str = ""
    networking_config: dict[str, Any] = field(default_factory=dict)
    # while started: the network namespace path (ours), endpoints by network name (see
    # ketch.engine.containers.network), published ports
    sandbox: str = ""
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    ports: list[dict[str, Any]] = field(default_factory=list)

    # ---- persistence -------------------------------------------------------------

    _FIELDS = ("id", "name", "created", "image_id", "image_name", "config", "host_config",
               "path", "args", "runtime", "restart_count", "manually_stopped",
               "anonymous_volumes", "mounts", "log_path", "snapshot_key", "hostname_path",
               "hosts_path", "resolv_conf_path", "networking_config", "sandbox", "endpoints",
               "ports")

    def to_record(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self._FIELDS}
        out["state"] = self.state.to_record()
        out["version"] = 1
        return out

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Container:
        kw = {k: r[k] for k in cls._FIELDS if k in r}
        return cls(state=State.from_record(r.get("state") or {}), **kw)

    def save(self, directory: str, *, sync: bool = True) -> None:
        data = json.dumps(self.to_record(), separators=(",", ":")).encode()
        atomic_write(os.path.join(directory, "config.v2.json"), data, 0o600, sync=sync)

    # ---- API shapes --------------------------------------------------------------

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def status_text(self, now: float | None = None) -> str:
        """``docker ps`` STATUS: ``Up 5 minutes (healthy)``, ``Exited (0) 2 seconds ago``."""
        now = time.time() if now is None else now
        st = self.state
        if st.status in ("running", "paused"):
            text = f"Up {human_duration(now - parse_rfc3339(st.started_at))}"
            if st.status == "paused":
                text += " (Paused)"
            elif st.health is not None:
                hs = st.health.get("Status", "")
                text += " (health: starting)" if hs == "starting" else f" ({hs})"
            return text
        if st.status == "restarting":
            return (f"Restarting ({st.exit_code}) "
                    f"{human_duration(now - parse_rfc3339(st.finished_at))} ago")
        if st.status == "removing":
            return "Removal In Progress"
        if st.status == "dead":
            return "Dead"
        if st.finished_at == ZERO_TIME or st.status == "created":
            return "Created"
        return f"Exited ({st.exit_code}) {human_duration(now - parse_rfc3339(st.finished_at))} ago"

    def command_text(self) -> str:
        return " ".join([self.path, *self.args]) if self.path else ""

    def summary(self, size: tuple[int, int] | None = None) -> dict[str, Any]:
        from ketch.engine.containers.network import networks_view, summary_ports

        out: dict[str, Any] = {
            "Id": self.id, "Names": [self.name], "Image": self.image_name,
            "ImageID": self.image_id, "Command": self.command_text(),
            "Created": int(parse_rfc3339(self.created)), "Ports": summary_ports(self),
            "Labels": self.config.get("Labels") or {}, "State": self.state.status,
            "Status": self.status_text(),
            "HostConfig": {"NetworkMode": self.host_config.get("NetworkMode") or "bridge"},
            "NetworkSettings": {"Networks": networks_view(self)},
            "Mounts": list(self.mounts),
        }
        if size is not None:
            out["SizeRw"], out["SizeRootFs"] = size
        return out

    def inspect(self, *, graph_driver: dict[str, Any] | None = None,
                size: tuple[int, int] | None = None) -> dict[str, Any]:
        from ketch.engine.containers.network import settings

        out: dict[str, Any] = {
            "Id": self.id, "Created": self.created, "Path": self.path, "Args": list(self.args),
            "State": self.state.to_json(), "Image": self.image_id,
            "ResolvConfPath": self.resolv_conf_path, "HostnamePath": self.hostname_path,
            "HostsPath": self.hosts_path, "LogPath": self.log_path, "Name": self.name,
            "RestartCount": self.restart_count, "Driver": "overlayfs", "Platform": "linux",
            "MountLabel": "", "ProcessLabel": "", "AppArmorProfile": "", "ExecIDs": None,
            "HostConfig": self.host_config,
            "GraphDriver": graph_driver or {"Name": "overlayfs", "Data": None},
            "Mounts": list(self.mounts), "Config": self.config,
            "NetworkSettings": settings(self, self.state.running),
        }
        if size is not None:
            out["SizeRw"], out["SizeRootFs"] = size
        return out
