"""``run``/``create`` flags → a ``POST /containers/create`` body, as the docker CLI builds it.

:func:`add_create_flags` declares docker's flags on a parser; :func:`build_create`
turns the parsed flags into :class:`CreateSpec` (body + name) without touching the
engine: pure but for reading ``--env-file`` and ``--security-opt seccomp=<file>``
files and the environment (``-e KEY`` takes the local value). Flag errors are
:class:`UsageError` with status 125, docker's status for them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ketch.client.cli.base import UsageError, go_duration, parse_kv

__all__ = [
    "CreateSpec",
    "add_create_flags",
    "build_create",
    "parse_duration",
    "parse_mount",
    "parse_ram",
    "parse_ulimit",
    "resolve_env",
]

_RAM = re.compile(r"^(\d+(?:\.\d+)?) ?([kKmMgGtTpP])?[iI]?[bB]?$")
_RESTARTS = ("no", "always", "unless-stopped", "on-failure")


def _bad(message: str) -> UsageError:
    return UsageError(message, 125)


@dataclass(frozen=True)
class CreateSpec:
    """What ``POST /containers/create`` needs: the body and the ``name`` query."""

    body: dict[str, Any]
    name: str | None


def add_create_flags(p: argparse.ArgumentParser) -> None:
    """docker's ``create``/``run`` flags (``run`` adds -d, --rm is shared)."""
    a = p.add_argument
    a("--help", action="help", help="show this help message and exit")
    a("-i", "--interactive", action="store_true", help="keep STDIN open even if not attached")
    a("-t", "--tty", action="store_true", help="allocate a pseudo-TTY")
    a("-a", "--attach", action="append", choices=("stdin", "stdout", "stderr"),
      help="attach to STDIN, STDOUT or STDERR")
    a("--name", help="assign a name to the container")
    a("--rm", action="store_true", help="remove the container when it exits")
    a("-e", "--env", action="append", default=[], help="set environment variables")
    a("--env-file", action="append", default=[], help="read a file of environment variables")
    a("-v", "--volume", action="append", default=[], help="bind mount a volume")
    a("--mount", action="append", default=[], help="attach a filesystem mount")
    a("--tmpfs", action="append", default=[], help="mount a tmpfs directory")
    a("-w", "--workdir", help="working directory inside the container")
    a("-u", "--user", help="username or UID (format: <name|uid>[:<group|gid>])")
    a("--entrypoint", help="overwrite the default ENTRYPOINT of the image")
    a("--restart", default="no", help="restart policy (no, always, unless-stopped, "
      "on-failure[:max-retries])")
    a("--network", "--net", dest="network", help="connect to a network (none, host)")
    a("-h", "--hostname", help="container host name")
    a("-l", "--label", action="append", default=[], help="set metadata on a container")
    a("-m", "--memory", help="memory limit")
    a("--cpus", help="number of CPUs")
    a("--pids-limit", help="tune the container's pids limit (-1 for unlimited)")
    a("--ulimit", action="append", default=[], help="ulimit options (name=soft[:hard])")
    a("--cap-add", action="append", default=[], help="add Linux capabilities")
    a("--cap-drop", action="append", default=[], help="drop Linux capabilities")
    a("--privileged", action="store_true", help="give extended privileges")
    a("--read-only", action="store_true", help="mount the root filesystem read-only")
    a("--security-opt", action="append", default=[], help="security options")
    a("--init", action="store_true", help="run an init inside the container")
    a("--health-cmd", help="command to run to check health")
    a("--health-interval", help="time between running the check (ms|s|m|h)")
    a("--health-timeout", help="maximum time to allow one check to run (ms|s|m|h)")
    a("--health-retries", help="consecutive failures needed to report unhealthy")
    a("--health-start-period", help="start period before retries count (ms|s|m|h)")
    a("--no-healthcheck", action="store_true", help="disable any container-specified HEALTHCHECK")
    a("--log-driver", help="logging driver for the container")
    a("--log-opt", action="append", default=[], help="log driver options")
    a("--stop-signal", help="signal to stop the container")
    a("--stop-timeout", help="timeout (in seconds) to stop a container")
    a("--runtime", help="runtime to use for this container")
    a("--detach-keys", help="override the key sequence for detaching a container")
    a("image", help="the image to run")
    a("command", nargs=argparse.REMAINDER, help="command and arguments")


# -- value parsers ---------------------------------------------------------------------

def parse_ram(text: str, flag: str = "--memory") -> int:
    """docker's RAMInBytes: ``512m``, ``1.5g``, ``64MiB`` (binary units) → bytes."""
    m = _RAM.match(text.strip())
    if m is None:
        raise _bad(f"invalid argument {text!r} for {flag!r} flag: invalid size: {text!r}")
    number, unit = float(m.group(1)), (m.group(2) or "").lower()
    return int(number * (1024 ** (" kmgtp".index(unit) if unit else 0)))


def parse_duration(text: str, flag: str) -> int:
    """A Go duration (``1m30s``, ``500ms``, ``0``) → nanoseconds; UsageError (125) if not."""
    ns = go_duration(text)
    if ns is None or ns < 0:
        raise _bad(f"invalid argument {text!r} for {flag!r} flag: time: invalid duration "
                   f"{text!r}")
    return ns


def _int(text: str | None, flag: str) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise _bad(f"invalid argument {text!r} for {flag!r} flag: "
                   "strconv.ParseInt: parsing: invalid syntax") from None


def parse_ulimit(text: str) -> dict[str, Any]:
    """``nofile=1024:2048`` → ``{"Name": "nofile", "Soft": 1024, "Hard": 2048}``."""
    name, eq, limits = text.partition("=")
    if not eq or not name:
        raise _bad(f"invalid ulimit argument: {text}")
    soft_s, _, hard_s = limits.partition(":")
    try:
        soft = int(soft_s)
        hard = int(hard_s) if hard_s else soft
    except ValueError:
        raise _bad(f"invalid ulimit argument: {text}") from None
    if soft > hard and hard != -1:
        raise _bad(f"ulimit soft limit must be less than or equal to hard limit: {text}")
    return {"Name": name, "Soft": soft, "Hard": hard}


def _bool(value: str, text: str) -> bool:
    if value.lower() in ("", "1", "true"):
        return True
    if value.lower() in ("0", "false"):
        return False
    raise _bad(f"invalid value {value!r} in {text!r}: expected a boolean")


def parse_mount(text: str) -> dict[str, Any]:
    """One ``--mount`` value (``type=bind,source=/x,target=/y,readonly``) → a Mount object."""
    fields = next(csv.reader([text]), [])
    mount: dict[str, Any] = {"Type": "volume"}
    bind: dict[str, Any] = {}
    vol: dict[str, Any] = {}
    tmp: dict[str, Any] = {}
    for f in fields:
        key, eq, value = f.partition("=")
        key = key.strip().lower()
        if key == "type":
            if value not in ("bind", "volume", "tmpfs"):
                raise _bad(f"invalid mount type {value!r} in {text!r} "
                           "(ketch supports bind, volume, tmpfs)")
            mount["Type"] = value
        elif key in ("source", "src"):
            mount["Source"] = value
        elif key in ("target", "destination", "dst"):
            mount["Target"] = value
        elif key in ("readonly", "ro"):
            mount["ReadOnly"] = _bool(value if eq else "", text)
        elif key == "bind-propagation":
            bind["Propagation"] = value
        elif key == "bind-nonrecursive":
            bind["NonRecursive"] = _bool(value if eq else "", text)
        elif key == "volume-nocopy":
            vol["NoCopy"] = _bool(value if eq else "", text)
        elif key == "volume-subpath":
            vol["Subpath"] = value
        elif key == "volume-label":
            k, _, v = value.partition("=")
            vol.setdefault("Labels", {})[k] = v
        elif key == "volume-driver":
            vol.setdefault("DriverConfig", {})["Name"] = value
        elif key == "volume-opt":
            k, _, v = value.partition("=")
            vol.setdefault("DriverConfig", {}).setdefault("Options", {})[k] = v
        elif key == "tmpfs-size":
            tmp["SizeBytes"] = parse_ram(value, "--mount tmpfs-size")
        elif key == "tmpfs-mode":
            try:
                tmp["Mode"] = int(value, 8)
            except ValueError:
                raise _bad(f"invalid value for tmpfs-mode: {value!r}") from None
        else:
            raise _bad(f"unexpected key {key!r} in {text!r}")
    if not mount.get("Target"):
        raise _bad(f"target is required in {text!r}")
    kind = mount["Type"]
    if kind == "bind" and not mount.get("Source"):
        raise _bad(f"source is required when specifying bind mount: {text!r}")
    if (bind and kind != "bind") or (vol and kind != "volume") or (tmp and kind != "tmpfs"):
        raise _bad(f"cannot mix options of another mount type in {text!r}")
    for key, opts in (("BindOptions", bind), ("VolumeOptions", vol), ("TmpfsOptions", tmp)):
        if opts:
            mount[key] = opts
    return mount


def _volume(text: str, cwd: str, binds: list[str], volumes: dict[str, Any]) -> None:
    parts = text.split(":")
    if len(parts) == 1:
        if not text.startswith("/"):
            raise _bad(f"invalid volume specification: {text!r}")
        volumes[text] = {}
        return
    if len(parts) > 3 or not parts[0] or not parts[1]:
        raise _bad(f"invalid volume specification: {text!r}")
    src = parts[0]
    if src.startswith("."):
        src = os.path.normpath(os.path.join(cwd, src))
    binds.append(":".join([src, *parts[1:]]))


def _env_file(path: str, environ: Mapping[str, str]) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise _bad(f"open {path}: {e.strerror}") from None
    out = []
    for line in lines:
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        out.append(resolve_env(line, environ))
    return out


def resolve_env(item: str, environ: Mapping[str, str]) -> str:
    """``KEY=v`` as is; a bare ``KEY`` takes its local value when it has one (docker's -e)."""
    key, eq, _ = item.partition("=")
    if not key or any(c.isspace() for c in key):
        raise _bad(f"invalid environment variable: {item}")
    if not eq and key in environ:
        return f"{key}={environ[key]}"
    return item


def _security_opts(opts: Sequence[str]) -> list[str]:
    out = []
    for opt in opts:
        key, eq, value = opt.partition("=")
        if not eq:
            key, eq, value = opt.partition(":")  # the old "seccomp:file" spelling
        if key == "seccomp" and eq and value not in ("unconfined", "builtin"):
            try:
                with open(value, encoding="utf-8") as f:
                    profile = json.load(f)
            except (OSError, ValueError) as e:
                raise _bad(f"opening seccomp profile ({value}) failed: {e}") from None
            out.append("seccomp=" + json.dumps(profile, separators=(",", ":")))
        elif key in ("label", "apparmor", "seccomp") and eq:
            out.append(f"{key}={value}")
        else:
            out.append(opt)
    return out


def _restart(text: str) -> dict[str, Any]:
    name, colon, count = text.partition(":")
    if name not in _RESTARTS:
        raise _bad(f"invalid restart policy {text!r}")
    policy: dict[str, Any] = {"Name": name}
    if colon:
        if name != "on-failure":
            raise _bad(f"maximum retry count cannot be used with restart policy {name!r}")
        n = _int(count, "--restart")
        if n is None or n < 0:
            raise _bad(f"invalid restart policy {text!r}")
        policy["MaximumRetryCount"] = n
    return policy


def _healthcheck(args: argparse.Namespace) -> dict[str, Any] | None:
    durations = {"Interval": ("--health-interval", args.health_interval),
                 "Timeout": ("--health-timeout", args.health_timeout),
                 "StartPeriod": ("--health-start-period", args.health_start_period)}
    given = [args.health_cmd, args.health_retries, *(v for _, v in durations.values())]
    if args.no_healthcheck:
        if any(v is not None for v in given):
            raise _bad("--no-healthcheck conflicts with --health-* options")
        return {"Test": ["NONE"]}
    if all(v is None for v in given):
        return None
    hc: dict[str, Any] = {}
    if args.health_cmd is not None:
        hc["Test"] = ["CMD-SHELL", args.health_cmd]
    for key, (flag, value) in durations.items():
        if value is not None:
            hc[key] = parse_duration(value, flag)
    retries = _int(args.health_retries, "--health-retries")
    if retries is not None:
        if retries < 0:
            raise _bad("--health-retries cannot be negative")
        hc["Retries"] = retries
    return hc


def build_create(args: argparse.Namespace, *, detach: bool = False,
                 environ: Mapping[str, str] | None = None, cwd: str | None = None,
                 console_size: tuple[int, int] | None = None) -> CreateSpec:
    """The create body of parsed ``run``/``create`` flags (``detach``: ``run -d``)."""
    environ = os.environ if environ is None else environ
    cwd = os.getcwd() if cwd is None else cwd
    attach = set(args.attach or ())
    if detach and attach:
        raise _bad("Conflicting options: -a and -d")
    if args.rm and args.restart not in ("no", ""):
        raise _bad("Conflicting options: cannot specify both --restart and --rm")
    attach_stdin = not detach and (args.interactive or "stdin" in attach)
    attach_out = not detach and (not attach or "stdout" in attach)
    attach_err = not detach and (not attach or "stderr" in attach)
    env = [e for path in args.env_file for e in _env_file(path, environ)]
    env += [resolve_env(e, environ) for e in args.env]
    binds: list[str] = []
    volumes: dict[str, Any] = {}
    for v in args.volume:
        _volume(v, cwd, binds, volumes)
    config: dict[str, Any] = {
        "Image": args.image,
        "Tty": bool(args.tty),
        "OpenStdin": bool(args.interactive),
        "StdinOnce": bool(args.interactive and attach_stdin),
        "AttachStdin": attach_stdin,
        "AttachStdout": attach_out,
        "AttachStderr": attach_err,
    }
    if args.command:
        config["Cmd"] = list(args.command)
    if args.entrypoint is not None:
        config["Entrypoint"] = [args.entrypoint] if args.entrypoint else [""]
    labels = parse_kv(args.label, "label", status=125)
    for key, value in (("Env", env), ("Labels", labels), ("Volumes", volumes),
                       ("WorkingDir", args.workdir), ("User", args.user),
                       ("Hostname", args.hostname), ("StopSignal", args.stop_signal)):
        if value:
            config[key] = value
    if (stop_timeout := _int(args.stop_timeout, "--stop-timeout")) is not None:
        config["StopTimeout"] = stop_timeout
    if (hc := _healthcheck(args)) is not None:
        config["Healthcheck"] = hc
    host: dict[str, Any] = {"RestartPolicy": _restart(args.restart or "no"),
                            "AutoRemove": bool(args.rm)}
    if args.memory is not None:
        host["Memory"] = parse_ram(args.memory)
    if args.cpus is not None:
        try:
            host["NanoCpus"] = round(float(args.cpus) * 1e9)
        except ValueError:
            raise _bad(f"invalid argument {args.cpus!r} for \"--cpus\" flag") from None
    if (pids := _int(args.pids_limit, "--pids-limit")) is not None:
        host["PidsLimit"] = pids
    tmpfs = {}
    for t in args.tmpfs:
        dest, _, opts = t.partition(":")
        if not dest.startswith("/"):
            raise _bad(f"invalid tmpfs destination {dest!r}: must be an absolute path")
        tmpfs[dest] = opts
    log_opts = parse_kv(args.log_opt, "log option", require_eq=True, status=125)
    for key, value in (("Binds", binds), ("Mounts", [parse_mount(m) for m in args.mount]),
                       ("Tmpfs", tmpfs), ("NetworkMode", args.network),
                       ("Ulimits", [parse_ulimit(u) for u in args.ulimit]),
                       ("CapAdd", args.cap_add), ("CapDrop", args.cap_drop),
                       ("Privileged", args.privileged), ("ReadonlyRootfs", args.read_only),
                       ("SecurityOpt", _security_opts(args.security_opt)),
                       ("Init", args.init), ("Runtime", args.runtime)):
        if value:
            host[key] = value
    if args.log_driver or log_opts:
        host["LogConfig"] = {"Type": args.log_driver or "", "Config": log_opts}
    if args.tty and console_size is not None:
        host["ConsoleSize"] = list(console_size)
    config["HostConfig"] = host
    return CreateSpec(config, args.name)
