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

TOML because ``tomllib`` is in the standard library and the project takes no
dependencies. Unknown keys and wrong types are ``InvalidArgument`` naming the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ketch.errors import InvalidArgument

__all__ = ["ENV_PREFIX", "KEYS", "RegistryConfig", "load_config"]

ENV_PREFIX = "KETCH_REGISTRY_"

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
}


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
        return self


def _coerce(value: Any, kind: type, where: str) -> Any:
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
        if not isinstance(table, dict):
            raise InvalidArgument(f"config {path}: {section!r} must be a table")
        for key, value in table.items():
            spec = KEYS.get((section, key))
            if spec is None:
                raise InvalidArgument(f"config {path}: unknown key {section}.{key}")
            out[spec[0]] = _coerce(value, spec[1], f"config {path}: {section}.{key}")
    return out


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
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
