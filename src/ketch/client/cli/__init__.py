"""``ketch``: a docker-like CLI for people without the docker CLI, on :class:`EngineClient`.

``main(argv, client)`` parses the verbs and runs one; it never exits the process
(the composition root, ``ketch.cmd.ketch``, does). Verbs are declared in their
modules (``run``, ``containers``, ``cp``, ``images``, ``bootstrap``, ``volumes``,
``system``) as :class:`~ketch.client.cli.base.Command` lists and mounted here:
most at the top (``ketch ps``) and again under management commands
(``ketch container ls``, ``ketch image rm``, ``ketch volume ls``, ``ketch system df``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import NoReturn, TextIO

import ketch
from ketch.client.cli import build, containers, cp, images, login, run, system, volumes
from ketch.client.cli.base import Command, Context, UsageError, error_text
from ketch.client.cli.bootstrap import BOOTSTRAP
from ketch.client.engine import EngineClient
from ketch.errors import KetchError

__all__ = ["host_from_env", "main"]

DEFAULT_HOST = "unix:///run/ketch.sock"


def host_from_env(environ: dict[str, str] | os._Environ[str] | None = None) -> str:
    """The engine URL when no ``-H`` is given: $KETCH_HOST, $DOCKER_HOST, the default."""
    env = os.environ if environ is None else environ
    return env.get("KETCH_HOST") or env.get("DOCKER_HOST") or DEFAULT_HOST


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}\nSee '{self.prog} --help'.", 125)


def _container_group() -> list[Command]:
    out: list[Command] = []
    for c in [*run.COMMANDS, *containers.COMMANDS, *cp.COMMANDS]:
        if c.name == "ps":
            c = dataclasses.replace(c, name="ls", aliases=("ps", "list"))
        out.append(c)
    return out


def _top_level() -> list[Command]:
    generic = {"inspect"}  # the top-level inspect takes any object (system.COMMANDS)
    cmds = [c for c in [*run.COMMANDS, *containers.COMMANDS, *cp.COMMANDS]
            if c.name not in generic]
    cmds += [*images.COMMANDS, *login.COMMANDS, *system.COMMANDS]
    cmds += build.COMMANDS
    return [dataclasses.replace(c, aliases=()) for c in cmds]


GROUPS: dict[str, tuple[str, list[Command]]] = {
    "container": ("Manage containers", _container_group()),
    "image": ("Manage images", [*images.IMAGE_COMMANDS, BOOTSTRAP]),
    "volume": ("Manage volumes", volumes.VOLUME_COMMANDS),
    "system": ("Manage ketch", system.SYSTEM_COMMANDS),
}


def _mount(sub: argparse._SubParsersAction[_Parser], cmd: Command, prefix: str) -> None:
    p = sub.add_parser(cmd.name, aliases=list(cmd.aliases), help=cmd.help,
                       description=cmd.help, add_help=cmd.add_help,
                       usage=cmd.usage.replace("ketch ", prefix, 1) if cmd.usage else None)
    cmd.setup(p)
    p.set_defaults(run=cmd.run, prog=p.prog)


def parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    p = _Parser(prog="ketch", description="A client for the ketch engine (the Docker "
                "Engine API); docker's verbs and flags.")
    p.add_argument("-H", "--host", help=f"engine socket to connect to (default: $KETCH_HOST, "
                   f"$DOCKER_HOST or {DEFAULT_HOST})")
    p.add_argument("-v", "--version", action="version", version=f"ketch version "
                   f"{ketch.__version__}")
    sub = p.add_subparsers(dest="verb", metavar="COMMAND")
    for cmd in _top_level():
        _mount(sub, cmd, "ketch ")
    for name, (help_text, cmds) in GROUPS.items():
        g = sub.add_parser(name, help=help_text, description=help_text)
        gsub = g.add_subparsers(dest="subverb", metavar="COMMAND")
        for cmd in cmds:
            _mount(gsub, cmd, f"ketch {name} ")
        g.set_defaults(group=g, prog=g.prog)
    return p


def main(argv: Sequence[str] | None = None, client: EngineClient | None = None, *,
         stdout: TextIO | None = None, stderr: TextIO | None = None,
         stdin: TextIO | None = None) -> int:
    """Run one ``ketch`` command line; returns the exit status (docker's conventions).

    ``client`` None: connect to ``-H``/$KETCH_HOST/$DOCKER_HOST/the default socket.
    """
    err = stderr or sys.stderr
    try:
        args, extra = parser().parse_known_args(list(sys.argv[1:] if argv is None else argv))
        if extra:
            raise UsageError(f"unknown flag: {extra[0]}\n"
                             f"See '{getattr(args, 'prog', 'ketch')} --help'.", 125)
    except UsageError as e:
        err.write(f"ketch: {e}\n")
        return e.status
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else 0
    runner = getattr(args, "run", None)
    if runner is None:
        group = getattr(args, "group", None)
        (group or parser()).print_help(stdout or sys.stdout)
        return 0
    if client is None:
        from ketch.client.remote import RemoteEngineClient

        client = RemoteEngineClient(args.host or host_from_env())
    ctx = Context(client, stdout or sys.stdout, err, stdin or sys.stdin)
    try:
        return int(runner(ctx, args))
    except UsageError as e:
        ctx.error(f"ketch: {e}" if e.status == 125 else f"Error: {e}")
        return e.status
    except KetchError as e:
        ctx.error(error_text(e))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`ketch logs x | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, ctx.out.fileno())
        except (OSError, ValueError):
            pass
        finally:
            os.close(devnull)
        return 0
    finally:
        try:
            ctx.out.flush()
        except (OSError, ValueError):
            pass
        client.close()
