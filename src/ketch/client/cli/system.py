"""Engine-wide verbs: version, info, events, system df, and ``inspect`` of any object."""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import ketch
from ketch.client.cli.base import Command, Context, error_text, parse_filters, parse_timestamp
from ketch.client.cli.format import Template, human_size, tabulate, write_inspect
from ketch.client.http import API_VERSION
from ketch.errors import KetchError, NotFound

__all__ = ["COMMANDS", "SYSTEM_COMMANDS", "binary_size", "df_table", "event_line"]

_BINARY = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


def binary_size(size: float) -> str:
    """docker's BytesSize: binary units, 4 significant digits (``3.821GiB``)."""
    unit = 0
    while size >= 1024 and unit < len(_BINARY) - 1:
        size /= 1024
        unit += 1
    return f"{size:.4g}{_BINARY[unit]}"


def _lines(pairs: list[tuple[str, Any]], indent: str, width: int) -> str:
    return "".join(f"{indent}{(k + ':').ljust(width)}{v}\n" for k, v in pairs)


def _client_version(server_api: str | None) -> dict[str, Any]:
    api = API_VERSION
    if server_api and tuple(map(int, server_api.split("."))) < (1, 47):
        api = server_api
    machine = platform.machine()
    return {"Version": ketch.__version__, "ApiVersion": api, "DefaultAPIVersion": API_VERSION,
            "GoVersion": f"python{platform.python_version()}", "GitCommit": "unknown",
            "Os": "linux", "Arch": _GOARCH.get(machine, machine)}


def _version(ctx: Context, args: argparse.Namespace) -> int:
    server: dict[str, Any] | None = None
    failure: KetchError | None = None
    try:
        server_api = ctx.client.ping()
        server = ctx.client.version()
    except KetchError as e:
        server_api, failure = None, e
    client = _client_version(server_api)
    if args.format:
        ctx.out.write(Template(args.format).render({"Client": client, "Server": server}) + "\n")
    else:
        ctx.out.write("Client:\n" + _lines([
            ("Version", client["Version"]), ("API version", client["ApiVersion"]),
            ("Python version", platform.python_version()),
            ("OS/Arch", f"{client['Os']}/{client['Arch']}")], " ", 19))
        if server is not None:
            name = (server.get("Platform") or {}).get("Name") or "ketch Engine"
            ctx.out.write(f"\nServer: {name}\n Engine:\n" + _lines([
                ("Version", server.get("Version", "")),
                ("API version", f"{server.get('ApiVersion', '')} (minimum version "
                                f"{server.get('MinAPIVersion', '')})"),
                ("Python version", server.get("GoVersion", "")),
                ("Git commit", server.get("GitCommit", "")),
                ("Built", server.get("BuildTime", "")),
                ("OS/Arch", f"{server.get('Os', '')}/{server.get('Arch', '')}"),
                ("Experimental", str(server.get("Experimental", False)).lower())], "  ", 18))
    if failure is not None:
        ctx.error(error_text(failure))
        return 1
    return 0


def _info(ctx: Context, args: argparse.Namespace) -> int:
    info = ctx.client.info()
    if args.format:
        ctx.out.write(Template(args.format).render(info) + "\n")
        return 0
    runtimes = " ".join(sorted(info.get("Runtimes") or {}))
    pairs: list[tuple[str, Any]] = [
        ("Containers", info.get("Containers", 0)),
        (" Running", info.get("ContainersRunning", 0)),
        (" Paused", info.get("ContainersPaused", 0)),
        (" Stopped", info.get("ContainersStopped", 0)),
        ("Images", info.get("Images", 0)),
        ("Server Version", info.get("ServerVersion", "")),
        ("Storage Driver", info.get("Driver", "")),
        ("Logging Driver", info.get("LoggingDriver", "")),
        ("Cgroup Driver", info.get("CgroupDriver", "")),
        ("Cgroup Version", info.get("CgroupVersion", "")),
        ("Runtimes", runtimes),
        ("Default Runtime", info.get("DefaultRuntime", "")),
        ("Security Options", " ".join(str(o).split(",")[0].removeprefix("name=")
                                      for o in info.get("SecurityOptions") or [])),
        ("Kernel Version", info.get("KernelVersion", "")),
        ("Operating System", info.get("OperatingSystem", "")),
        ("OSType", info.get("OSType", "")),
        ("Architecture", info.get("Architecture", "")),
        ("CPUs", info.get("NCPU", 0)),
        ("Total Memory", binary_size(info.get("MemTotal") or 0)),
        ("Name", info.get("Name", "")),
        ("ID", info.get("ID", "")),
        ("Docker Root Dir", info.get("DockerRootDir", "")),
        ("Debug Mode", str(bool(info.get("Debug"))).lower()),
    ]
    ctx.out.write(f"Client:\n Version:    {ketch.__version__}\n\nServer:\n")
    ctx.out.write("".join(f" {k}: {v}\n" for k, v in pairs))
    for w in info.get("Warnings") or []:
        ctx.out.write(f"{w}\n")
    return 0


def _event_time(ev: dict[str, Any]) -> str:
    nanos = int(ev.get("timeNano") or int(ev.get("time") or 0) * 1_000_000_000)
    t = datetime.fromtimestamp(nanos // 1_000_000_000, UTC).astimezone()
    offset = t.strftime("%z")
    zone = "Z" if offset in ("+0000", "") else f"{offset[:3]}:{offset[3:]}"
    return f"{t:%Y-%m-%dT%H:%M:%S}.{nanos % 1_000_000_000:09d}{zone}"


def event_line(ev: dict[str, Any]) -> str:
    """docker's event line: ``<time> <type> <action> <id> (k=v, ...)``."""
    actor = ev.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    line = f"{_event_time(ev)} {ev.get('Type', '')} {ev.get('Action', '')} {actor.get('ID', '')}"
    if attrs:
        line += " (" + ", ".join(f"{k}={attrs[k]}" for k in sorted(attrs)) + ")"
    return line


def _events(ctx: Context, args: argparse.Namespace) -> int:
    tpl = Template(args.format) if args.format and args.format.strip() != "json" else None
    messages = ctx.client.events(
        since=parse_timestamp(args.since) if args.since else None,
        until=parse_timestamp(args.until) if args.until else None,
        filters=parse_filters(args.filter))
    try:
        for ev in messages:
            if tpl is not None:
                line = tpl.render(ev)
            elif args.format:
                line = Template("{{json .}}").render(ev)
            else:
                line = event_line(ev)
            ctx.out.write(line + "\n")
            ctx.out.flush()
    finally:
        messages.close()
    return 0


def _setup_events(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--filter", action="append", help="filter output (name=value)")
    p.add_argument("--since", help="show all events created since timestamp")
    p.add_argument("--until", help="stream events until this timestamp")
    p.add_argument("--format", help="format output: json or a Go template")


def _pct(part: int, total: int) -> str:
    return f"{human_size(part, 4)} ({part * 100 // total}%)" if total > 0 else \
        human_size(part, 4)


def df_table(df: dict[str, Any]) -> str:
    """The ``system df`` summary table of a ``/system/df`` reply (docker's arithmetic)."""
    images = df.get("Images") or []
    total = int(df.get("LayersSize") or 0)
    used = sum(int(i.get("Size") or 0) - max(int(i.get("SharedSize") or 0), 0)
               for i in images if int(i.get("Containers") or 0) > 0)
    containers = df.get("Containers") or []
    c_size = sum(int(c.get("SizeRw") or 0) for c in containers)
    c_free = sum(int(c.get("SizeRw") or 0) for c in containers if c.get("State") != "running")
    volumes = df.get("Volumes") or []

    def usage(v: dict[str, Any], key: str) -> int:
        return int((v.get("UsageData") or {}).get(key, -1))

    v_size = sum(max(usage(v, "Size"), 0) for v in volumes)
    v_free = sum(max(usage(v, "Size"), 0) for v in volumes if usage(v, "RefCount") == 0)
    cache = df.get("BuildCache") or []
    b_size = sum(int(b.get("Size") or 0) for b in cache)
    b_free = sum(int(b.get("Size") or 0) for b in cache if not b.get("InUse"))
    rows = [
        ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"],
        ["Images", str(len(images)),
         str(sum(1 for i in images if int(i.get("Containers") or 0) > 0)),
         human_size(total, 4), _pct(total - used, total)],
        ["Containers", str(len(containers)),
         str(sum(1 for c in containers if c.get("State") == "running")),
         human_size(c_size, 4), _pct(c_free, c_size)],
        ["Local Volumes", str(len(volumes)),
         str(sum(1 for v in volumes if usage(v, "RefCount") > 0)),
         human_size(v_size, 4), _pct(v_free, v_size)],
        ["Build Cache", str(len(cache)), str(sum(1 for b in cache if b.get("InUse"))),
         human_size(b_size, 4), human_size(b_free, 4)],
    ]
    return tabulate(rows)


def _df(ctx: Context, args: argparse.Namespace) -> int:
    df = ctx.client.df()
    if args.format:
        ctx.out.write(Template(args.format).render(df) + "\n")
    else:
        ctx.out.write(df_table(df))
    return 0


def _setup_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", help="format output using a Go template")


def _inspect(ctx: Context, args: argparse.Namespace) -> int:
    client = ctx.client
    lookups: dict[str, Callable[[str], dict[str, Any]]] = {
        "container": lambda n: client.container_inspect(n, size=args.size),
        "image": client.image_inspect,
        "volume": client.volume_inspect,
    }
    kinds = [args.type] if args.type else list(lookups)
    found, status = [], 0
    for name in args.names:
        for kind in kinds:
            try:
                found.append(lookups[kind](name))
                break
            except NotFound:
                continue
        else:
            what = f"{args.type}" if args.type else "object"
            ctx.error(f"Error: No such {what}: {name}")
            status = 1
    write_inspect(ctx.out, found, args.format)
    return status


def _setup_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", help="format output using a Go template or json")
    p.add_argument("-s", "--size", action="store_true", help="display total file sizes")
    p.add_argument("--type", choices=("container", "image", "volume"),
                   help="only inspect objects of this type")
    p.add_argument("names", nargs="+", metavar="NAME|ID")


VERSION = Command("version", "Show the ketch version information", _setup_format, _version)
INFO = Command("info", "Display system-wide information", _setup_format, _info)
EVENTS = Command("events", "Get real time events from the server", _setup_events, _events)

COMMANDS = [
    VERSION, INFO, EVENTS,
    Command("inspect", "Return low-level information on ketch objects", _setup_inspect,
            _inspect),
]
SYSTEM_COMMANDS = [
    Command("df", "Show ketch disk usage", _setup_format, _df),
    INFO, EVENTS,
]
