"""``run``, ``create``, ``start``, ``attach``, ``exec``: commands that hold a container's stdio.

``run`` does what the docker CLI does, in its order, so no output is lost and a
fast container's exit is not missed::

    create ─▶ (detached: start, print ID)
           ─▶ register wait (next-exit, or removed with --rm) ─▶ attach ─▶ start
           ─▶ [raw TTY, resize] pump stdio until the stream ends ─▶ exit status of the wait

Exit statuses: the container's; 125 when create/start fail; 126/127 when the
engine says the command cannot be executed / was not found.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable, Iterator

from ketch.client.cli.base import Command, Context, UsageError, error_text
from ketch.client.cli.runopts import add_create_flags, build_create, resolve_env
from ketch.client.cli.term import (
    is_tty,
    pump,
    raw_terminal,
    terminal_size,
    watch_resize,
)
from ketch.client.engine import RawStream, Waiter
from ketch.errors import KetchError, NotFound, NotModified

__all__ = ["COMMANDS", "start_status"]

Resize = Callable[[int, int], None]


def start_status(e: BaseException) -> int:
    """docker's exit status for a failed create/start: 127 not found, 126 not executable."""
    text = str(e).lower()
    if "executable file not found" in text or "no such file or directory" in text:
        return 127
    if "permission denied" in text or "is a directory" in text:
        return 126
    return 125


@contextlib.contextmanager
def _terminal(ctx: Context, tty: bool, interactive: bool, resize: Resize) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        if tty and interactive:
            stack.enter_context(raw_terminal(ctx.stdin))
        if tty:
            stack.enter_context(watch_resize(ctx.out, resize))
        yield


def _check_tty_input(ctx: Context, args: argparse.Namespace) -> None:
    if args.tty and args.interactive and not is_tty(ctx.stdin):
        raise UsageError("the input device is not a TTY", 1)


def _stdio(ctx: Context, stream: RawStream, *, stdin: bool, tty: bool, resize: Resize,
           detach_keys: str | None) -> bool:
    """Pump until the stream ends; True if the user detached."""
    with _terminal(ctx, tty, stdin, resize):
        return pump(stream, stdin=ctx.in_bytes if stdin else None, out=ctx.out_bytes,
                    err=ctx.err.buffer, detach_keys=detach_keys)


def _exit_status(ctx: Context, waiter: Waiter, container: str, rm: bool) -> int:
    try:
        result = waiter.result()
    except NotFound:
        return 0 if rm else 125  # removed before the wait saw it exit
    except KetchError:
        if rm:
            raise
        result = ctx.client.container_wait(container).result()  # an older engine
    err = result.get("Error") or {}
    if isinstance(err, dict) and err.get("Message"):
        ctx.error(f"Error: {err['Message']}")
    return int(result.get("StatusCode", 125))


def _run(ctx: Context, args: argparse.Namespace) -> int:
    return _run_or_create(ctx, args, run=True)


def _create(ctx: Context, args: argparse.Namespace) -> int:
    return _run_or_create(ctx, args, run=False)


def _run_or_create(ctx: Context, args: argparse.Namespace, *, run: bool) -> int:
    detach = bool(run and args.detach)
    if run and not detach:
        _check_tty_input(ctx, args)
    spec = build_create(args, detach=detach,
                        console_size=terminal_size(ctx.out) if args.tty else None)
    client = ctx.client
    try:
        created = client.container_create(spec.body, name=spec.name)
    except NotFound as e:
        if str(e).startswith("No such image"):
            ctx.error(f"Unable to find image '{args.image}' locally")
        ctx.error(error_text(e))
        return 125
    except KetchError as e:
        ctx.error(error_text(e))
        return 125
    for warning in created.get("Warnings") or []:
        ctx.error(f"WARNING: {warning}")
    cid = str(created["Id"])
    if not run:
        ctx.out.write(cid + "\n")
        return 0
    if detach:
        try:
            client.container_start(cid)
        except KetchError as e:
            ctx.error(error_text(e))
            return start_status(e)
        ctx.out.write(cid + "\n")
        return 0
    body = spec.body
    waiter = client.container_wait(cid, condition="removed" if args.rm else "next-exit")
    try:
        stream = client.container_attach(
            cid, stdin=body["AttachStdin"], stdout=body["AttachStdout"],
            stderr=body["AttachStderr"], detach_keys=args.detach_keys)
    except KetchError as e:
        waiter.close()
        ctx.error(error_text(e))
        return 125
    try:
        client.container_start(cid)
    except KetchError as e:
        stream.close()
        waiter.close()
        ctx.error(error_text(e))
        if args.rm:
            with contextlib.suppress(KetchError):
                client.container_remove(cid, force=True)
        return start_status(e)

    def resize(h: int, w: int) -> None:
        client.container_resize(cid, h, w)

    detached = _stdio(ctx, stream, stdin=body["AttachStdin"], tty=args.tty, resize=resize,
                      detach_keys=args.detach_keys)
    if detached:
        waiter.close()
        ctx.error("read escape sequence")
        return 0
    return _exit_status(ctx, waiter, cid, args.rm)


def _setup_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--detach", action="store_true",
                   help="run in the background and print the container ID")
    add_create_flags(p)


def _setup_start(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--attach", action="store_true", help="attach STDOUT/STDERR")
    p.add_argument("-i", "--interactive", action="store_true", help="attach STDIN")
    p.add_argument("--detach-keys", help="override the key sequence for detaching")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def _start(ctx: Context, args: argparse.Namespace) -> int:
    client = ctx.client
    if args.attach or args.interactive:
        if len(args.containers) > 1:
            raise UsageError("you cannot start and attach multiple containers at once")
        name = args.containers[0]
        try:
            config = client.container_inspect(name).get("Config") or {}
            tty = bool(config.get("Tty"))
            args.tty = tty
            _check_tty_input(ctx, args)
            waiter = client.container_wait(name, condition="next-exit")
            stream = client.container_attach(name, stdin=args.interactive,
                                             detach_keys=args.detach_keys)
            client.container_start(name)
        except NotModified:
            ctx.error(f"Error: container {name} is already running")
            return 1

        def resize(h: int, w: int) -> None:
            client.container_resize(name, h, w)

        if _stdio(ctx, stream, stdin=args.interactive, tty=tty, resize=resize,
                  detach_keys=args.detach_keys):
            waiter.close()
            ctx.error("read escape sequence")
            return 0
        return _exit_status(ctx, waiter, name, False)
    failed = []
    for name in args.containers:
        try:
            client.container_start(name)
        except NotModified:
            pass
        except KetchError as e:
            ctx.error(error_text(e))
            failed.append(name)
            continue
        ctx.out.write(name + "\n")
    if failed:
        ctx.error(f"Error: failed to start containers: {', '.join(failed)}")
        return 1
    return 0


def _setup_attach(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-stdin", action="store_true", help="do not attach STDIN")
    p.add_argument("--detach-keys", help="override the key sequence for detaching")
    p.add_argument("container")


def _attach(ctx: Context, args: argparse.Namespace) -> int:
    client = ctx.client
    info = client.container_inspect(args.container)
    config = info.get("Config") or {}
    if not (info.get("State") or {}).get("Running"):
        raise UsageError("You cannot attach to a stopped container, start it first")
    stdin = bool(config.get("OpenStdin")) and not args.no_stdin
    args.tty, args.interactive = bool(config.get("Tty")), stdin
    _check_tty_input(ctx, args)
    waiter = client.container_wait(args.container)
    stream = client.container_attach(args.container, stdin=stdin,
                                     detach_keys=args.detach_keys)

    def resize(h: int, w: int) -> None:
        client.container_resize(args.container, h, w)

    if _stdio(ctx, stream, stdin=stdin, tty=args.tty, resize=resize,
              detach_keys=args.detach_keys):
        waiter.close()
        ctx.error("read escape sequence")
        return 0
    return _exit_status(ctx, waiter, args.container, False)


def _setup_exec(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--detach", action="store_true", help="run in the background")
    p.add_argument("-i", "--interactive", action="store_true", help="keep STDIN open")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-TTY")
    p.add_argument("-e", "--env", action="append", default=[], help="set environment variables")
    p.add_argument("-u", "--user", help="username or UID (format: <name|uid>[:<group|gid>])")
    p.add_argument("-w", "--workdir", help="working directory inside the container")
    p.add_argument("--privileged", action="store_true", help="give extended privileges")
    p.add_argument("--detach-keys", help="override the key sequence for detaching")
    p.add_argument("container")
    p.add_argument("command", nargs=argparse.REMAINDER)


def _exec(ctx: Context, args: argparse.Namespace) -> int:
    if not args.command:
        raise UsageError("\"ketch exec\" requires at least 2 arguments.\n"
                         "Usage:  ketch exec [OPTIONS] CONTAINER COMMAND [ARG...]", 1)
    if not args.detach:
        _check_tty_input(ctx, args)
    client = ctx.client
    env = [resolve_env(e, os.environ) for e in args.env]
    exec_id = client.exec_create(
        args.container, args.command, stdin=args.interactive and not args.detach,
        stdout=not args.detach, stderr=not args.detach, tty=args.tty, env=env or None,
        user=args.user, workdir=args.workdir, privileged=args.privileged,
        detach_keys=args.detach_keys)
    if args.detach:
        client.exec_start(exec_id, detach=True, tty=args.tty)
        return 0
    size = terminal_size(ctx.out) if args.tty else None
    stream = client.exec_start(exec_id, tty=args.tty, console_size=size)
    assert stream is not None

    def resize(h: int, w: int) -> None:
        client.exec_resize(exec_id, h, w)

    if _stdio(ctx, stream, stdin=args.interactive, tty=args.tty, resize=resize,
              detach_keys=args.detach_keys):
        ctx.error("read escape sequence")
        return 0
    deadline = time.monotonic() + 10
    while True:
        info = client.exec_inspect(exec_id)
        if not info.get("Running") or time.monotonic() > deadline:
            code = info.get("ExitCode")
            return int(code) if code is not None else 0
        time.sleep(0.02)


COMMANDS = [
    Command("run", "Create and run a new container from an image", _setup_run, _run,
            usage="ketch run [OPTIONS] IMAGE [COMMAND] [ARG...]", add_help=False),
    Command("create", "Create a new container", add_create_flags, _create,
            usage="ketch create [OPTIONS] IMAGE [COMMAND] [ARG...]", add_help=False),
    Command("start", "Start one or more stopped containers", _setup_start, _start),
    Command("attach", "Attach local standard input, output, and error streams to a running "
            "container", _setup_attach, _attach),
    Command("exec", "Execute a command in a running container", _setup_exec, _exec),
]
