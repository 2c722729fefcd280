"""``ketch build``: send a directory as a build context and show a compact progress.

The context is the directory as a tar, minus what its ``.dockerignore`` excludes (the
Dockerfile and ``.dockerignore`` are always sent; the daemon applies the file again).
A ``-f`` Dockerfile outside the directory is added under a name made from its path
(``.dockerfile.<hash>``; the docker CLI picks a random one, which defeats the cache of
a ``COPY .``). The display folds docker's classic stream into one line per step::

    Sending build context: 1.2kB (3 of 1024 files changed; the daemon has the rest)
    [2/5] COPY app /app                      (cached)
    [3/5] RUN make
      | cc -o app main.c
    Successfully built 3f2a1b0c9d8e

**The context cache.** A ketchd keeps the last context of each directory (its key: a
hash of this host's name, the directory's real path and the ``-f`` file's). Before a
build the client sends the context's *manifest* (every entry's path, type, mode, size,
mtime and change token — st_dev, st_ino, st_ctime_ns — plus symlink targets) to
``POST /ketch/build/contexts/<key>``; the daemon answers which files it lacks, and
``POST /build?ketchcontext=<key>`` then carries the manifest and only those files
(directories and symlinks travel in the manifest). An engine that answers 404 (a
dockerd) gets the whole tar as before; a 409 (the daemon's copy changed in between)
makes the client send every file once more. ``--no-context-cache`` always sends the
whole tar.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import socket
import stat
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

from ketch.client.cli.base import Command, Context, UsageError
from ketch.client.engine import BuildAPI, Stream
from ketch.errors import Conflict

__all__ = ["BUILD", "COMMANDS", "BuildDisplay", "Sent", "context_key", "context_manifest",
           "context_tar", "start_build", "synced_tar"]

_STEP = re.compile(r"Step (\d+)/(\d+) : (.*)", re.S)
_MANIFEST = ".ketch-context.json"


def _walk(root: str, dockerfile: str | None) -> tuple[str, list[tuple[str, str]], str | None]:
    """What the context holds: (the Dockerfile's name in it, [(context path, host path)]
    in tar order, a ``-f`` file outside ``root`` (sent last under the name) or None)."""
    from ketch.image.build.dockerignore import DockerIgnore

    if not os.path.isdir(root):
        raise UsageError(f'unable to prepare context: path "{root}" not found')
    ignore = DockerIgnore()
    ign = os.path.join(root, ".dockerignore")
    if os.path.isfile(ign):
        with open(ign, "rb") as f:
            ignore = DockerIgnore.parse(f.read())
    name = "Dockerfile"
    extra: str | None = None
    if dockerfile:
        full = os.path.abspath(dockerfile)
        rel = os.path.relpath(full, os.path.abspath(root))
        if rel.startswith(".."):
            digest = hashlib.sha256(full.encode(errors="surrogateescape")).hexdigest()
            extra, name = full, f".dockerfile.{digest[:20]}"
        else:
            name = rel.replace(os.sep, "/")
    keep = {name, ".dockerignore"}
    out: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        for d in list(dirnames):
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if ignore.excluded(rel) and ignore.prunable(rel):
                dirnames.remove(d)
        dirnames.sort()
        for entry in sorted(dirnames + filenames):
            rel = f"{rel_dir}/{entry}" if rel_dir else entry
            if rel not in keep and ignore.excluded(rel):
                continue
            out.append((rel, os.path.join(dirpath, entry)))
    return name, out, extra


def context_tar(root: str, dockerfile: str | None, out: IO[bytes]) -> str:
    """Write ``root`` as a tar to ``out``; returns the Dockerfile's name in it."""
    name, items, extra = _walk(root, dockerfile)
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, path in items:
            ti = tar.gettarinfo(path, rel)
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            if stat.S_ISREG(os.lstat(path).st_mode):
                with open(path, "rb") as f:
                    tar.addfile(ti, f)
            elif ti.isdir() or ti.issym():
                tar.addfile(ti)
        if extra is not None:
            with open(extra, "rb") as f:
                ti = tar.gettarinfo(fileobj=f, arcname=name)
                ti.uid = ti.gid = 0
                tar.addfile(ti, f)
    return name


def _record(rel: str, path: str, st: os.stat_result) -> dict[str, Any] | None:
    """The manifest record of one entry (None: a device, fifo or socket, never sent)."""
    if stat.S_ISREG(st.st_mode):
        kind = "file"
    elif stat.S_ISDIR(st.st_mode):
        kind = "dir"
    elif stat.S_ISLNK(st.st_mode):
        kind = "symlink"
    else:
        return None
    rec: dict[str, Any] = {
        "path": rel, "type": kind, "mode": stat.S_IMODE(st.st_mode),
        "size": st.st_size if kind == "file" else 0, "mtime_ns": st.st_mtime_ns,
        "token": [st.st_dev, st.st_ino, st.st_ctime_ns]}
    if kind == "symlink":
        rec["target"] = os.readlink(path)
    return rec


def context_manifest(root: str, dockerfile: str | None
                     ) -> tuple[str, list[dict[str, Any]], dict[str, str]]:
    """The context :func:`context_tar` would send, as a manifest: (the Dockerfile's
    name, the records, context path → host path of each file). Hard links are files."""
    name, items, extra = _walk(root, dockerfile)
    records: list[dict[str, Any]] = []
    hosts: dict[str, str] = {}
    for rel, path in items:
        rec = _record(rel, path, os.lstat(path))
        if rec is not None:
            records.append(rec)
            hosts[rel] = path
    if extra is not None:
        rec = _record(name, extra, os.stat(extra))  # read through a link, as the tar does
        if rec is not None:
            records.append(rec)
            hosts[name] = extra
    return name, records, hosts


def context_key(root: str, dockerfile: str | None) -> str:
    """The daemon-side name of this context: sha256 (32 hex digits) of the host name,
    the directory's real path and the ``-f`` file's ("" without ``-f``)."""
    df = os.path.realpath(dockerfile) if dockerfile else ""
    text = f"{socket.gethostname()}\0{os.path.realpath(root)}\0{df}"
    return hashlib.sha256(text.encode(errors="surrogateescape")).hexdigest()[:32]


def synced_tar(records: list[dict[str, Any]], hosts: dict[str, str], need: set[str] | None,
                out: IO[bytes]) -> int:
    """Write a synced context tar to ``out``: the manifest ``{"entries": records}`` as
    ``.ketch-context.json``, then the files in ``need`` (None: every file), their
    records refreshed first; returns how many files it holds."""
    send = [r for r in records if r["type"] == "file" and (need is None or r["path"] in need)]
    for rec in send:  # re-stat what is sent now, so its record tells what the tar holds
        host = hosts[rec["path"]]
        fresh = _record(rec["path"], host, os.stat(host))  # as open() will read it
        if fresh is not None and fresh["type"] == "file":
            rec.update(fresh)
    data = json.dumps({"entries": records}, separators=(",", ":")).encode()
    start = out.tell()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        ti = tarfile.TarInfo(_MANIFEST)
        ti.size, ti.mode = len(data), 0o600
        tar.addfile(ti, io.BytesIO(data))
        for rec in send:
            ti = tarfile.TarInfo(rec["path"])
            ti.size, ti.mode, ti.mtime = rec["size"], rec["mode"], rec["mtime_ns"] // 10**9
            with open(hosts[rec["path"]], "rb") as f:
                tar.addfile(ti, f)
        end = start + tar.offset + 2 * tarfile.BLOCKSIZE
    out.seek(end)  # the end-of-archive blocks, without tarfile's padding to 10 KiB:
    out.truncate()  # readers stop at the first zero block
    return len(send)


@dataclass
class Sent:
    """What :func:`start_build` sent. ``body_bytes``: the body of the ``POST /build`` that
    was answered; ``sent_bytes``: every ``/build`` body, a retried one included;
    ``context_bytes``: the size of the context's files; ``files``/``total_files``: the
    files in that body / in the context; ``synced``: through the daemon's context cache;
    ``retried``: after a 409, with every file."""

    messages: Stream[dict[str, Any]]
    body_bytes: int
    sent_bytes: int
    context_bytes: int
    files: int
    total_files: int
    synced: bool
    retried: bool = False


def start_build(client: BuildAPI, root: str, dockerfile: str | None, *,
                context_cache: bool = True, **options: Any) -> Sent:
    """Send the context of ``root`` and start the build; ``options`` are
    :meth:`~ketch.client.engine.BuildAPI.image_build`'s (but ``dockerfile``). Through the
    engine's context cache unless ``context_cache`` is false or the engine has none
    (see the module doc). The caller reads (and closes) ``Sent.messages``."""
    name, records, hosts = context_manifest(root, dockerfile)
    size = sum(r["size"] for r in records if r["type"] == "file")
    count = sum(r["type"] == "file" for r in records)
    key = context_key(root, dockerfile)
    need = client.build_context_check(key, records) if context_cache else None
    sent_bytes = 0
    if need is not None:
        for want in (set(need), None):
            with tempfile.TemporaryFile() as body:
                files = synced_tar(records, hosts, want, body)
                n = body.tell()
                body.seek(0)
                sent_bytes += n
                try:
                    messages = client.image_build(body, dockerfile=name, ketch_context=key,
                                                  **options)
                except Conflict:
                    if want is None:
                        raise
                    continue
            return Sent(messages, n, sent_bytes, size, files, count, True, want is None)
    with tempfile.TemporaryFile() as body:
        context_tar(root, dockerfile, body)
        n = body.tell()
        body.seek(0)
        messages = client.image_build(body, dockerfile=name, **options)
    return Sent(messages, n, sent_bytes + n, size, count, count, False)


class BuildDisplay:
    """Docker's classic build stream, one line per step (see the module doc)."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.pending = ""

    def show(self, msg: dict[str, Any]) -> None:
        if "status" in msg:  # a base image being pulled
            text = str(msg.get("status") or "")
            if msg.get("id") or msg.get("progress"):
                return
            self.out.write(f"  pull: {text}\n")
            return
        text = str(msg.get("stream") or "")
        for line in text.splitlines():
            self.line(line)
        self.out.flush()

    def line(self, line: str) -> None:
        m = _STEP.match(line)
        if m:
            self.out.write(f"[{m.group(1)}/{m.group(2)}] {m.group(3)}\n")
        elif line.startswith(" ---> Using cache"):
            self.out.write("  (cached)\n")
        elif line.startswith((" ---> ", "Removing intermediate container")) or \
                line in (" --->", ""):
            return
        elif line.startswith(("Successfully", "[Warning]", "# Executing")):
            self.out.write(line + "\n")
        else:
            self.out.write(f"  | {line}\n")


def _setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="the build context directory")
    p.add_argument("-t", "--tag", action="append", default=[],
                   help="name and optionally a tag (name:tag); repeatable")
    p.add_argument("-f", "--file", help="the Dockerfile (default: PATH/Dockerfile)")
    p.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a build-time variable; KEY alone takes it from the environment")
    p.add_argument("--target", help="the build stage to stop at")
    p.add_argument("--no-cache", action="store_true", help="do not use the build cache")
    p.add_argument("--pull", action="store_true", help="always try to pull the base images")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="set metadata on the image")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only the image ID when done")
    p.add_argument("--network", help="network mode of RUN steps (default: default)")
    p.add_argument("--platform", help="the platform of the base images")
    p.add_argument("--no-context-cache", action="store_true",
                   help="send the whole context, not only what the daemon lacks")


def _pairs(items: Iterable[str], *, from_env: bool) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not k:
            raise UsageError(f"invalid argument {item!r}: want KEY=VALUE")
        if sep:
            out[k] = v
        elif from_env:
            out[k] = os.environ.get(k)
        else:
            out[k] = ""
    return out


def _human(n: float) -> str:
    from ketch.client.cli.format import human_size

    return human_size(n)


def _run(ctx: Context, args: argparse.Namespace) -> int:
    labels = {k: v or "" for k, v in _pairs(args.label, from_env=False).items()}
    sent = start_build(
        ctx.client, args.path, args.file, context_cache=not args.no_context_cache,
        tags=args.tag, build_args=_pairs(args.build_arg, from_env=True), target=args.target,
        no_cache=args.no_cache, pull=args.pull, labels=labels, quiet=args.quiet,
        network_mode=args.network, platform=args.platform)
    messages = sent.messages
    if not args.quiet:
        note = ""
        if sent.synced:
            note = (f" ({sent.files} of {sent.total_files} files changed; the daemon has "
                    "the rest)") if sent.files < sent.total_files else " (all files)"
        ctx.out.write(f"Sending build context: {_human(sent.body_bytes)}{note}\n")
    display = BuildDisplay(ctx.out)
    image_id = ""
    try:
        for msg in messages:
            aux = msg.get("aux")
            if isinstance(aux, dict) and aux.get("ID"):
                image_id = str(aux["ID"])
            if not args.quiet:
                display.show(msg)
    finally:
        messages.close()
    if args.quiet and image_id:
        ctx.out.write(image_id + "\n")
    return 0


BUILD = Command("build", "Build an image from a Dockerfile", _setup, _run)
COMMANDS = [BUILD]
