"""``ketch volume create|ls|inspect|rm|prune``."""

from __future__ import annotations

import argparse
from typing import Any

from ketch.client.cli.base import Command, Context, error_text, parse_filters, parse_kv
from ketch.client.cli.format import human_size, inspect_each, render_rows
from ketch.client.cli.images import confirm
from ketch.errors import KetchError

__all__ = ["VOLUME_COMMANDS", "VOLUME_HEADERS", "volume_rows"]

VOLUMES_TABLE = "table {{.Driver}}\t{{.Name}}"
VOLUME_HEADERS = {"Driver": "DRIVER", "Name": "VOLUME NAME", "Scope": "SCOPE",
                  "Mountpoint": "MOUNTPOINT", "Labels": "LABELS", "Links": "LINKS",
                  "Size": "SIZE"}


def volume_rows(volumes: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Volume objects → the fields docker's volume templates know."""
    rows = []
    for v in volumes:
        usage = v.get("UsageData") or {}
        size, refs = usage.get("Size", -1), usage.get("RefCount", -1)
        labels = v.get("Labels") or {}
        rows.append({
            "Name": str(v.get("Name") or ""),
            "Driver": str(v.get("Driver") or ""),
            "Scope": str(v.get("Scope") or "local"),
            "Mountpoint": str(v.get("Mountpoint") or ""),
            "Labels": ",".join(f"{k}={val}" for k, val in sorted(labels.items())),
            "Links": "N/A" if refs is None or refs < 0 else str(refs),
            "Size": "N/A" if size is None or size < 0 else human_size(size),
        })
    return rows


def _create(ctx: Context, args: argparse.Namespace) -> int:
    vol = ctx.client.volume_create(args.name or args.name_flag, driver=args.driver,
                                   driver_opts=parse_kv(args.opt, "option", require_eq=True),
                                   labels=parse_kv(args.label, "label"))
    ctx.out.write(f"{vol.get('Name', '')}\n")
    return 0


def _setup_create(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--driver", default="local", help="volume driver name")
    p.add_argument("-o", "--opt", action="append", default=[], help="driver options")
    p.add_argument("--label", action="append", default=[], help="metadata for a volume")
    p.add_argument("--name", dest="name_flag", help="volume name")
    p.add_argument("name", nargs="?", metavar="VOLUME")


def _ls(ctx: Context, args: argparse.Namespace) -> int:
    listing = ctx.client.volume_list(filters=parse_filters(args.filter))
    for w in listing.get("Warnings") or []:
        ctx.error(f"WARNING: {w}")
    rows = volume_rows(sorted(listing.get("Volumes") or [], key=lambda v: v.get("Name", "")))
    fmt = "{{.Name}}" if args.quiet else args.format
    render_rows(ctx.out, rows, fmt, default=VOLUMES_TABLE, headers=VOLUME_HEADERS)
    return 0


def _setup_ls(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="only display volume names")
    p.add_argument("-f", "--filter", action="append", help="provide filter values")
    p.add_argument("--format", help="format output: table, json or a Go template")


def _inspect(ctx: Context, args: argparse.Namespace) -> int:
    return inspect_each(ctx, args.volumes, ctx.client.volume_inspect, args.format)


def _setup_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", help="format output using a Go template or json")
    p.add_argument("volumes", nargs="+", metavar="VOLUME")


def _rm(ctx: Context, args: argparse.Namespace) -> int:
    status = 0
    for name in args.volumes:
        try:
            ctx.client.volume_remove(name, force=args.force)
        except KetchError as e:
            ctx.error(error_text(e))
            status = 1
            continue
        ctx.out.write(name + "\n")
    return status


def _setup_rm(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="force the removal")
    p.add_argument("volumes", nargs="+", metavar="VOLUME")


def _prune(ctx: Context, args: argparse.Namespace) -> int:
    filters = parse_filters(args.filter)
    if args.all:
        filters["all"] = ["true"]
    warning = ("WARNING! This will remove all local volumes not used by at least one "
               "container." if args.all else
               "WARNING! This will remove anonymous local volumes not used by at least one "
               "container.")
    if not args.force and not confirm(ctx, warning):
        return 0
    report = ctx.client.volume_prune(filters=filters)
    deleted = report.get("VolumesDeleted") or []
    if deleted:
        ctx.out.write("Deleted Volumes:\n" + "".join(f"{v}\n" for v in deleted) + "\n")
    ctx.out.write(f"Total reclaimed space: {human_size(report.get('SpaceReclaimed') or 0)}\n")
    return 0


def _setup_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true",
                   help="remove all unused volumes, not just anonymous ones")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    p.add_argument("--filter", action="append", help="provide filter values (label=<label>)")


VOLUME_COMMANDS = [
    Command("create", "Create a volume", _setup_create, _create),
    Command("ls", "List volumes", _setup_ls, _ls, aliases=("list",)),
    Command("inspect", "Display detailed information on one or more volumes", _setup_inspect,
            _inspect),
    Command("rm", "Remove one or more volumes", _setup_rm, _rm, aliases=("remove",)),
    Command("prune", "Remove unused local volumes", _setup_prune, _prune),
]
