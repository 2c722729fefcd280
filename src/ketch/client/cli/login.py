"""``ketch login`` and ``ketch logout``: registry credentials for ketch's own CLI.

``login`` asks the engine to check the credentials (``POST /auth``, which talks to the
registry) and, if they work, stores them in docker's ``config.json`` format under
``$KETCH_CONFIG`` or ``~/.ketch`` (:mod:`ketch.distribution.credentials`); ``pull`` and
``push`` send them to the engine as ``X-Registry-Auth``. ``logout`` forgets them. The
docker CLI keeps its own file; the two do not share credentials.
"""

from __future__ import annotations

import argparse
import getpass

from ketch.client.cli.base import Command, Context, UsageError
from ketch.distribution.credentials import CredentialStore

__all__ = ["COMMANDS"]


def _login(ctx: Context, args: argparse.Namespace) -> int:
    server = args.server or "docker.io"
    username = args.username
    password = args.password
    if args.password_stdin:
        if password:
            raise UsageError("--password and --password-stdin are mutually exclusive")
        if not username:
            raise UsageError("Must provide --username with --password-stdin")
        password = ctx.stdin.read().rstrip("\n").rstrip("\r")
    store = CredentialStore()
    if not username:
        old = store.get(server)
        username = input(f"Username{f' ({old.username})' if old.username else ''}: ") \
            or old.username
    if not password:
        password = getpass.getpass("Password: ")
    if not username or not password:
        raise UsageError("Error: Username and password are required")
    answer = ctx.client.registry_login(username, password, server)
    from ketch.distribution.auth import Credentials

    store.store(server, Credentials(username, password,
                                    str(answer.get("IdentityToken") or "")))
    ctx.out.write(f"{answer.get('Status') or 'Login Succeeded'}\n")
    return 0


def _setup_login(p: argparse.ArgumentParser) -> None:
    p.add_argument("server", nargs="?", metavar="SERVER")
    p.add_argument("-u", "--username", help="username")
    p.add_argument("-p", "--password", help="password")
    p.add_argument("--password-stdin", action="store_true", help="take the password from stdin")


def _logout(ctx: Context, args: argparse.Namespace) -> int:
    server = args.server or "docker.io"
    if CredentialStore().erase(server):
        ctx.out.write(f"Removing login credentials for {server}\n")
    else:
        ctx.out.write(f"Not logged in to {server}\n")
    return 0


def _setup_logout(p: argparse.ArgumentParser) -> None:
    p.add_argument("server", nargs="?", metavar="SERVER")


COMMANDS = [
    Command("login", "Log in to a registry", _setup_login, _login),
    Command("logout", "Log out from a registry", _setup_logout, _logout),
]
