"""Composition root of ``ketch registry``: configuration → storage → app → HTTP server.

Wiring only. ``ketch registry serve --addr HOST:PORT --root DIR [--config FILE]
[--tls-cert F --tls-key F] [--storage filesystem|inmemory]``; plain HTTP unless given a
certificate. Port 0 picks a free port; the line ``listening on <url>`` on stderr says
which. SIGTERM/SIGINT stop it: the listener closes, open connections are closed, and
storage threads finish their current write.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from collections.abc import Sequence

from ketch.errors import KetchError

__all__ = ["main"]

log = logging.getLogger("ketch.registry")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ketch registry",
                                description="An OCI distribution-spec registry.")
    sub = p.add_subparsers(dest="verb", required=True)
    s = sub.add_parser("serve", help="serve a registry")
    s.add_argument("--addr", help="HOST:PORT to listen on (default 127.0.0.1:5000)")
    s.add_argument("--root", help="storage directory (filesystem driver)")
    s.add_argument("--config", help="TOML configuration file")
    s.add_argument("--storage", choices=["filesystem", "inmemory"], help="storage driver")
    s.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    s.add_argument("--tls-key", help="private key of --tls-cert (PEM)")
    s.add_argument("--no-fsync", action="store_true", default=None,
                   help="do not fsync blobs and links (faster, less durable)")
    return p


def _tls(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise KetchError(f"cannot load TLS certificate {cert} / key {key}: {e}") from None
    return ctx


async def _serve(args: argparse.Namespace) -> None:
    from ketch.registry.app import RegistryApp, make_server
    from ketch.registry.config import load_config
    from ketch.registry.repository import Registry
    from ketch.registry.storage import open_driver

    cfg = load_config(args.config, overrides={
        "addr": args.addr, "storage_root": args.root, "storage_driver": args.storage,
        "tls_cert": args.tls_cert, "tls_key": args.tls_key,
        "fsync": False if args.no_fsync else None})
    logging.getLogger("ketch").setLevel(cfg.log_level.upper())
    driver = open_driver(cfg.storage_driver, cfg.storage_params())
    app = RegistryApp(Registry(driver, max_manifest_bytes=cfg.max_manifest_bytes),
                      workers=cfg.workers)
    http = make_server(app)
    tls = _tls(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert and cfg.tls_key else None
    host, port = cfg.host_port()
    server = await http.start_tcp(host, port, tls)
    bound = server.sockets[0].getsockname()
    scheme = "https" if tls else "http"
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    print(f"ketch registry: listening on {scheme}://{shown}:{bound[1]} "
          f"(storage {driver.name}{' ' + cfg.storage_root if cfg.storage_root else ''})",
          file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
        await http.close_connections()
        app.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        asyncio.run(_serve(args))
    except KetchError as e:
        print(f"ketch registry: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. the address is in use
        print(f"ketch registry: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
