"""``ketch build``: send a directory as a build context and show a compact progress.

The context is the directory as a tar, minus what its ``.dockerignore`` excludes (the
Dockerfile and ``.dockerignore`` are always sent; the daemon applies the file again).
A ``-f`` Dockerfile outside the directory is added under a generated name, as the
docker CLI does. The display folds docker's classic stream into one line per step::

    [2/5] COPY app /app                      (cached)
    [3/5] RUN make
      | cc -o app main.c
    Successfully built 3f2a1b0c9d8e
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import stat
import tarfile
import tempfile
from collections.abc import Iterable
from typing import IO, Any

from ketch.client.cli.base import Command, Context, UsageError

__all__ = ["BUILD", "COMMANDS", "BuildDisplay", "context_tar"]

_STEP = re.compile(r"Step (\d+)/(\d+) : (.*)", re.S)


def context_tar(root: str, dockerfile: str | None, out: IO[bytes]) -> str:
    """Write ``root`` as a tar to ``out``; returns the Dockerfile's name in it."""
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
            extra, name = full, f".dockerfile.{secrets.token_hex(10)}"
        else:
            name = rel.replace(os.sep, "/")
    keep = {name, ".dockerignore"}
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
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
                path = os.path.join(dirpath, entry)
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


def _run(ctx: Context, args: argparse.Namespace) -> int:
    client = ctx.client
    labels = {k: v or "" for k, v in _pairs(args.label, from_env=False).items()}
    with tempfile.TemporaryFile() as tar:
        name = context_tar(args.path, args.file, tar)
        tar.seek(0)
        messages = client.image_build(
            tar, tags=args.tag, dockerfile=name,
            build_args=_pairs(args.build_arg, from_env=True), target=args.target,
            no_cache=args.no_cache, pull=args.pull, labels=labels, quiet=args.quiet,
            network_mode=args.network, platform=args.platform)
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
