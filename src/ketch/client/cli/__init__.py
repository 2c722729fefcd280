"""``ketch``: a docker-like CLI for people without the docker CLI, on :class:`EngineClient`.

``main(argv, client)`` parses the verbs and runs one; it never exits the process
(the composition root, ``ketch.cmd.ketch``, does). Verbs are declared in their
modules (``run``, ``containers``, ``cp``, ``images``, ``bootstrap``, ``volumes``,
``system``) as :class:`~ketch.client.cli.base.Command` lists and mounted here:
most at the top (``ketch ps``) and again under management commands
(``ketch container ls``, ``ketch image rm``, ``ketch volume ls``, ``ketch system df``).

A command line builds only the parser of its own verb: ``_VERBS`` says which module
declares each top-level verb, so ``ketch build`` imports the build module and not the
others (all of them together cost a ``ketch`` run about 0.25 s). Help, a group's
verbs and anything not in the index get the whole tree; a unit test keeps the index
equal to what the modules declare.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import NoReturn, TextIO

import ketch
from ketch.client.cli.base import Command, Context, UsageError, error_text
from ketch.client.engine import EngineClient
from ketch.errors import KetchError

__all__ = ["host_from_env", "main", "split_host"]

DEFAULT_HOST = "unix:///run/ketch.sock"


def host_from_env(environ: dict[str, str] | os._Environ[str] | None = None) -> str:
    """The engine URL when no ``-H`` is given: $KETCH_HOST, $DOCKER_HOST, the default."""
    env = os.environ if environ is None else environ
    return env.get("KETCH_HOST") or env.get("DOCKER_HOST") or DEFAULT_HOST


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}\nSee '{self.prog} --help'.", 125)


#: the modules whose COMMANDS are top-level verbs, in help order
_TOP_MODULES = ("run", "containers", "cp", "images", "login", "system", "build")
#: which module declares each top-level verb (see the module doc; test_cli_verbs checks it)
_VERBS: dict[str, str] = {
    **dict.fromkeys(("run", "create", "start", "attach", "exec"), "run"),
    **dict.fromkeys(("ps", "stop", "kill", "restart", "rm", "logs", "wait", "pause",
                     "unpause", "rename", "top", "export", "diff"), "containers"),
    "cp": "cp",
    **dict.fromkeys(("images", "rmi", "tag", "load", "save", "import", "history", "pull",
                     "push"), "images"),
    "login": "login", "logout": "login",
    **dict.fromkeys(("version", "info", "events", "inspect"), "system"),
    "build": "build",
}


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"ketch.client.cli.{name}")


def _container_group() -> list[Command]:
    out: list[Command] = []
    for name in ("run", "containers", "cp"):
        for c in _module(name).COMMANDS:
            if c.name == "ps":
                c = dataclasses.replace(c, name="ls", aliases=("ps", "list"))
            out.append(c)
    return out


def _top_level(modules: Sequence[str] = _TOP_MODULES) -> list[Command]:
    generic = {"inspect"}  # the top-level inspect takes any object (system.COMMANDS)
    cmds: list[Command] = []
    for name in modules:
        for c in _module(name).COMMANDS:
            if c.name in generic and name in ("run", "containers", "cp"):
                continue
            cmds.append(c)
    return [dataclasses.replace(c, aliases=()) for c in cmds]


#: management commands: (help, the function listing their verbs)
GROUPS: dict[str, tuple[str, Callable[[], list[Command]]]] = {
    "container": ("Manage containers", _container_group),
    "image": ("Manage images", lambda: [*_module("images").IMAGE_COMMANDS,
                                        _module("bootstrap").BOOTSTRAP]),
    "volume": ("Manage volumes", lambda: list(_module("volumes").VOLUME_COMMANDS)),
    "system": ("Manage ketch", lambda: list(_module("system").SYSTEM_COMMANDS)),
}


def _mount(sub: argparse._SubParsersAction[_Parser], cmd: Command, prefix: str) -> None:
    p = sub.add_parser(cmd.name, aliases=list(cmd.aliases), help=cmd.help,
                       description=cmd.help, add_help=cmd.add_help,
                       usage=cmd.usage.replace("ketch ", prefix, 1) if cmd.usage else None)
    cmd.setup(p)
    p.set_defaults(run=cmd.run, prog=p.prog)


def split_host(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """``-H URL`` / ``--host URL`` / ``--host=URL`` before the verb → (URL, the rest)."""
    rest: list[str] = []
    host: str | None = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            return host, rest + list(argv[i:])
        if arg in ("-H", "--host") and i + 1 < len(argv):
            host, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--host="):
            host = arg.split("=", 1)[1]
        elif arg.startswith("-H") and len(arg) > 2:
            host = arg[2:].lstrip("=")
        else:
            rest.append(arg)
        i += 1
    return host, rest


def _verb(argv: Sequence[str]) -> str | None:
    """The verb of a command line (the first word not an option or ``-H``'s value)."""
    return next((a for a in split_host(argv)[1] if not a.startswith("-")), None)


def parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command tree: the whole of it, or (given the command line ``argv``) only
    the part that line needs (see the module doc)."""
    verb = _verb(argv) if argv is not None else None
    top: Sequence[str] = _TOP_MODULES
    groups: Sequence[str] = list(GROUPS)
    if verb in _VERBS:
        top, groups = (_VERBS[verb],), ()
    elif verb in GROUPS:
        top, groups = (), (verb,)
    p = _Parser(prog="ketch", description="A client for the ketch engine (the Docker "
                "Engine API); docker's verbs and flags.")
    p.add_argument("-H", "--host", help=f"engine socket to connect to (default: $KETCH_HOST, "
                   f"$DOCKER_HOST or {DEFAULT_HOST})")
    p.add_argument("-v", "--version", action="version", version=f"ketch version "
                   f"{ketch.__version__}")
    sub = p.add_subparsers(dest="verb", metavar="COMMAND")
    for cmd in _top_level(top):
        _mount(sub, cmd, "ketch ")
    for name in groups:
        help_text, listing = GROUPS[name]
        g = sub.add_parser(name, help=help_text, description=help_text)
        gsub = g.add_subparsers(dest="subverb", metavar="COMMAND")
        for cmd in listing():
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
        line = list(sys.argv[1:] if argv is None else argv)
        args, extra = parser(line).parse_known_args(line)
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
