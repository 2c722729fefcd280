"""Image verbs: images (image ls), rmi, tag, load, save, import, history, image prune,
image inspect, pull, push. ``image bootstrap`` is in :mod:`ketch.client.cli.bootstrap`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from typing import Any, BinaryIO, TextIO

from ketch.client.cli.base import Command, Context, UsageError, error_text, parse_filters
from ketch.client.cli.format import (
    created_at,
    ellipsis,
    human_size,
    inspect_each,
    render_rows,
    short_id,
    since,
)
from ketch.client.cli.term import Progress, ProgressReader, is_tty
from ketch.errors import KetchError

__all__ = ["COMMANDS", "IMAGE_HEADERS", "ProgressDisplay", "confirm", "familiar", "image_rows",
           "load_tarball", "registry_of", "split_ref"]

IMAGES_TABLE = "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
DIGESTS_TABLE = ("table {{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t{{.CreatedSince}}"
                 "\t{{.Size}}")
IMAGE_HEADERS = {"Repository": "REPOSITORY", "Tag": "TAG", "ID": "IMAGE ID",
                 "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "Size": "SIZE",
                 "Digest": "DIGEST", "Containers": "CONTAINERS", "SharedSize": "SHARED SIZE",
                 "UniqueSize": "UNIQUE SIZE", "VirtualSize": "SIZE"}
HISTORY_TABLE = ("table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}")
HISTORY_HEADERS = {"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT",
                   "CreatedBy": "CREATED BY", "Size": "SIZE", "Comment": "COMMENT"}
_NONE = "<none>"


def split_ref(ref: str) -> tuple[str, str | None]:
    """``repo/name:tag`` → ``("repo/name", "tag")``; no tag → None (a port is not a tag)."""
    if "@" in ref:
        return ref.split("@", 1)[0], None
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1:]
    return ref, None


def _num(v: Any) -> str:
    return "N/A" if v is None or v == -1 else str(v)


def familiar(repo: str) -> str:
    """``docker.io/library/busybox`` → ``busybox`` (docker's short spelling)."""
    if repo.startswith("docker.io/"):
        repo = repo[len("docker.io/"):]
        if repo.startswith("library/") and repo.count("/") == 1:
            repo = repo[len("library/"):]
    return repo


def image_rows(images: list[dict[str, Any]], *, trunc: bool = True, digests: bool = False,
               now: float | None = None) -> list[dict[str, str]]:
    """ImageSummary objects → docker's image rows: one per repository:tag (``<none>``
    for untagged ones), with the fields its templates know. Without ``digests`` a
    tagged row's Digest is ``<none>`` and digest-only references get one row each
    repository."""
    rows = []
    for img in images:
        ident = str(img.get("Id", ""))
        created = float(img.get("Created") or 0)
        size = int(img.get("Size") or 0)
        shared = img.get("SharedSize")
        has_shared = isinstance(shared, int) and shared >= 0
        base = {
            "ID": short_id(ident) if trunc else ident,
            "CreatedAt": created_at(created),
            "CreatedSince": since(created, now) if created else "",
            "Size": human_size(size),
            "VirtualSize": human_size(size, 4),
            "SharedSize": human_size(int(shared or 0), 4) if has_shared else "N/A",
            "UniqueSize": human_size(size - int(shared or 0), 4) if has_shared else "N/A",
            "Containers": _num(img.get("Containers")),
        }
        by_repo: dict[str, list[str]] = {}
        for d in img.get("RepoDigests") or []:
            repo, at, digest = str(d).partition("@")
            if at and repo != "<none>":
                by_repo.setdefault(familiar(repo), []).append(digest)
        pairs: list[tuple[str, str, str]] = []
        for t in img.get("RepoTags") or []:
            if t == "<none>:<none>":
                continue
            repo, tag = split_ref(t)
            repo = familiar(repo)
            found = by_repo.get(repo) if digests else None
            pairs += [(repo, tag or _NONE, d) for d in found or [_NONE]]
        tagged = {p[0] for p in pairs}
        for repo, found in by_repo.items():
            if repo not in tagged:
                pairs += [(repo, _NONE, d) for d in found] if digests else [(repo, _NONE, "")]
        if not pairs:
            pairs = [(_NONE, _NONE, _NONE)]
        for repo, tag, digest in pairs:
            rows.append({**base, "Repository": repo, "Tag": tag, "Digest": digest})
    return rows


def _images(ctx: Context, args: argparse.Namespace) -> int:
    filters = parse_filters(args.filter)
    if args.reference:
        filters.setdefault("reference", []).append(args.reference)
    images = ctx.client.image_list(all=args.all, digests=args.digests, filters=filters)
    fmt = "{{.ID}}" if args.quiet else args.format
    rows = image_rows(images, trunc=not args.no_trunc,
                      digests=args.digests or "{{.Digest}}" in (fmt or ""))
    render_rows(ctx.out, rows, fmt, default=DIGESTS_TABLE if args.digests else IMAGES_TABLE,
                headers=IMAGE_HEADERS)
    return 0


def _setup_images(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="show all images")
    p.add_argument("-q", "--quiet", action="store_true", help="only show image IDs")
    p.add_argument("--digests", action="store_true", help="show digests")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("-f", "--filter", action="append", help="filter output (name=value)")
    p.add_argument("--format", help="format output: table, json or a Go template")
    p.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]")


def _rmi(ctx: Context, args: argparse.Namespace) -> int:
    status = 0
    for name in args.images:
        try:
            items = ctx.client.image_remove(name, force=args.force, noprune=args.no_prune)
        except KetchError as e:
            ctx.error(error_text(e))
            status = 1
            continue
        for item in items:
            for key in ("Untagged", "Deleted"):
                if item.get(key):
                    ctx.out.write(f"{key}: {item[key]}\n")
    return status


def _setup_rmi(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="force removal of the image")
    p.add_argument("--no-prune", action="store_true", help="do not delete untagged parents")
    p.add_argument("images", nargs="+", metavar="IMAGE")


def _tag(ctx: Context, args: argparse.Namespace) -> int:
    repo, tag = split_ref(args.target)
    ctx.client.image_tag(args.source, repo, tag)
    return 0


def _setup_tag(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE_IMAGE[:TAG]")
    p.add_argument("target", metavar="TARGET_IMAGE[:TAG]")


def load_tarball(ctx: Context, f: BinaryIO, *, quiet: bool = False,
                 progress: Progress | None = None) -> list[str]:
    """Send a ``docker save``/OCI tarball to the engine; print its messages (``Loaded
    image: x``) and return the names/IDs it loaded."""
    size = None
    try:
        size = os.fstat(f.fileno()).st_size or None
    except (OSError, ValueError, AttributeError):
        pass
    prog = progress or Progress("Loading", ctx.err)
    prog.phase("Loading", size)
    body = ProgressReader(f, prog) if prog.enabled else f
    loaded: list[str] = []
    messages = ctx.client.image_load(body, quiet=quiet)
    try:
        for msg in messages:
            text = msg.get("stream") or msg.get("status") or ""
            if not text:
                continue
            prog.finish()
            ctx.out.write(text if text.endswith("\n") else text + "\n")
            ctx.out.flush()
            for prefix in ("Loaded image: ", "Loaded image ID: "):
                if text.startswith(prefix):
                    loaded.append(text[len(prefix):].strip())
    finally:
        messages.close()
        prog.finish()
    return loaded


def _load(ctx: Context, args: argparse.Namespace) -> int:
    if args.input:
        with open(args.input, "rb") as f:
            load_tarball(ctx, f, quiet=args.quiet)
        return 0
    if is_tty(ctx.stdin):
        raise UsageError("requested load from stdin, but stdin is empty")
    load_tarball(ctx, ctx.in_bytes, quiet=args.quiet)
    return 0


def _setup_load(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--input", help="read from tar archive file, instead of STDIN")
    p.add_argument("-q", "--quiet", action="store_true", help="suppress the load output")


def _write_chunks(chunks: Iterable[bytes], out: BinaryIO, progress: Progress) -> None:
    for data in chunks:
        out.write(data)
        progress.add(len(data))
    out.flush()


def _save(ctx: Context, args: argparse.Namespace) -> int:
    if not args.output and is_tty(ctx.out):
        raise UsageError("cowardly refusing to save to a terminal. "
                         "Use the -o flag or redirect")
    chunks = ctx.client.image_save(args.images)
    progress = Progress("Saving", ctx.err)
    try:
        if args.output:
            with open(args.output, "wb") as f:
                _write_chunks(chunks, f, progress)
        else:
            _write_chunks(chunks, ctx.out_bytes, progress)
    finally:
        chunks.close()
        progress.finish()
    return 0


def _setup_save(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", help="write to a file, instead of STDOUT")
    p.add_argument("images", nargs="+", metavar="IMAGE")


def _import(ctx: Context, args: argparse.Namespace) -> int:
    repo, tag = split_ref(args.reference) if args.reference else (None, None)
    if args.file == "-":
        if is_tty(ctx.stdin):
            raise UsageError("requested import from stdin, but stdin is a terminal")
        f: BinaryIO = ctx.in_bytes
    elif "://" in args.file:
        raise UsageError("importing from a URL is not supported; download the file first")
    else:
        f = open(args.file, "rb")  # noqa: SIM115 - closed below
    try:
        last = ""
        messages = ctx.client.image_import(f, repo=repo, tag=tag, message=args.message,
                                           changes=args.change)
        try:
            for msg in messages:
                last = str(msg.get("status") or msg.get("stream") or last)
        finally:
            messages.close()
    finally:
        if f is not ctx.in_bytes:
            f.close()
    if last:
        ctx.out.write(last.strip() + "\n")
    return 0


def _setup_import(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--change", action="append", default=[],
                   help="apply a Dockerfile instruction to the created image")
    p.add_argument("-m", "--message", help="set a commit message for the imported image")
    p.add_argument("file", metavar="file|-")
    p.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]")


def _history(ctx: Context, args: argparse.Namespace) -> int:
    rows = []
    trunc = not args.no_trunc
    for h in ctx.client.image_history(args.image):
        ident = str(h.get("Id") or "<missing>")
        created = float(h.get("Created") or 0)
        created_by = str(h.get("CreatedBy") or "").replace("\t", " ")
        rows.append({
            "ID": ident if ident == "<missing>" or not trunc else short_id(ident),
            "CreatedSince": since(created) if args.human else created_at(created),
            "CreatedAt": created_at(created),
            "CreatedBy": ellipsis(created_by, 45) if trunc else created_by,
            "Size": human_size(int(h.get("Size") or 0)) if args.human
            else str(h.get("Size") or 0),
            "Comment": str(h.get("Comment") or ""),
        })
    fmt = "{{.ID}}" if args.quiet else args.format
    render_rows(ctx.out, rows, fmt, default=HISTORY_TABLE, headers=HISTORY_HEADERS)
    return 0


def _setup_history(p: argparse.ArgumentParser) -> None:
    p.add_argument("-H", "--human", type=lambda v: v.lower() not in ("false", "0"),
                   default=True, help="print sizes and dates in human readable format")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("-q", "--quiet", action="store_true", help="only show image IDs")
    p.add_argument("--format", help="format output: table, json or a Go template")
    p.add_argument("image")


def confirm(ctx: Context, warning: str) -> bool:
    """docker's ``Are you sure you want to continue? [y/N]`` on stdin."""
    ctx.out.write(f"{warning}\nAre you sure you want to continue? [y/N] ")
    ctx.out.flush()
    answer = ctx.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def _prune(ctx: Context, args: argparse.Namespace) -> int:
    filters = parse_filters(args.filter)
    if args.all:
        filters["dangling"] = ["false"]
    warning = ("WARNING! This will remove all images without at least one container "
               "associated to them." if args.all else
               "WARNING! This will remove all dangling images.")
    if not args.force and not confirm(ctx, warning):
        return 0
    report = ctx.client.image_prune(filters=filters)
    deleted = report.get("ImagesDeleted") or []
    if deleted:
        ctx.out.write("Deleted Images:\n")
        for item in deleted:
            for key in ("Untagged", "Deleted"):
                if item.get(key):
                    ctx.out.write(f"{key.lower()}: {item[key]}\n")
        ctx.out.write("\n")
    ctx.out.write(f"Total reclaimed space: {human_size(report.get('SpaceReclaimed') or 0)}\n")
    return 0


def _setup_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true",
                   help="remove all unused images, not just dangling ones")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    p.add_argument("--filter", action="append", help="provide filter values (until=24h)")


def _inspect(ctx: Context, args: argparse.Namespace) -> int:
    return inspect_each(ctx, args.images, ctx.client.image_inspect, args.format)


def _setup_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", help="format output using a Go template or json")
    p.add_argument("images", nargs="+", metavar="IMAGE")


LS = Command("images", "List images", _setup_images, _images)
RMI = Command("rmi", "Remove one or more images", _setup_rmi, _rmi)
TAG = Command("tag", "Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE", _setup_tag, _tag)
LOAD = Command("load", "Load an image from a tar archive or STDIN", _setup_load, _load)
class ProgressDisplay:
    """Docker's JSON progress messages as the docker CLI shows them.

    On a terminal each layer ``id`` keeps one line, redrawn in place (cursor up, clear,
    rewrite, cursor down); elsewhere only status changes are printed, one per line,
    without the bars.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = is_tty(out)
        self.lines: dict[str, int] = {}
        self.last: dict[str, str] = {}

    def show(self, msg: dict[str, Any]) -> None:
        status = str(msg.get("status") or msg.get("stream") or "")
        if not status:
            return
        lid = msg.get("id")
        progress = str(msg.get("progress") or "")
        if not lid:
            self.out.write(status.rstrip("\n") + "\n")
            self.out.flush()
            return
        text = f"{lid}: {status} {progress}".rstrip()
        if not self.tty:
            if progress or self.last.get(lid) == status:
                return
            self.last[lid] = status
            self.out.write(text + "\n")
        elif lid not in self.lines:
            self.lines[lid] = len(self.lines)
            self.out.write(text + "\n")
        else:
            up = len(self.lines) - self.lines[lid]
            self.out.write(f"\x1b[{up}A\r\x1b[2K{text}\r\x1b[{up}B")
        self.out.flush()


def registry_of(ref: str) -> str:
    """The registry domain an image reference names (docker.io when none)."""
    first, sep, _ = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _auth_for(ref: str) -> str:
    from ketch.distribution.credentials import CredentialStore

    return CredentialStore().encoded(registry_of(ref))


def _transfer(ctx: Context, messages: Iterable[dict[str, Any]], quiet: bool) -> None:
    display = ProgressDisplay(ctx.out)
    try:
        for msg in messages:
            if not quiet:
                display.show(msg)
    finally:
        close = getattr(messages, "close", None)
        if close is not None:
            close()


def _pull(ctx: Context, args: argparse.Namespace) -> int:
    name, tag = args.name, None
    if "@" not in name and ":" not in name.rsplit("/", 1)[-1]:
        tag = "latest"
        if not args.quiet:
            ctx.out.write("Using default tag: latest\n")
    _transfer(ctx, ctx.client.image_pull(name, tag=tag, platform=args.platform,
                                         auth=_auth_for(name)), args.quiet)
    if args.quiet:
        ctx.out.write(f"{name}{':' + tag if tag else ''}\n")
    return 0


def _setup_pull(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME[:TAG|@DIGEST]")
    p.add_argument("--platform", help="set platform if server is multi-platform capable")
    p.add_argument("-q", "--quiet", action="store_true", help="suppress verbose output")
    p.add_argument("-a", "--all-tags", action="store_true", help=argparse.SUPPRESS)


def _push(ctx: Context, args: argparse.Namespace) -> int:
    _transfer(ctx, ctx.client.image_push(args.name, auth=_auth_for(args.name)), args.quiet)
    return 0


def _setup_push(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME[:TAG]")
    p.add_argument("-q", "--quiet", action="store_true", help="suppress verbose output")


SAVE = Command("save", "Save one or more images to a tar archive (streamed to STDOUT by "
               "default)", _setup_save, _save)
IMPORT = Command("import", "Import the contents from a tarball to create a filesystem image",
                 _setup_import, _import)
HISTORY = Command("history", "Show the history of an image", _setup_history, _history)
PRUNE = Command("prune", "Remove unused images", _setup_prune, _prune)
INSPECT = Command("inspect", "Display detailed information on one or more images",
                  _setup_inspect, _inspect)

PULL = Command("pull", "Download an image from a registry", _setup_pull, _pull)
PUSH = Command("push", "Upload an image to a registry", _setup_push, _push)

#: top-level verbs (``ketch images``, ``ketch rmi`` ...)
COMMANDS = [LS, RMI, TAG, LOAD, SAVE, IMPORT, HISTORY, PULL, PUSH]
#: ``ketch image <verb>``
IMAGE_COMMANDS = [
    Command("ls", "List images", _setup_images, _images, aliases=("list",)),
    Command("rm", "Remove one or more images", _setup_rmi, _rmi, aliases=("remove",)),
    TAG, LOAD, SAVE, IMPORT, HISTORY, PRUNE, INSPECT, PULL, PUSH,
]
