"""Composition root of ``ketchd``, the engine daemon serving the Docker Engine API.

Wiring only: parse dockerd-like flags, build the engine backends, hand them to
the API routers, listen. SIGTERM/SIGINT stop listening, close connections and
remove the socket and the pidfile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import logging
import os
import signal
import socket
import sys
import time

import ketch

__all__ = ["main"]

log = logging.getLogger("ketchd")

DEFAULT_HOST = "unix:///run/ketch.sock"
DEFAULT_GROUP = "ketch"


class StartupError(Exception):
    """ketchd cannot start; the message is for the operator."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ketchd", description="ketch engine daemon "
                                "(serves the Docker Engine API)")
    p.add_argument("-H", "--host", action="append", default=None,
                   help=f"daemon socket to listen on (default {DEFAULT_HOST}); repeatable")
    p.add_argument("--data-root", default="/var/lib/ketch", help="root of persistent state")
    p.add_argument("--exec-root", default="/run/ketch", help="root of runtime state")
    p.add_argument("-p", "--pidfile", default="/run/ketchd.pid", help="path of the pid file")
    p.add_argument("-l", "--log-level", default="info",
                   choices=["debug", "info", "warn", "error", "fatal"])
    p.add_argument("-G", "--group", default=None,
                   help=f"group owning the unix socket (default {DEFAULT_GROUP!r} if it exists)")
    p.add_argument("-v", "--version", action="version",
                   version=f"ketchd version {ketch.__version__}")
    return p


def _unix_paths(hosts: list[str]) -> list[str]:
    paths = []
    for h in hosts:
        if h.startswith("unix://"):
            path = h[len("unix://"):]
            if not path.startswith("/"):
                raise StartupError(f"invalid host {h!r}: the unix socket path must be absolute")
            paths.append(path)
        elif h.startswith(("tcp://", "fd://", "ssh://")) or "://" not in h:
            raise StartupError(
                f"cannot listen on {h!r}: only unix:// sockets are supported for now "
                "(TCP needs --tlsverify with certificates, which ketchd does not do yet)")
        else:
            raise StartupError(f"invalid host {h!r}")
    return paths


def _socket_gid(group: str | None) -> int:
    name = group if group is not None else DEFAULT_GROUP
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if group is not None:
            raise StartupError(f"group {group!r} not found") from None
        log.debug("group %r not found; the socket stays root-only", name)
        return 0


def _clear_stale_socket(path: str) -> None:
    if not os.path.lexists(path):
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            os.unlink(path)  # stale: nobody listens
            return
    raise StartupError(f"another daemon is listening on {path}")


def _write_pidfile(path: str) -> None:
    try:
        with open(path) as f:
            old = int(f.read().strip() or "0")
    except (OSError, ValueError):
        old = 0
    if old and old != os.getpid():
        try:
            os.kill(old, 0)
        except ProcessLookupError:
            pass
        except PermissionError:
            raise StartupError(f"pid file {path} names running process {old}") from None
        else:
            raise StartupError(f"pid file {path} names running process {old}; "
                               "is ketchd already running?")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


async def _serve(args: argparse.Namespace, started: float) -> None:
    from ketch.api.http import HTTPServer
    from ketch.api.router import Router
    from ketch.api.routers import all_routes
    from ketch.engine.engine import Engine, EngineConfig

    paths = _unix_paths(args.host or [DEFAULT_HOST])
    gid = _socket_gid(args.group)
    for d in (args.data_root, args.exec_root):
        os.makedirs(d, mode=0o711, exist_ok=True)
    _write_pidfile(args.pidfile)
    # Handlers go in before the socket exists: once a client can connect, SIGTERM is graceful.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    created: list[str] = []
    servers: list[asyncio.Server] = []
    http: HTTPServer | None = None
    engine: Engine | None = None
    try:
        engine = Engine(EngineConfig(data_root=args.data_root, exec_root=args.exec_root,
                                     debug=args.log_level == "debug"))
        router = Router(all_routes(engine))
        http = HTTPServer(router, server_header=f"ketch/{ketch.__version__} (linux)")
        for path in paths:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _clear_stale_socket(path)
            old_umask = os.umask(0o177)  # never world-accessible, not even between bind and chmod
            try:
                servers.append(await http.start_unix(path))
            finally:
                os.umask(old_umask)
            created.append(path)
            if os.geteuid() == 0:
                os.chown(path, 0, gid)
            os.chmod(path, 0o660)
            log.info("API listen on %s", path)
        log.info("ketchd %s ready in %.1f ms", ketch.__version__,
                 (time.monotonic() - started) * 1000)
        await stop.wait()
        log.info("shutting down")
    finally:
        for s in servers:
            s.close()
        if http is not None:
            await http.close_connections()
        for s in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.wait_closed(), 5)
        for path in created:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if engine is not None:
            engine.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.pidfile)


def main(argv: list[str] | None = None) -> None:
    started = time.monotonic()
    args = _parser().parse_args(argv)
    level = {"warn": "WARNING", "fatal": "CRITICAL"}.get(args.log_level, args.log_level.upper())
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(args, started))
    except StartupError as e:
        print(f"ketchd: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # a second ^C during shutdown
        sys.exit(130)


if __name__ == "__main__":
    main()
