"""Checking a ``POST /containers/create`` body and merging it with the image config.

The body is Docker's ``ContainerConfig`` fields at top level plus ``HostConfig``
and ``NetworkingConfig``. Field names are those of every API version from 1.24 on
(newer clients send more fields; they are known here). Anything else is a
client bug and answered with 400 naming the field, rather than silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ketch.errors import Conflict, InvalidArgument

__all__ = ["check_body", "merge_image_config", "restart_policy"]

CONFIG_FIELDS = frozenset({
    "ArgsEscaped", "AttachStderr", "AttachStdin", "AttachStdout", "Cmd", "Domainname",
    "Entrypoint", "Env", "ExposedPorts", "Healthcheck", "Hostname", "Image", "Labels",
    "MacAddress", "NetworkDisabled", "OnBuild", "OpenStdin", "Shell", "StdinOnce",
    "StopSignal", "StopTimeout", "Tty", "User", "Volumes", "WorkingDir",
})
HOST_CONFIG_FIELDS = frozenset({
    "Annotations", "AutoRemove", "Binds", "BlkioDeviceReadBps", "BlkioDeviceReadIOps",
    "BlkioDeviceWriteBps", "BlkioDeviceWriteIOps", "BlkioWeight", "BlkioWeightDevice",
    "CapAdd", "CapDrop", "Capabilities", "Cgroup", "CgroupParent", "CgroupnsMode",
    "ConsoleSize", "ContainerIDFile", "CpuCount", "CpuPercent", "CpuPeriod", "CpuQuota",
    "CpuRealtimePeriod", "CpuRealtimeRuntime", "CpuShares", "CpusetCpus", "CpusetMems",
    "DeviceCgroupRules", "DeviceRequests", "Devices", "DiskQuota", "Dns", "DnsOptions",
    "DnsSearch", "ExtraHosts", "GroupAdd", "IOMaximumBandwidth", "IOMaximumIOps", "Init",
    "IpcMode", "Isolation", "KernelMemory", "KernelMemoryTCP", "Links", "LogConfig",
    "MaskedPaths", "Memory", "MemoryReservation", "MemorySwap", "MemorySwappiness", "Mounts",
    "NanoCpus", "NetworkMode", "OomKillDisable", "OomScoreAdj", "PidMode", "PidsLimit",
    "PortBindings", "Privileged", "PublishAllPorts", "ReadonlyPaths", "ReadonlyRootfs",
    "RestartPolicy", "Runtime", "SecurityOpt", "ShmSize", "StorageOpt", "Sysctls", "Tmpfs",
    "UTSMode", "Ulimits", "UsernsMode", "VolumeDriver", "VolumesFrom",
})
BODY_FIELDS = CONFIG_FIELDS | {"HostConfig", "NetworkingConfig"}

_TYPES: dict[str, type | tuple[type, ...]] = {
    "Hostname": str, "Domainname": str, "User": str, "AttachStdin": bool,
    "AttachStdout": bool, "AttachStderr": bool, "Tty": bool, "OpenStdin": bool,
    "StdinOnce": bool, "Env": list, "Image": str, "WorkingDir": str, "Labels": dict,
    "StopSignal": str, "StopTimeout": int, "Volumes": dict, "ExposedPorts": dict,
    "Healthcheck": dict, "NetworkDisabled": bool, "OnBuild": list, "Shell": list,
    "MacAddress": str, "ArgsEscaped": bool,
}
_HC_TYPES: dict[str, type | tuple[type, ...]] = {
    "AutoRemove": bool, "Binds": list, "CapAdd": list, "CapDrop": list, "Init": bool,
    "LogConfig": dict, "Mounts": list, "NetworkMode": str, "Privileged": bool,
    "ReadonlyRootfs": bool, "RestartPolicy": dict, "Runtime": str, "SecurityOpt": list,
    "Tmpfs": dict, "Sysctls": dict, "Ulimits": list, "PidMode": str, "IpcMode": str,
    "UTSMode": str, "Memory": int, "MemorySwap": int, "NanoCpus": int, "PidsLimit": int,
    "CpuShares": int, "CpuQuota": int, "CpuPeriod": int, "ShmSize": int,
}


def _check_fields(obj: Any, known: frozenset[str], types: Mapping[str, Any], where: str) -> None:
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{where} must be a JSON object")
    for key, value in obj.items():
        if key not in known:
            raise InvalidArgument(f"unknown field {key!r} in {where}")
        want = types.get(key)
        if value is not None and want is not None and not (
                isinstance(value, want) and not (want is int and isinstance(value, bool))):
            name = getattr(want, "__name__", str(want))
            kind = {"str": "string", "int": "integer", "bool": "boolean", "list": "array",
                    "dict": "object"}.get(name, name)
            raise InvalidArgument(f"invalid type for {where}.{key}: expected {kind}, got "
                                  f"{type(value).__name__}")


def check_body(body: Any) -> dict[str, Any]:
    """Validate field names and scalar types of a create body; returns it."""
    _check_fields(body, BODY_FIELDS, _TYPES, "container config")
    hc = body.get("HostConfig")
    if hc is not None:
        _check_fields(hc, HOST_CONFIG_FIELDS, _HC_TYPES, "HostConfig")
    if not body.get("Image"):
        raise InvalidArgument("config cannot be empty in order to create a container: "
                              "no image given")
    for e in body.get("Env") or []:
        if not isinstance(e, str):
            raise InvalidArgument(f"invalid environment variable: {e!r}")
        if e.startswith("="):
            raise InvalidArgument(f"invalid environment variable: {e}")
    return dict(body)


def restart_policy(hc: Mapping[str, Any]) -> dict[str, Any]:
    """Normalised RestartPolicy, with Docker's checks."""
    rp = hc.get("RestartPolicy") or {}
    name = rp.get("Name") or "no"
    count = rp.get("MaximumRetryCount") or 0
    if name not in ("no", "always", "unless-stopped", "on-failure"):
        raise InvalidArgument(f"invalid restart policy: unknown policy '{name}'; use one of "
                              "'no', 'always', 'on-failure', or 'unless-stopped'")
    if not isinstance(count, int) or count < 0:
        raise InvalidArgument("invalid restart policy: maximum retry count must be a "
                              "positive integer")
    if count and name != "on-failure":
        raise InvalidArgument("invalid restart policy: maximum retry count can only be "
                              "used with 'on-failure'")
    if hc.get("AutoRemove") and name != "no":
        raise Conflict("can't create 'AutoRemove' container with restart policy")
    return {"Name": "" if name == "no" and not rp.get("Name") else name,
            "MaximumRetryCount": count}


def _env_merge(image_env: list[str], env: list[str]) -> list[str]:
    out: dict[str, str] = {}
    for e in [*image_env, *env]:
        out[e.split("=", 1)[0]] = e
    return list(out.values())


def merge_image_config(body: Mapping[str, Any], image: Mapping[str, Any]) -> dict[str, Any]:
    """The container's Config as ``docker inspect`` shows it: body over image defaults."""
    cfg: dict[str, Any] = {k: body.get(k) for k in CONFIG_FIELDS if k in body}
    cfg.setdefault("Hostname", "")
    cfg.setdefault("Domainname", "")
    cfg.setdefault("User", "")
    for k in ("AttachStdin", "AttachStdout", "AttachStderr", "Tty", "OpenStdin", "StdinOnce"):
        cfg[k] = bool(cfg.get(k))
    cfg["Env"] = _env_merge(list(image.get("Env") or []), list(cfg.get("Env") or []))
    if body.get("Entrypoint") is None and body.get("Cmd") is None:
        cfg["Cmd"] = image.get("Cmd")
    elif body.get("Entrypoint") is not None:
        cfg["Cmd"] = body.get("Cmd")
    else:
        cfg["Cmd"] = body.get("Cmd")
    if isinstance(cfg.get("Cmd"), str):
        cfg["Cmd"] = [cfg["Cmd"]]
    if body.get("Entrypoint") is None:
        cfg["Entrypoint"] = image.get("Entrypoint")
    elif isinstance(body["Entrypoint"], str):
        cfg["Entrypoint"] = [body["Entrypoint"]] if body["Entrypoint"] else None
    if not cfg.get("WorkingDir"):
        cfg["WorkingDir"] = image.get("WorkingDir") or ""
    if not cfg.get("User"):
        cfg["User"] = image.get("User") or ""
    labels = dict(image.get("Labels") or {})
    labels.update(body.get("Labels") or {})
    cfg["Labels"] = labels
    for k in ("Volumes", "ExposedPorts", "Healthcheck", "StopSignal", "OnBuild", "Shell"):
        if cfg.get(k) is None and image.get(k) is not None:
            cfg[k] = image[k]
    cfg.setdefault("Volumes", None)
    cfg.setdefault("OnBuild", None)
    return cfg
