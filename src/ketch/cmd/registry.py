"""Composition root of ``ketch registry``: configuration → storage → auth, notifications,
GC → app → HTTP server.

Wiring only. Verbs:

``serve --addr HOST:PORT --root DIR [--config FILE] [--tls-cert F --tls-key F]
[--storage filesystem|inmemory]``
    plain HTTP unless given a certificate. Port 0 picks a free port; the line
    ``listening on <url>`` on stderr says which. SIGTERM/SIGINT stop it: the listener
    closes, open connections are closed, storage threads finish their current write, and
    queued notifications get a moment to go out. With ``[gc] interval`` a collection runs
    in a background thread every interval (online: see ``ketch.registry.gc``).
``gc --root DIR [--grace 1h] [--upload-ttl 24h] [--remove-untagged] [--dry-run]``
    one collection now, also while a server runs on the same storage.
``passwd FILE USER [--password-stdin] [--cost N] [--delete]``
    add, change or remove a bcrypt user in an htpasswd file (atomically replaced).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ketch.errors import KetchError

if TYPE_CHECKING:
    from ketch.registry.auth import Authorizer, TokenIssuer
    from ketch.registry.config import RegistryConfig
    from ketch.registry.gc import GCOptions
    from ketch.registry.notify import Notifier
    from ketch.registry.storage import StorageDriver

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
    g = sub.add_parser("gc", help="collect garbage (safe while a server runs)")
    g.add_argument("--root", help="storage directory (filesystem driver)")
    g.add_argument("--config", help="TOML configuration file")
    g.add_argument("--grace", help="keep unreferenced blobs younger than this (default 1h)")
    g.add_argument("--upload-ttl", help="remove uploads idle longer than this (default 24h)")
    g.add_argument("--remove-untagged", action="store_true", default=None,
                   help="also remove manifests no tag reaches")
    g.add_argument("--dry-run", action="store_true", help="report, delete nothing")
    g.add_argument("--format", choices=["text", "json"], default="text")
    pw = sub.add_parser("passwd", help="add, change or remove an htpasswd (bcrypt) user")
    pw.add_argument("file")
    pw.add_argument("user")
    pw.add_argument("--password-stdin", action="store_true",
                    help="read the password from stdin (else prompt)")
    pw.add_argument("--cost", type=int, default=10, help="bcrypt cost (default 10)")
    pw.add_argument("--delete", action="store_true", help="remove the user")
    return p


def _tls(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise KetchError(f"cannot load TLS certificate {cert} / key {key}: {e}") from None
    return ctx


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise KetchError(f"cannot read {what} {path}: {e.strerror}") from None


def _auth(cfg: RegistryConfig, tls: bool) -> tuple[Authorizer | None, TokenIssuer | None]:
    from ketch.registry import jwt
    from ketch.registry.auth import AccessPolicy, AccessRule, BasicAuth, TokenAuth, TokenIssuer
    from ketch.registry.passwords import Htpasswd

    policy = AccessPolicy(tuple(AccessRule.from_config(r, f"access[{n}]")
                                for n, r in enumerate(cfg.access)), cfg.anonymous_read)
    if cfg.auth_method == "none":
        return None, None
    assert cfg.htpasswd or cfg.auth_method == "token"
    users = Htpasswd(cfg.htpasswd) if cfg.htpasswd else None
    if cfg.auth_method == "basic":
        assert users is not None
        return BasicAuth(users, policy, cfg.auth_realm), None
    issuer = None
    keys: list[jwt.RSAPublicKey] = []
    if cfg.token_key:
        assert users is not None
        key = jwt.load_private_key(_read(cfg.token_key, "token key"))
        issuer = TokenIssuer(users, policy, key, cfg.token_issuer, cfg.token_service,
                             int(cfg.token_expiry), cfg.auth_realm)
        keys.append(key.public)
    if cfg.token_trusted:
        keys += jwt.load_public_keys(_read(cfg.token_trusted, "trusted token keys"))
    return TokenAuth(keys, issuer=cfg.token_issuer, service=cfg.token_service,
                     realm=cfg.token_realm or None, scheme="https" if tls else "http",
                     policy=policy if issuer is not None else None,
                     anonymous_read=cfg.anonymous_read), issuer


def _notifier(cfg: RegistryConfig) -> Notifier | None:
    from ketch.registry.notify import Endpoint, Notifier

    if not cfg.notify_endpoints:
        return None
    return Notifier([Endpoint(url, dict(cfg.notify_headers), cfg.notify_timeout,
                              cfg.notify_attempts, cfg.notify_backoff, cfg.notify_queue)
                     for url in cfg.notify_endpoints])


def _gc_options(cfg: RegistryConfig, dry_run: bool = False) -> GCOptions:
    from ketch.registry.gc import GCOptions

    return GCOptions(grace=cfg.gc_grace, upload_ttl=cfg.gc_upload_ttl,
                     remove_untagged=cfg.gc_remove_untagged, dry_run=dry_run)


async def _gc_loop(driver: StorageDriver, cfg: RegistryConfig) -> None:
    """A collection every ``gc.interval``, each in its own thread."""
    from ketch.registry.gc import GarbageCollector

    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(cfg.gc_interval)
        try:
            await loop.run_in_executor(None, GarbageCollector(driver, _gc_options(cfg)).run)
        except Exception:
            log.exception("background garbage collection failed")


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
    tls = _tls(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert and cfg.tls_key else None
    authorizer, issuer = _auth(cfg, tls is not None)
    app = RegistryApp(Registry(driver, max_manifest_bytes=cfg.max_manifest_bytes),
                      workers=cfg.workers, authorizer=authorizer, token_issuer=issuer,
                      notifier=_notifier(cfg))
    http = make_server(app)
    host, port = cfg.host_port()
    server = await http.start_tcp(host, port, tls)
    bound = server.sockets[0].getsockname()
    scheme = "https" if tls else "http"
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    print(f"ketch registry: listening on {scheme}://{shown}:{bound[1]} "
          f"(storage {driver.name}{' ' + cfg.storage_root if cfg.storage_root else ''}, "
          f"auth {cfg.auth_method})", file=sys.stderr, flush=True)
    gc_task = asyncio.create_task(_gc_loop(driver, cfg)) if cfg.gc_interval > 0 else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        if gc_task is not None:
            gc_task.cancel()
        server.close()
        await server.wait_closed()
        await http.close_connections()
        app.close()


def _gc(args: argparse.Namespace) -> int:
    from ketch.registry.config import load_config, parse_duration
    from ketch.registry.gc import GarbageCollector
    from ketch.registry.storage import open_driver

    cfg = load_config(args.config, overrides={
        "storage_root": args.root,
        "gc_grace": parse_duration(args.grace, "--grace") if args.grace else None,
        "gc_upload_ttl": parse_duration(args.upload_ttl, "--upload-ttl")
        if args.upload_ttl else None,
        "gc_remove_untagged": args.remove_untagged})
    if cfg.storage_driver != "filesystem":
        raise KetchError("gc needs persistent storage (the filesystem driver); an in-memory "
                         "registry collects with [gc] interval")
    driver = open_driver(cfg.storage_driver, cfg.storage_params())
    report = GarbageCollector(driver, _gc_options(cfg, args.dry_run)).run()
    if args.format == "json":
        print(json.dumps(report.to_json(), indent=2))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for d in report.blobs_deleted:
        print(f"blob {d}")
    for m in report.manifests_deleted:
        print(f"manifest {m}")
    for u in report.uploads_deleted:
        print(f"upload {u}")
    print(f"{verb} {len(report.blobs_deleted)} blobs ({report.bytes_freed} bytes), "
          f"{len(report.manifests_deleted)} manifests, {len(report.uploads_deleted)} "
          f"uploads; kept {report.blobs_kept_young} unreferenced blobs younger than the "
          f"grace period", file=sys.stderr)
    return 0


def _passwd(args: argparse.Namespace) -> int:
    from ketch.registry.passwords import hash_password

    if ":" in args.user or not args.user.strip():
        raise KetchError(f"invalid user name {args.user!r}")
    try:
        with open(args.file, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    except OSError as e:
        raise KetchError(f"cannot read {args.file}: {e.strerror}") from None
    kept = [ln for ln in lines if ln.partition(":")[0] != args.user]
    if args.delete:
        if len(kept) == len(lines):
            raise KetchError(f"no user {args.user} in {args.file}")
    else:
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = getpass.getpass(f"password for {args.user}: ")
        if not password:
            raise KetchError("empty password")
        kept.append(f"{args.user}:{hash_password(password, cost=args.cost)}")
    tmp = f"{args.file}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(ln + "\n" for ln in kept))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, args.file)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.verb == "gc":
            return _gc(args)
        if args.verb == "passwd":
            return _passwd(args)
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
