"""Container verbs: ps, stop, kill, restart, rm, logs, inspect, wait, pause, unpause,
rename, top, export, diff.

Verbs taking several containers do each in turn, print the name given for each one
done (docker's habit), report each failure on stderr and exit 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from typing import Any

from ketch.client.cli.base import (
    Command,
    Context,
    UsageError,
    error_text,
    parse_filters,
    parse_timestamp,
)
from ketch.client.cli.format import (
    created_at,
    ellipsis,
    human_size,
    inspect_each,
    render_rows,
    short_id,
    since,
    tabulate,
)
from ketch.client.cli.term import is_tty
from ketch.client.engine import STDERR
from ketch.errors import KetchError, NotModified

__all__ = ["COMMANDS", "PS_HEADERS", "container_rows", "write_stream"]

PS_TABLE = "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t" \
           "{{.Ports}}\t{{.Names}}"
PS_HEADERS = {"ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND",
              "CreatedAt": "CREATED AT", "RunningFor": "CREATED", "Ports": "PORTS",
              "State": "STATE", "Status": "STATUS", "Size": "SIZE", "Names": "NAMES",
              "Labels": "LABELS", "Mounts": "MOUNTS", "Networks": "NETWORKS",
              "LocalVolumes": "LOCAL VOLUMES"}
_CHANGE_KINDS = {0: "C", 1: "A", 2: "D"}


def _ports(ports: list[dict[str, Any]] | None) -> str:
    out = []
    for p in ports or []:
        proto = p.get("Type") or "tcp"
        if p.get("PublicPort"):
            ip = p.get("IP") or "0.0.0.0"
            host = f"[{ip}]" if ":" in ip else ip
            out.append(f"{host}:{p['PublicPort']}->{p.get('PrivatePort')}/{proto}")
        else:
            out.append(f"{p.get('PrivatePort')}/{proto}")
    return ", ".join(out)


def _image(c: Mapping[str, Any], trunc: bool) -> str:
    image = str(c.get("Image") or "")
    if not image:
        return "<no image>"
    if not trunc:
        return image
    if image.startswith("sha256:") or image == str(c.get("ImageID") or ""):
        return short_id(image)
    return image.split("@", 1)[0]  # a digest-pinned reference shows as its name


def container_rows(containers: list[dict[str, Any]], *, trunc: bool = True,
                   now: float | None = None) -> list[dict[str, str]]:
    """ContainerSummary objects → the fields docker's ps templates know."""
    rows = []
    for c in containers:
        names = [n.lstrip("/") for n in c.get("Names") or []]
        if trunc:
            names = [n for n in names if "/" not in n]  # link aliases
        command = str(c.get("Command") or "")
        labels = c.get("Labels") or {}
        mounts = c.get("Mounts") or []
        nets = ((c.get("NetworkSettings") or {}).get("Networks") or {})
        size = human_size(c.get("SizeRw") or 0)
        if c.get("SizeRootFs"):
            size += f" (virtual {human_size(c['SizeRootFs'])})"
        created = float(c.get("Created") or 0)
        rows.append({
            "ID": short_id(str(c.get("Id", ""))) if trunc else str(c.get("Id", "")),
            "Image": _image(c, trunc),
            "Command": json.dumps(ellipsis(command, 20) if trunc else command,
                                  ensure_ascii=False),
            "CreatedAt": created_at(created),
            "RunningFor": since(created, now),
            "Ports": _ports(c.get("Ports")),
            "State": str(c.get("State") or ""),
            "Status": str(c.get("Status") or ""),
            "Size": size,
            "Names": ",".join(names),
            "Labels": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
            "Mounts": ",".join(str(m.get("Name") or m.get("Source") or "") for m in mounts),
            "Networks": ",".join(sorted(nets)),
            "LocalVolumes": str(sum(1 for m in mounts if m.get("Driver") == "local")),
        })
    return rows


def _ps(ctx: Context, args: argparse.Namespace) -> int:
    limit = 1 if args.latest else args.last if args.last is not None and args.last >= 0 else None
    fmt = args.format or ""
    containers = ctx.client.container_list(
        all=args.all or limit is not None, limit=limit, filters=parse_filters(args.filter),
        size=args.size or "{{.Size}}" in fmt)
    rows = container_rows(containers, trunc=not args.no_trunc)
    if args.quiet:
        fmt = "{{.ID}}"
    elif args.size and not fmt:
        fmt = PS_TABLE + "\t{{.Size}}"
    render_rows(ctx.out, rows, fmt, default=PS_TABLE, headers=PS_HEADERS)
    return 0


def _setup_ps(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="show all containers")
    p.add_argument("-q", "--quiet", action="store_true", help="only display container IDs")
    p.add_argument("-n", "--last", type=int, help="show n last created containers")
    p.add_argument("-l", "--latest", action="store_true", help="show the latest container")
    p.add_argument("-s", "--size", action="store_true", help="display total file sizes")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("-f", "--filter", action="append", help="filter output (name=value)")
    p.add_argument("--format", help="format output: table, json or a Go template")


def _each(ctx: Context, names: list[str], action: Callable[[str], object]) -> int:
    status = 0
    for name in names:
        try:
            action(name)
        except NotModified:
            pass
        except KetchError as e:
            ctx.error(error_text(e))
            status = 1
            continue
        ctx.out.write(name + "\n")
    return status


def _stop(ctx: Context, args: argparse.Namespace) -> int:
    return _each(ctx, args.containers, lambda c: ctx.client.container_stop(
        c, timeout=args.time, signal=args.signal))


def _restart(ctx: Context, args: argparse.Namespace) -> int:
    return _each(ctx, args.containers, lambda c: ctx.client.container_restart(
        c, timeout=args.time, signal=args.signal))


def _kill(ctx: Context, args: argparse.Namespace) -> int:
    return _each(ctx, args.containers,
                 lambda c: ctx.client.container_kill(c, signal=args.signal))


def _rm(ctx: Context, args: argparse.Namespace) -> int:
    return _each(ctx, args.containers, lambda c: ctx.client.container_remove(
        c, force=args.force, volumes=args.volumes))


def _pause(ctx: Context, args: argparse.Namespace) -> int:
    return _each(ctx, args.containers, ctx.client.container_pause)


def _unpause(ctx: Context, args: argparse.Namespace) -> int:
    return _each(ctx, args.containers, ctx.client.container_unpause)


def _setup_stop(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "--time", "--timeout", dest="time", type=int,
                   help="seconds to wait before killing the container")
    p.add_argument("-s", "--signal", help="signal to send to the container")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def _setup_kill(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", "--signal", help="signal to send to the container")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def _setup_rm(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="force the removal (SIGKILL)")
    p.add_argument("-v", "--volumes", action="store_true",
                   help="remove anonymous volumes associated with the container")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def _setup_many(p: argparse.ArgumentParser) -> None:
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def write_stream(ctx: Context, pieces: Any) -> None:
    """Write ``(stream, data)`` pieces to stdout/stderr as raw bytes."""
    out, err = ctx.out_bytes, ctx.err.buffer
    for number, data in pieces:
        target = err if number == STDERR else out
        target.write(data)
        target.flush()


def _logs(ctx: Context, args: argparse.Namespace) -> int:
    pieces = ctx.client.container_logs(
        args.container, follow=args.follow, timestamps=args.timestamps,
        since=parse_timestamp(args.since) if args.since else None,
        until=parse_timestamp(args.until) if args.until else None, tail=args.tail)
    try:
        write_stream(ctx, pieces)
    finally:
        pieces.close()
    return 0


def _setup_logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--follow", action="store_true", help="follow log output")
    p.add_argument("-t", "--timestamps", action="store_true", help="show timestamps")
    p.add_argument("-n", "--tail", default="all", help="number of lines from the end")
    p.add_argument("--since", help="since a timestamp or a relative time (42m)")
    p.add_argument("--until", help="before a timestamp or a relative time (42m)")
    p.add_argument("container")


def _inspect(ctx: Context, args: argparse.Namespace) -> int:
    return inspect_each(ctx, args.containers,
                        lambda n: ctx.client.container_inspect(n, size=args.size), args.format)


def _setup_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", help="format output using a Go template or json")
    p.add_argument("-s", "--size", action="store_true", help="display total file sizes")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def _wait(ctx: Context, args: argparse.Namespace) -> int:
    status = 0
    for name in args.containers:
        try:
            result = ctx.client.container_wait(name).result()
        except KetchError as e:
            ctx.error(error_text(e))
            status = 1
            continue
        ctx.out.write(f"{result['StatusCode']}\n")
    return status


def _rename(ctx: Context, args: argparse.Namespace) -> int:
    ctx.client.container_rename(args.container, args.new_name)
    return 0


def _setup_rename(p: argparse.ArgumentParser) -> None:
    p.add_argument("container")
    p.add_argument("new_name", metavar="NEW_NAME")


def _top(ctx: Context, args: argparse.Namespace) -> int:
    top = ctx.client.container_top(args.container, " ".join(args.ps_args) or None)
    rows = [list(top.get("Titles") or [])]
    rows += [[str(x) for x in proc] for proc in top.get("Processes") or []]
    ctx.out.write(tabulate(rows, min_width=20))
    return 0


def _setup_top(p: argparse.ArgumentParser) -> None:
    p.add_argument("container")
    p.add_argument("ps_args", nargs=argparse.REMAINDER, metavar="ps OPTIONS")


def _export(ctx: Context, args: argparse.Namespace) -> int:
    if not args.output and is_tty(ctx.out):
        raise UsageError("cowardly refusing to save to a terminal. "
                         "Use the -o flag or redirect")
    chunks = ctx.client.container_export(args.container)
    try:
        if args.output:
            with open(args.output, "wb") as f:
                for data in chunks:
                    f.write(data)
        else:
            out = ctx.out_bytes
            for data in chunks:
                out.write(data)
            out.flush()
    finally:
        chunks.close()
    return 0


def _setup_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", help="write to a file, instead of STDOUT")
    p.add_argument("container")


def _diff(ctx: Context, args: argparse.Namespace) -> int:
    for change in ctx.client.container_changes(args.container):
        ctx.out.write(f"{_CHANGE_KINDS.get(change.get('Kind', 0), '?')} {change.get('Path')}\n")
    return 0


def _setup_one(p: argparse.ArgumentParser) -> None:
    p.add_argument("container")


COMMANDS = [
    Command("ps", "List containers", _setup_ps, _ps, aliases=("ls", "list")),
    Command("stop", "Stop one or more running containers", _setup_stop, _stop),
    Command("kill", "Kill one or more running containers", _setup_kill, _kill),
    Command("restart", "Restart one or more containers", _setup_stop, _restart),
    Command("rm", "Remove one or more containers", _setup_rm, _rm, aliases=("remove",)),
    Command("logs", "Fetch the logs of a container", _setup_logs, _logs),
    Command("inspect", "Display detailed information on one or more containers",
            _setup_inspect, _inspect),
    Command("wait", "Block until one or more containers stop, then print their exit codes",
            _setup_many, _wait),
    Command("pause", "Pause all processes within one or more containers", _setup_many, _pause),
    Command("unpause", "Unpause all processes within one or more containers", _setup_many,
            _unpause),
    Command("rename", "Rename a container", _setup_rename, _rename),
    Command("top", "Display the running processes of a container", _setup_top, _top),
    Command("export", "Export a container's filesystem as a tar archive", _setup_export,
            _export),
    Command("diff", "Inspect changes to files or directories on a container's filesystem",
            _setup_one, _diff),
]
