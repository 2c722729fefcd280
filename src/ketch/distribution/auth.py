"""Registry authentication: credentials, ``WWW-Authenticate`` challenges, bearer tokens.

The flow (Docker's token authentication, distribution ``docs/spec/auth/token.md``):

1. A request without credentials gets ``401`` and a challenge, e.g.
   ``Bearer realm="https://auth.example/token",service="registry",scope="repository:x:pull"``
   or ``Basic realm="Registry Realm"``.
2. ``Basic``: the request is repeated with ``Authorization: Basic base64(user:pass)``.
3. ``Bearer``: a token is fetched from ``realm`` with ``service`` and one ``scope`` per
   wanted access (``repository:<name>:pull,push``), sending the credentials as basic auth
   (or, with an identity token, as an OAuth2 refresh token by ``POST``); the request is
   repeated with ``Authorization: Bearer <token>``.

:class:`Authorizer` remembers, per registry host, the last challenge and the tokens it
got (until they expire), so later requests carry a token at once and the 401 round trip
is paid once per scope.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ketch.errors import InvalidArgument

__all__ = [
    "Authorizer",
    "Challenge",
    "Credentials",
    "TokenFetch",
    "credentials_from_json",
    "decode_registry_auth",
    "parse_challenges",
]

_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')
_DEFAULT_TOKEN_LIFETIME = 60


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a user gave for one registry (all optional: anonymous access)."""

    username: str = ""
    password: str = ""
    identity_token: str = ""  #: an OAuth2 refresh token from an earlier login
    registry_token: str = ""  #: a bearer token to send as it is

    @property
    def anonymous(self) -> bool:
        return not (self.username or self.password or self.identity_token or
                    self.registry_token)

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def decode_registry_auth(header: str | None) -> Credentials:
    """The ``X-Registry-Auth`` header (base64url JSON ``AuthConfig``) as credentials.

    Like dockerd, an empty or undecodable header means anonymous access.
    """
    if not header:
        return Credentials()
    raw = header.strip()
    try:
        obj = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, TypeError):
        try:
            obj = json.loads(base64.b64decode(raw + "=" * (-len(raw) % 4)))
        except (ValueError, TypeError):
            return Credentials()
    if not isinstance(obj, dict):
        return Credentials()
    return credentials_from_json(obj)


def credentials_from_json(obj: Mapping[str, Any]) -> Credentials:
    """An ``AuthConfig`` object (``username``, ``password``, ``auth``, ``identitytoken``...)."""
    user, password = str(obj.get("username") or ""), str(obj.get("password") or "")
    auth = obj.get("auth")
    if auth and not user:
        try:
            user, _, password = base64.b64decode(str(auth)).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument("invalid auth configuration: bad 'auth' field") from None
    return Credentials(user, password, str(obj.get("identitytoken") or ""),
                       str(obj.get("registrytoken") or ""))


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: scheme (lower case) and its parameters."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)


def parse_challenges(header: str) -> list[Challenge]:
    """The challenges of a ``WWW-Authenticate`` header (``Bearer a="b",c="d", Basic ...``)."""
    out: list[Challenge] = []
    rest = header.strip()
    while rest:
        m = re.match(r"([A-Za-z][A-Za-z0-9_-]*)\s*", rest)
        if m is None:
            break
        scheme, rest = m.group(1).lower(), rest[m.end():]
        params: dict[str, str] = {}
        while True:
            p = _PARAM.match(rest)
            if p is None or not p.group(0).strip():
                break
            value = p.group(2) if p.group(2) is not None else p.group(3)
            params[p.group(1).lower()] = re.sub(r"\\(.)", r"\1", value or "")
            rest = rest[p.end():]
        out.append(Challenge(scheme, params))
        rest = rest.lstrip(", ")
    return out


#: fetch(method, url, headers, body) -> (status, body bytes); given by the transport
TokenFetch = Callable[[str, str, Mapping[str, str], bytes | None], tuple[int, bytes]]


class Authorizer:
    """Authorization headers for one registry host and one user (see the module doc).

    Thread-safe: parallel downloads share one authorizer.
    """

    def __init__(self, credentials: Credentials, fetch: TokenFetch) -> None:
        self.credentials = credentials
        self._fetch = fetch
        self._mu = threading.Lock()
        self._challenge: Challenge | None = None
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}

    def header(self, scopes: Sequence[str]) -> str | None:
        """The ``Authorization`` value to send now, if one is known to be needed."""
        with self._mu:
            ch = self._challenge
            if ch is None:
                return None
            if ch.scheme == "basic":
                return None if self.credentials.anonymous else self.credentials.basic()
            tok = self._tokens.get(tuple(sorted(scopes)))
            if tok is not None and tok[1] > time.monotonic():
                return "Bearer " + tok[0]
        return None

    def answer(self, www_authenticate: str, scopes: Sequence[str]) -> str | None:
        """React to a 401: the header to retry with, or None if retrying cannot help.

        Raises ``Unauthorized`` (from the token fetch) when the token server refuses.
        """
        challenges = parse_challenges(www_authenticate)
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if self.credentials.registry_token:
            return "Bearer " + self.credentials.registry_token
        if bearer is not None and bearer.params.get("realm"):
            with self._mu:
                self._challenge = bearer
            want = list(scopes)
            if not want and bearer.params.get("scope"):
                want = bearer.params["scope"].split(" ")
            token, lifetime = self._token(bearer, want)
            with self._mu:
                self._tokens[tuple(sorted(scopes))] = (token, time.monotonic() + lifetime)
            return "Bearer " + token
        if basic is not None:
            with self._mu:
                self._challenge = basic
            return None if self.credentials.anonymous else self.credentials.basic()
        return None

    def _token(self, ch: Challenge, scopes: Sequence[str]) -> tuple[str, float]:
        from urllib.parse import urlencode

        from ketch.errors import Unauthorized

        realm = ch.params["realm"]
        service = ch.params.get("service", "")
        creds = self.credentials
        if creds.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                    "service": service, "client_id": "ketch", "scope": " ".join(scopes)}
            status, body = self._fetch(
                "POST", realm, {"Content-Type": "application/x-www-form-urlencoded"},
                urlencode(form).encode())
        else:
            query: list[tuple[str, str]] = [("service", service)] if service else []
            query += [("scope", s) for s in scopes]
            if not creds.anonymous:
                query.append(("account", creds.username))
            headers = {} if creds.anonymous else {"Authorization": creds.basic()}
            sep = "&" if "?" in realm else "?"
            url = realm + (sep + urlencode(query) if query else "")
            status, body = self._fetch("GET", url, headers, None)
        if status in (401, 403):
            raise Unauthorized(_token_error(body) or "unauthorized: incorrect username or "
                               "password")
        if status != 200:
            raise Unauthorized(f"token server {realm} answered {status}")
        try:
            obj = json.loads(body)
            token = str(obj.get("token") or obj.get("access_token") or "")
            lifetime = float(obj.get("expires_in") or _DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError):
            token, lifetime = "", 0.0
        if not token:
            raise Unauthorized(f"token server {realm} gave no token")
        return token, max(lifetime - 5, 1.0)


def _token_error(body: bytes) -> str:
    try:
        obj = json.loads(body)
        errs = obj.get("errors") or []
        if errs:
            e = errs[0]
            return f"{str(e.get('code', 'unauthorized')).lower()}: {e.get('message', '')}"
        if obj.get("details"):
            return f"unauthorized: {obj['details']}"
    except (ValueError, AttributeError):
        pass
    return ""
