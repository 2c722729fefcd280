"""Credentials kept in docker's ``config.json`` format, for ketch's own CLI.

The file (``$KETCH_CONFIG/config.json``, else ``~/.ketch/config.json``) looks like
docker's, so the same tools read it::

    {"auths": {"127.0.0.1:5000": {"auth": "base64(user:password)"},
               "https://index.docker.io/v1/": {"identitytoken": "..."}}}

Docker Hub is stored under ``https://index.docker.io/v1/`` as docker does; other
registries under their domain. Other keys of the file are kept as they are. The file
is written atomically with mode 0600. Credential helpers (``credsStore``) are not
supported: their entries are left alone and not used.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ketch.distribution.auth import Credentials, credentials_from_json
from ketch.distribution.endpoint import DOCKER_HUB, normalize_domain

__all__ = ["CredentialStore", "default_config_dir"]

_HUB_KEY = "https://index.docker.io/v1/"


def default_config_dir() -> Path:
    env = os.environ.get("KETCH_CONFIG")
    return Path(env) if env else Path.home() / ".ketch"


def _key(server: str) -> str:
    d = normalize_domain(server or DOCKER_HUB)
    return _HUB_KEY if d == DOCKER_HUB else d


class CredentialStore:
    """``config.json`` under ``directory`` (see the module doc)."""

    def __init__(self, directory: Path | str | None = None) -> None:
        self.path = Path(directory or default_config_dir()) / "config.json"

    def _load(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def _save(self, doc: dict[str, Any]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".config-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent="\t")
                f.write("\n")
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def get(self, server: str) -> Credentials:
        """The stored credentials for ``server`` (anonymous if none)."""
        auths = self._load().get("auths") or {}
        want = _key(server)
        for k, v in auths.items():
            if _key(k) == want and isinstance(v, dict):
                return credentials_from_json(v)
        return Credentials()

    def store(self, server: str, creds: Credentials) -> None:
        doc = self._load()
        auths = doc.setdefault("auths", {})
        entry: dict[str, str] = {}
        if creds.identity_token:
            entry["identitytoken"] = creds.identity_token
            if creds.username:
                entry["auth"] = base64.b64encode(f"{creds.username}:".encode()).decode()
        else:
            raw = f"{creds.username}:{creds.password}".encode()
            entry["auth"] = base64.b64encode(raw).decode()
        for k in [k for k in auths if _key(k) == _key(server)]:
            del auths[k]
        auths[_key(server)] = entry
        self._save(doc)

    def erase(self, server: str) -> bool:
        """Forget ``server``; False if nothing was stored for it."""
        doc = self._load()
        auths = doc.get("auths") or {}
        gone = [k for k in auths if _key(k) == _key(server)]
        for k in gone:
            del auths[k]
        if gone:
            self._save(doc)
        return bool(gone)

    def encoded(self, server: str) -> str:
        """The ``X-Registry-Auth`` header value for ``server`` ("" when anonymous)."""
        c = self.get(server)
        if c.anonymous:
            return ""
        obj = {"username": c.username, "password": c.password,
               "serveraddress": _key(server)}
        if c.identity_token:
            obj["identitytoken"] = c.identity_token
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode()
