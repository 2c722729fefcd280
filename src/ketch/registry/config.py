"""Configuration of ``ketch registry serve``: one TOML file, then env, then flags.

Precedence, lowest first: built-in defaults, the TOML file (``--config``), environment
variables, command-line flags. Every setting has one key in the file and one variable::

    [http]
    addr = "127.0.0.1:5000"          # KETCH_REGISTRY_HTTP_ADDR
    tls_cert = "/etc/ketch/reg.crt"  # KETCH_REGISTRY_HTTP_TLS_CERT
    tls_key = "/etc/ketch/reg.key"   # KETCH_REGISTRY_HTTP_TLS_KEY

    [storage]
    driver = "filesystem"            # KETCH_REGISTRY_STORAGE_DRIVER (or "inmemory")
    root = "/var/lib/ketch-registry" # KETCH_REGISTRY_STORAGE_ROOT
    fsync = true                     # KETCH_REGISTRY_STORAGE_FSYNC

    [limits]
    max_manifest_bytes = 4194304     # KETCH_REGISTRY_LIMITS_MAX_MANIFEST_BYTES
    workers = 16                     # KETCH_REGISTRY_LIMITS_WORKERS (storage I/O threads)

    [log]
    level = "info"                   # KETCH_REGISTRY_LOG_LEVEL

    [auth]
    method = "none"                  # KETCH_REGISTRY_AUTH_METHOD: none | basic | token
    htpasswd = "/etc/ketch/htpasswd" # KETCH_REGISTRY_AUTH_HTPASSWD (bcrypt users)
    realm = "ketch-registry"         # KETCH_REGISTRY_AUTH_REALM (Basic realm)
    anonymous_read = false           # KETCH_REGISTRY_AUTH_ANONYMOUS_READ

    [token]
    realm = ""                       # KETCH_REGISTRY_TOKEN_REALM (default <this server>/token)
    service = "ketch-registry"       # KETCH_REGISTRY_TOKEN_SERVICE (the JWT audience)
    issuer = "ketch-registry"        # KETCH_REGISTRY_TOKEN_ISSUER
    key = "/etc/ketch/token.key"     # KETCH_REGISTRY_TOKEN_KEY: RSA key → serve /token
    trusted = "/etc/ketch/token.crt" # KETCH_REGISTRY_TOKEN_TRUSTED (PEM certs/public keys)
    expiry = "5m"                    # KETCH_REGISTRY_TOKEN_EXPIRY

    [[access]]                       # KETCH_REGISTRY_ACCESS (JSON list of these tables)
    users = ["alice"]                # "*": every authenticated user
    repositories = ["team/*"]        # shell globs
    actions = ["pull", "push"]       # pull, push, delete, *

    [gc]
    interval = "0"                   # KETCH_REGISTRY_GC_INTERVAL (0: no background GC)
    grace = "1h"                     # KETCH_REGISTRY_GC_GRACE
    upload_ttl = "24h"               # KETCH_REGISTRY_GC_UPLOAD_TTL
    remove_untagged = false          # KETCH_REGISTRY_GC_REMOVE_UNTAGGED

    [notifications]
    endpoints = ["http://hooks.example/registry"]  # KETCH_REGISTRY_NOTIFICATIONS_ENDPOINTS
    headers = {Authorization = "Bearer x"}        # KETCH_REGISTRY_NOTIFICATIONS_HEADERS (JSON)
    timeout = "5s"                   # KETCH_REGISTRY_NOTIFICATIONS_TIMEOUT
    attempts = 5                     # KETCH_REGISTRY_NOTIFICATIONS_ATTEMPTS
    backoff = "1s"                   # KETCH_REGISTRY_NOTIFICATIONS_BACKOFF (doubles per retry)
    queue = 1000                     # KETCH_REGISTRY_NOTIFICATIONS_QUEUE (events kept per endpoint)

TOML because ``tomllib`` is in the standard library and the project takes no
dependencies. Unknown keys and wrong types are ``InvalidArgument`` naming the key.
Durations are seconds (a number) or a string with a unit: ``"90s"``, ``"15m"``,
``"1h"``, ``"7d"``. In the environment, lists are comma-separated or JSON, tables JSON.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ketch.errors import InvalidArgument
from ketch.registry.auth import AccessRule

__all__ = ["AUTH_METHODS", "ENV_PREFIX", "KEYS", "TABLE_LISTS", "Duration", "RegistryConfig",
           "StrList", "StrMap", "load_config", "parse_duration"]

ENV_PREFIX = "KETCH_REGISTRY_"


class Duration(float):
    """A number of seconds (a config value type: ``90``, ``"90s"``, ``"1h"``)."""


class StrList(tuple[str, ...]):
    """A list of strings (a config value type)."""


class StrMap(dict[str, str]):
    """A table of strings (a config value type)."""


def parse_duration(value: object, where: str) -> float:
    if isinstance(value, bool):
        raise InvalidArgument(f"{where}: want a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        unit = next((u for u in ("ms", "s", "m", "h", "d") if text.endswith(u)), "")
        try:
            seconds = float(text[:len(text) - len(unit)]) * _UNITS.get(unit, 1.0)
        except ValueError:
            raise InvalidArgument(f"{where}: want a duration like 30s, 15m, 1h, "
                                  f"got {value!r}") from None
    else:
        raise InvalidArgument(f"{where}: want a duration, got {value!r}")
    if seconds < 0 or seconds != seconds:
        raise InvalidArgument(f"{where}: a duration cannot be negative")
    return seconds

#: (section, key) → (field of RegistryConfig, type)
KEYS: dict[tuple[str, str], tuple[str, type]] = {
    ("http", "addr"): ("addr", str),
    ("http", "tls_cert"): ("tls_cert", str),
    ("http", "tls_key"): ("tls_key", str),
    ("storage", "driver"): ("storage_driver", str),
    ("storage", "root"): ("storage_root", str),
    ("storage", "fsync"): ("fsync", bool),
    ("limits", "max_manifest_bytes"): ("max_manifest_bytes", int),
    ("limits", "workers"): ("workers", int),
    ("log", "level"): ("log_level", str),
    ("auth", "method"): ("auth_method", str),
    ("auth", "htpasswd"): ("htpasswd", str),
    ("auth", "realm"): ("auth_realm", str),
    ("auth", "anonymous_read"): ("anonymous_read", bool),
    ("token", "realm"): ("token_realm", str),
    ("token", "service"): ("token_service", str),
    ("token", "issuer"): ("token_issuer", str),
    ("token", "key"): ("token_key", str),
    ("token", "trusted"): ("token_trusted", str),
    ("token", "expiry"): ("token_expiry", Duration),
    ("gc", "interval"): ("gc_interval", Duration),
    ("gc", "grace"): ("gc_grace", Duration),
    ("gc", "upload_ttl"): ("gc_upload_ttl", Duration),
    ("gc", "remove_untagged"): ("gc_remove_untagged", bool),
    ("notifications", "endpoints"): ("notify_endpoints", StrList),
    ("notifications", "headers"): ("notify_headers", StrMap),
    ("notifications", "timeout"): ("notify_timeout", Duration),
    ("notifications", "attempts"): ("notify_attempts", int),
    ("notifications", "backoff"): ("notify_backoff", Duration),
    ("notifications", "queue"): ("notify_queue", int),
}

#: top-level arrays of tables: key → field
TABLE_LISTS: dict[str, str] = {"access": "access"}

AUTH_METHODS = ("none", "basic", "token")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    addr: str = "127.0.0.1:5000"
    tls_cert: str | None = None
    tls_key: str | None = None
    storage_driver: str = "filesystem"
    storage_root: str | None = None
    fsync: bool = True
    max_manifest_bytes: int = 4 << 20
    workers: int = 16
    log_level: str = "info"
    auth_method: str = "none"
    htpasswd: str | None = None
    auth_realm: str = "ketch-registry"
    anonymous_read: bool = False
    token_realm: str | None = None
    token_service: str = "ketch-registry"
    token_issuer: str = "ketch-registry"
    token_key: str | None = None
    token_trusted: str | None = None
    token_expiry: float = 300.0
    access: tuple[dict[str, Any], ...] = ()
    gc_interval: float = 0.0
    gc_grace: float = 3600.0
    gc_upload_ttl: float = 86400.0
    gc_remove_untagged: bool = False
    notify_endpoints: tuple[str, ...] = ()
    notify_headers: Mapping[str, str] = field(default_factory=dict)
    notify_timeout: float = 5.0
    notify_attempts: int = 5
    notify_backoff: float = 1.0
    notify_queue: int = 1000

    def host_port(self) -> tuple[str, int]:
        host, sep, port = self.addr.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise InvalidArgument(f"invalid address {self.addr!r}: want HOST:PORT")
        return host.strip("[]") or "127.0.0.1", int(port)

    def storage_params(self) -> dict[str, Any]:
        if self.storage_driver == "filesystem":
            if not self.storage_root:
                raise InvalidArgument("the filesystem storage driver needs a root "
                                      "(--root, [storage] root or KETCH_REGISTRY_STORAGE_ROOT)")
            return {"root": self.storage_root, "fsync": self.fsync}
        return {}

    def validate(self) -> RegistryConfig:
        self.host_port()
        if bool(self.tls_cert) != bool(self.tls_key):
            raise InvalidArgument("TLS needs both a certificate and a key")
        if self.workers < 1 or self.max_manifest_bytes < 1:
            raise InvalidArgument("limits must be positive")
        if self.auth_method not in AUTH_METHODS:
            raise InvalidArgument(f"auth.method: want one of {', '.join(AUTH_METHODS)}, "
                                  f"got {self.auth_method!r}")
        if self.auth_method == "basic" and not self.htpasswd:
            raise InvalidArgument("auth.method = basic needs auth.htpasswd")
        if self.auth_method == "token":
            if not (self.token_key or self.token_trusted):
                raise InvalidArgument("auth.method = token needs token.key (this server "
                                      "issues tokens) or token.trusted (another one does)")
            if self.token_key and not self.htpasswd:
                raise InvalidArgument("the built-in token server (token.key) needs "
                                      "auth.htpasswd for its users")
            if not self.token_key and not self.token_realm:
                raise InvalidArgument("with an external token server, token.realm must "
                                      "give its URL")
        if self.token_expiry < 1:
            raise InvalidArgument("token.expiry must be at least 1s")
        if self.notify_attempts < 1 or self.notify_queue < 1:
            raise InvalidArgument("notifications.attempts and .queue must be positive")
        for n, rule in enumerate(self.access):
            AccessRule.from_config(rule, f"access[{n}]")
        return self


def _coerce(value: Any, kind: type, where: str) -> Any:
    if kind is Duration:
        return parse_duration(value, where)
    if kind is StrList:
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else \
                [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidArgument(f"{where}: want a list of strings, got {value!r}")
        return tuple(value)
    if kind is StrMap:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise InvalidArgument(f"{where}: want a JSON object") from None
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in value.items()):
            raise InvalidArgument(f"{where}: want a table of strings, got {value!r}")
        return dict(value)
    if kind is bool and isinstance(value, str):
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise InvalidArgument(f"{where}: want true or false, got {value!r}")
    if kind is int and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise InvalidArgument(f"{where}: want an integer, got {value!r}") from None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidArgument(f"{where}: want {kind.__name__}, got {value!r}")
    return value


def _from_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise InvalidArgument(f"cannot read config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"config {path}: {e}") from None
    out: dict[str, Any] = {}
    for section, table in doc.items():
        if section in TABLE_LISTS:
            out[TABLE_LISTS[section]] = _table_list(table, f"config {path}: {section}")
            continue
        if not isinstance(table, dict):
            raise InvalidArgument(f"config {path}: {section!r} must be a table")
        for key, value in table.items():
            spec = KEYS.get((section, key))
            if spec is None:
                raise InvalidArgument(f"config {path}: unknown key {section}.{key}")
            out[spec[0]] = _coerce(value, spec[1], f"config {path}: {section}.{key}")
    return out


def _table_list(value: Any, where: str) -> tuple[dict[str, Any], ...]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidArgument(f"{where}: want a JSON list of objects") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise InvalidArgument(f"{where}: want a list of tables ([[{where.rsplit(' ', 1)[-1]}]])")
    return tuple(value)


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, fld in TABLE_LISTS.items():
        name = f"{ENV_PREFIX}{section}".upper()
        if name in env:
            out[fld] = _table_list(env[name], name)
    for (section, key), (fld, kind) in KEYS.items():
        name = f"{ENV_PREFIX}{section}_{key}".upper()
        if name in env:
            out[fld] = _coerce(env[name], kind, name)
    return out


def load_config(path: str | None = None, *, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> RegistryConfig:
    """Defaults ← file ← environment ← ``overrides`` (flags; None values are ignored)."""
    cfg = RegistryConfig()
    if path:
        cfg = replace(cfg, **_from_file(path))
    cfg = replace(cfg, **_from_env(os.environ if env is None else env))
    cfg = replace(cfg, **{k: v for k, v in (overrides or {}).items() if v is not None})
    return cfg.validate()
