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
import json
import logging
import os
import signal
import socket
import ssl
import sys
import time
from typing import TYPE_CHECKING

import ketch

if TYPE_CHECKING:
    from ketch.engine.supervisor import ZygoteHandle
    from ketch.httpserver import Handler, Request, Response

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
    p.add_argument("--data-root", default=None,
                   help="root of persistent state (default /var/lib/ketch)")
    p.add_argument("--exec-root", default=None, help="root of runtime state (default /run/ketch)")
    p.add_argument("-p", "--pidfile", default=None,
                   help="path of the pid file (default /run/ketchd.pid)")
    p.add_argument("-l", "--log-level", default=None,
                   choices=["debug", "info", "warn", "error", "fatal"])
    p.add_argument("-G", "--group", default=None,
                   help=f"group owning the unix socket (default {DEFAULT_GROUP!r} if it exists)")
    p.add_argument("--config-file", default=None,
                   help="daemon configuration file (JSON; default /etc/ketch/daemon.json "
                        "if it exists); flags win over it")
    p.add_argument("--default-runtime", default=None,
                   help="runtime for containers that name none (ketch, runc, crun, or one "
                        "added with --add-runtime)")
    p.add_argument("--add-runtime", action="append", default=None, metavar="NAME=PATH",
                   help="register a runc-compatible runtime binary")
    p.add_argument("-b", "--bridge", default=None,
                   help="device of the default bridge network (default ketch0; made if missing)")
    p.add_argument("--bip", default=None, metavar="CIDR",
                   help="the default bridge's address, e.g. 172.30.0.1/16 (default: its "
                        "current one, else a free pool)")
    p.add_argument("--live-restore", action="store_true", default=None,
                   help="keep containers running while the daemon is down")
    p.add_argument("--tlsverify", action="store_true", default=None,
                   help="TCP: require TLS with client certificates signed by --tlscacert")
    p.add_argument("--tlscacert", default=None, help="CA certificate for client certificates")
    p.add_argument("--tlscert", default=None, help="server certificate")
    p.add_argument("--tlskey", default=None, help="server key")
    p.add_argument("-v", "--version", action="version",
                   version=f"ketchd version {ketch.__version__}")
    return p


_CONFIG_KEYS = {"hosts", "data-root", "exec-root", "pidfile", "log-level", "group",
                "default-runtime", "runtimes", "live-restore", "tlsverify", "tlscacert",
                "tlscert", "tlskey", "log-driver", "log-opts", "bridge", "bip"}


def _load_config(args: argparse.Namespace) -> dict[str, object]:
    """Merge the JSON config file under the flags (a flag given wins, like dockerd)."""
    path = args.config_file
    if path is None and os.path.exists("/etc/ketch/daemon.json"):
        path = "/etc/ketch/daemon.json"
    conf: dict[str, object] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                loaded = json.load(f)
        except OSError as e:
            raise StartupError(f"cannot read config file {path}: {e.strerror}") from None
        except ValueError as e:
            raise StartupError(f"config file {path} is not valid JSON: {e}") from None
        if not isinstance(loaded, dict):
            raise StartupError(f"config file {path}: the top level must be a JSON object")
        unknown = sorted(set(loaded) - _CONFIG_KEYS)
        if unknown:
            raise StartupError(f"config file {path}: unknown directive {unknown[0]!r}")
        conf = loaded
    defaults = {"data_root": "/var/lib/ketch", "exec_root": "/run/ketch", "bridge": "ketch0",
                "pidfile": "/run/ketchd.pid", "log_level": "info"}
    for key in ("data-root", "exec-root", "pidfile", "log-level", "group", "default-runtime",
                "tlscacert", "tlscert", "tlskey", "bridge", "bip"):
        attr = key.replace("-", "_")
        if getattr(args, attr) is None:
            setattr(args, attr, conf.get(key, defaults.get(attr)))
    for key in ("live-restore", "tlsverify"):
        attr = key.replace("-", "_")
        if getattr(args, attr) is None:
            setattr(args, attr, bool(conf.get(key, False)))
    if args.host is None:
        hosts = conf.get("hosts")
        args.host = list(hosts) if isinstance(hosts, list) else None
    runtimes: dict[str, str] = {}
    conf_rt = conf.get("runtimes") or {}
    if isinstance(conf_rt, dict):
        for name, v in conf_rt.items():
            runtimes[name] = str(v.get("path") if isinstance(v, dict) else v)
    for item in args.add_runtime or []:
        name, eq, path = item.partition("=")
        if not eq or not name or not path:
            raise StartupError(f"--add-runtime {item!r}: expected NAME=PATH")
        runtimes[name] = path
    args.runtimes = runtimes
    args.log_driver = conf.get("log-driver") or "json-file"
    args.log_opts = conf.get("log-opts") or {}
    return conf


def _listeners(hosts: list[str], args: argparse.Namespace) -> tuple[list[str],
                                                                    list[tuple[str, int]]]:
    paths: list[str] = []
    tcp: list[tuple[str, int]] = []
    for h in hosts:
        if h.startswith("unix://"):
            path = h[len("unix://"):]
            if not path.startswith("/"):
                raise StartupError(f"invalid host {h!r}: the unix socket path must be absolute")
            paths.append(path)
        elif h.startswith("tcp://"):
            if not (args.tlsverify and args.tlscacert and args.tlscert and args.tlskey):
                raise StartupError(f"refusing to listen on {h!r} without TLS: give --tlsverify "
                                   "--tlscacert --tlscert --tlskey (client certificates are "
                                   "required)")
            hostport = h[len("tcp://"):].rstrip("/")
            host, sep, port = hostport.rpartition(":")
            if not sep or not port.isdigit():
                raise StartupError(f"invalid host {h!r}: expected tcp://HOST:PORT")
            tcp.append((host.strip("[]") or "0.0.0.0", int(port)))
        else:
            raise StartupError(f"invalid host {h!r}: use unix:///path or tcp://host:port")
    return paths, tcp


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(args.tlscert, args.tlskey)
        ctx.load_verify_locations(args.tlscacert)
    except (OSError, ssl.SSLError) as e:
        raise StartupError(f"cannot load TLS certificates: {e}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


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


class _TrimWhenIdle:
    """Wraps the API handler: once no request has come for ``delay`` seconds, the garbage
    of the last burst is collected and the heap's free pages go back to the kernel, so an
    idle daemon's footprint is what it holds, not what a past request (an image import, a
    big inspect) left behind. Streams a handler returned (logs, events) are not waited for:
    trimming under them is harmless."""

    def __init__(self, handler: Handler, delay: float = 1.0) -> None:
        self.handler = handler
        self.delay = delay
        self._timer: asyncio.TimerHandle | None = None

    async def __call__(self, request: Request) -> Response:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            return await self.handler(request)
        finally:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self._trim)

    def _trim(self) -> None:
        import gc

        from ketch.sys.libc import malloc_trim

        self._timer = None
        nft = sys.modules.get("ketch.sys.nft")
        if nft is not None:
            nft.unload_library()
        gc.collect()
        malloc_trim()


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


async def _serve(args: argparse.Namespace, started: float, zygote: ZygoteHandle | None) -> None:
    from ketch.api.router import Router
    from ketch.api.routers import all_routes
    from ketch.api.routers.build import streams_body
    from ketch.engine.engine import Engine, EngineConfig
    from ketch.httpserver import HTTPServer

    paths, tcp = _listeners(args.host or [DEFAULT_HOST], args)
    tls = _tls_context(args) if tcp else None
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
        engine = Engine(EngineConfig(
            data_root=args.data_root, exec_root=args.exec_root,
            default_runtime=args.default_runtime or "ketch", runtimes=args.runtimes,
            live_restore=args.live_restore, debug=args.log_level == "debug",
            log_driver=args.log_driver, log_opts=dict(args.log_opts), bridge=args.bridge,
            bip=args.bip), zygote)
        await engine.start()
        router = Router(all_routes(engine))
        # a build context (up to gigabytes) goes to the builder as it arrives, not spooled
        http = HTTPServer(_TrimWhenIdle(router), stream_body=streams_body,
                          server_header=f"ketch/{ketch.__version__} (linux)")
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
        for host, port in tcp:
            servers.append(await http.start_tcp(host, port, tls))
            log.info("API listen on tcp://%s:%d (TLS, client certificates required)", host,
                     port)
        log.info("ketchd %s ready in %.1f ms", ketch.__version__,
                 (time.monotonic() - started) * 1000)
        from ketch.sys.libc import malloc_trim

        malloc_trim()  # start-up garbage back to the kernel: idle is what idle uses
        await stop.wait()
        log.info("shutting down")
    finally:
        for s in servers:
            s.close()
        if engine is not None:
            with contextlib.suppress(Exception):
                await engine.shutdown()
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


def _preload() -> None:
    """Import what the zygote will run and fill its caches (no threads start on import),
    then freeze the collector's view of it, so that neither process dirties those pages
    later. Only that: the daemon's own modules are imported after the zygote's fork. In
    Python 3.11 every object the daemon touches has its page copied by the refcount
    write, so a module the zygote inherited but never runs would cost its pages twice."""
    import gc

    from ketch.engine.supervisor.zygote import preload

    preload()
    gc.collect()
    gc.freeze()


def main(argv: list[str] | None = None) -> None:
    started = time.monotonic()
    args = _parser().parse_args(argv)
    zygote = None
    try:
        _load_config(args)
        level = {"warn": "WARNING", "fatal": "CRITICAL"}.get(args.log_level,
                                                             str(args.log_level).upper())
        logging.basicConfig(level=level, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        # The supervisors' fork server is forked now, while this process has one thread,
        # after both sides' modules are imported: their pages are then shared, not copied.
        _preload()
        from ketch.engine.supervisor import start_zygote

        zygote = start_zygote()
        asyncio.run(_serve(args, started, zygote))
    except StartupError as e:
        print(f"ketchd: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # a second ^C during shutdown
        sys.exit(130)
    finally:
        if zygote is not None:
            zygote.close()


if __name__ == "__main__":
    main()
