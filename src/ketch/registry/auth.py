"""Who may do what: access scopes, the access policy, Basic and Bearer (token) auth,
and the token server.

Terms, as Docker's token specification uses them:

scope
    ``type:name:actions`` — ``repository:team/app:pull,push`` or
    ``registry:catalog:*``. Every request needs a list of scopes (``needed``): reads
    need ``pull``, pushes (uploads, manifest PUT) ``pull,push``, deletes ``delete``,
    ``/v2/_catalog`` ``registry:catalog:*``, and ``GET /v2/`` none (only a valid
    identity).
policy
    which actions a user gets on a repository: ``[[access]]`` rules (users, repository
    glob patterns, actions), or — without rules — everything for every authenticated
    user; ``anonymous_read`` adds ``pull`` (and the catalog) for everyone.
authorizer
    checks one request: ``NoAuth``, ``BasicAuth`` (htpasswd users, the policy decides)
    or ``TokenAuth`` (a signed JWT whose ``access`` claim decides). It answers 401
    ``UNAUTHORIZED`` with a ``WWW-Authenticate`` challenge when credentials are missing
    or wrong (or a token lacks a scope the user might still get), and 403 ``DENIED`` when
    the user is known and the policy refuses.
token server
    ``TokenIssuer`` answers ``GET /token?service=&scope=`` (Basic credentials) and the
    OAuth2 ``POST /token`` password grant with an RS256 JWT granting the requested
    actions the policy allows (``ketch.registry.jwt``).

The flow a docker/skopeo client follows against ``TokenAuth``::

    GET /v2/                 → 401 WWW-Authenticate: Bearer realm="…/token",service="…"
    GET /token?service=…&scope=repository:x:pull,push   (Basic user:password)
                             → {"token": "<jwt>", "expires_in": 300, …}
    POST /v2/x/blobs/uploads/ (Authorization: Bearer <jwt>) → 202
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import parse_qs

from ketch.errors import InvalidArgument
from ketch.httpserver import Request, Response
from ketch.registry import jwt
from ketch.registry.errors import Denied, UnauthorizedError
from ketch.registry.passwords import Htpasswd

__all__ = [
    "ACTIONS",
    "CATALOG",
    "AccessPolicy",
    "AccessRule",
    "Authorizer",
    "BasicAuth",
    "Grant",
    "NoAuth",
    "Runner",
    "Scope",
    "TokenAuth",
    "TokenIssuer",
    "needed_scopes",
    "parse_basic",
]

log = logging.getLogger(__name__)

ACTIONS = frozenset({"pull", "push", "delete", "*"})
_MAX_FORM = 64 << 10

#: ``await run(fn, *args)``: run blocking ``fn`` (bcrypt) off the event loop.
Runner = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Scope:
    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Scope:
        """``type:name:a,b`` (the name may hold ``:``, e.g. a registry host:port)."""
        kind, sep, rest = text.partition(":")
        name, sep2, actions = rest.rpartition(":")
        if not sep or not sep2 or not kind or not name:
            raise InvalidArgument(f"malformed scope {text[:200]!r}")
        return cls(kind, name, tuple(a for a in actions.split(",") if a))

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"

    @classmethod
    def repo(cls, name: str, *actions: str) -> Scope:
        return cls("repository", name, actions)


CATALOG = Scope("registry", "catalog", ("*",))


def _covers(granted: Iterable[str], wanted: Iterable[str]) -> bool:
    g = set(granted)
    return "*" in g or set(wanted) <= g


@dataclass(frozen=True, slots=True)
class AccessRule:
    """``users`` (names; ``*`` = any authenticated user) may do ``actions`` on the
    repositories matching any of ``repositories`` (shell globs: ``team/*``)."""

    users: tuple[str, ...]
    repositories: tuple[str, ...]
    actions: frozenset[str]

    @classmethod
    def from_config(cls, raw: Mapping[str, Any], where: str) -> AccessRule:
        unknown = set(raw) - {"users", "repositories", "actions"}
        if unknown:
            raise InvalidArgument(f"{where}: unknown key(s) {sorted(unknown)}")
        fields: dict[str, tuple[str, ...]] = {}
        for key in ("users", "repositories", "actions"):
            value = raw.get(key)
            if not isinstance(value, list) or not value or \
                    not all(isinstance(v, str) and v for v in value):
                raise InvalidArgument(f"{where}.{key}: want a non-empty list of strings")
            fields[key] = tuple(value)
        bad = set(fields["actions"]) - ACTIONS
        if bad:
            raise InvalidArgument(f"{where}.actions: unknown {sorted(bad)}; "
                                  f"want {sorted(ACTIONS)}")
        return cls(fields["users"], fields["repositories"], frozenset(fields["actions"]))

    def applies(self, user: str, repository: str) -> bool:
        return ("*" in self.users or user in self.users) and \
            any(fnmatch.fnmatchcase(repository, p) for p in self.repositories)


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    rules: tuple[AccessRule, ...] = ()
    anonymous_read: bool = False

    def allowed(self, user: str | None, scope: Scope) -> frozenset[str]:
        """The actions ``user`` (None: anonymous) gets on ``scope``'s resource."""
        if scope.type == "registry":
            ok = scope.name == "catalog" and (user is not None or self.anonymous_read)
            return frozenset({"*"}) if ok else frozenset()
        if scope.type != "repository":
            return frozenset()
        out: set[str] = {"pull"} if self.anonymous_read else set()
        if user is None:
            return frozenset(out)
        if not self.rules:
            return frozenset({"*"})
        for rule in self.rules:
            if rule.applies(user, scope.name):
                out |= rule.actions
        return frozenset(out)

    def permits(self, user: str | None, scope: Scope) -> bool:
        return _covers(self.allowed(user, scope), scope.actions)


@dataclass(frozen=True, slots=True)
class Grant:
    """An authorised request: who (None: anonymous) and what else it may do."""

    user: str | None
    allows: Callable[[Scope], bool] = field(repr=False)


class Authorizer(Protocol):
    async def authorize(self, req: Request, needed: Sequence[Scope], run: Runner) -> Grant:
        """A ``Grant`` covering ``needed``, else ``UnauthorizedError`` / ``Denied``."""
        ...


class NoAuth:
    """Everyone may do everything (the default)."""

    async def authorize(self, req: Request, needed: Sequence[Scope], run: Runner) -> Grant:
        return Grant(None, lambda s: True)


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(user, password) of an ``Authorization: Basic`` header; None if absent or
    not Basic; ``UnauthorizedError`` if malformed."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True) \
            .decode("utf-8").partition(":")
    except (binascii.Error, ValueError):
        raise UnauthorizedError("malformed Basic credentials") from None
    if not sep or not user:
        raise UnauthorizedError("malformed Basic credentials")
    return user, password


def _denied(scope: Scope) -> Denied:
    return Denied(detail=[{"Type": scope.type, "Name": scope.name,
                           "Action": ",".join(scope.actions)}])


class BasicAuth:
    """htpasswd users; the policy says what each may do."""

    def __init__(self, htpasswd: Htpasswd, policy: AccessPolicy, realm: str) -> None:
        self.htpasswd, self.policy, self.realm = htpasswd, policy, realm

    def challenge(self, message: str | None = None) -> UnauthorizedError:
        return UnauthorizedError(message, headers=[
            ("WWW-Authenticate", f'Basic realm="{self.realm}", charset="UTF-8"')])

    async def authorize(self, req: Request, needed: Sequence[Scope], run: Runner) -> Grant:
        creds = parse_basic(req.headers.get("authorization"))
        if creds is None:
            if needed and all(self.policy.permits(None, s) for s in needed):
                return Grant(None, lambda s: self.policy.permits(None, s))
            raise self.challenge()
        user, password = creds
        if not await run(self.htpasswd.verify, user, password):
            raise self.challenge("invalid username or password")
        for s in needed:
            if not self.policy.permits(user, s):
                raise _denied(s)
        return Grant(user, lambda s: self.policy.permits(user, s))


def _token_access(claims: Mapping[str, Any]) -> list[Scope]:
    out = []
    access = claims.get("access")
    for entry in access if isinstance(access, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("type"), str) and \
                isinstance(entry.get("name"), str) and isinstance(entry.get("actions"), list):
            out.append(Scope(entry["type"], entry["name"],
                             tuple(a for a in entry["actions"] if isinstance(a, str))))
    return out


class TokenAuth:
    """Bearer tokens (RS256 JWTs) from a token server the registry trusts by key.

    ``realm`` is the token endpoint URL given to clients; None derives it from the
    request (``<scheme>://<Host>/token``, for the built-in token server). ``policy``,
    when this registry also issues its tokens, turns "the token lacks a scope" into 403
    ``DENIED`` for scopes the user could never get (else it is 401
    ``insufficient_scope``, so the client fetches a better token).
    """

    def __init__(self, keys: Sequence[jwt.RSAPublicKey], *, issuer: str, service: str,
                 realm: str | None, scheme: str = "http",
                 policy: AccessPolicy | None = None, anonymous_read: bool = False) -> None:
        if not keys:
            raise InvalidArgument("token auth needs at least one trusted public key")
        self.keys, self.issuer, self.service = list(keys), issuer, service
        self.realm, self.scheme, self.policy = realm, scheme, policy
        self.anonymous = AccessPolicy(anonymous_read=anonymous_read)

    def realm_for(self, req: Request) -> str:
        if self.realm:
            return self.realm
        host = req.headers.get("host") or "localhost"
        return f"{self.scheme}://{host}/token"

    def challenge(self, req: Request, needed: Sequence[Scope], error: str | None = None,
                  message: str | None = None) -> UnauthorizedError:
        parts = [f'realm="{self.realm_for(req)}"', f'service="{self.service}"']
        if needed:
            parts.append(f'scope="{" ".join(str(s) for s in needed)}"')
        if error:
            parts.append(f'error="{error}"')
        return UnauthorizedError(message, headers=[("WWW-Authenticate",
                                                    "Bearer " + ",".join(parts))])

    async def authorize(self, req: Request, needed: Sequence[Scope], run: Runner) -> Grant:
        header = req.headers.get("authorization") or ""
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            if needed and all(self.anonymous.permits(None, s) for s in needed):
                return Grant(None, lambda s: self.anonymous.permits(None, s))
            raise self.challenge(req, needed)
        try:
            claims = jwt.decode(token.strip(), self.keys, issuer=self.issuer,
                                audience=self.service)
        except jwt.TokenInvalid as e:
            log.info("bearer token refused: %s", e)
            raise self.challenge(req, needed, "invalid_token", f"invalid token: {e}") \
                from None
        access = _token_access(claims)
        sub = claims.get("sub")
        user = sub if isinstance(sub, str) and sub else None

        def allows(s: Scope) -> bool:
            return any(a.type == s.type and a.name == s.name and _covers(a.actions, s.actions)
                       for a in access) or self.anonymous.permits(None, s)

        for s in needed:
            if allows(s):
                continue
            if self.policy is not None and not self.policy.permits(user, s):
                raise _denied(s)
            raise self.challenge(req, [s], "insufficient_scope")
        return Grant(user, allows)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _last(params: Mapping[str, list[str]], key: str) -> str | None:
    values = params.get(key)
    return values[-1] if values else None


def _json(status: int, doc: Any, headers: Sequence[tuple[str, str]] = ()) -> Response:
    return Response(status, [("Content-Type", "application/json"), ("Cache-Control", "no-store"),
                             *headers], json.dumps(doc, separators=(",", ":")).encode())


@dataclass
class TokenIssuer:
    """The built-in token server (``GET``/``POST /token``); see the module docstring.

    Credentials come from the htpasswd file; without credentials a token is issued
    only when the policy gives anonymous users something (``anonymous_read``), else
    401. The token grants, of the requested scopes, the actions the policy allows;
    scopes with nothing allowed are left out (the registry then answers 403 DENIED).
    """

    htpasswd: Htpasswd
    policy: AccessPolicy
    key: jwt.RSAPrivateKey
    issuer: str
    service: str
    expiry: int = 300
    realm: str = "ketch-registry"

    def issue(self, user: str | None, scopes: Sequence[Scope],
              now: float | None = None) -> dict[str, Any]:
        t = time.time() if now is None else now
        access = []
        for s in scopes:
            allowed = self.policy.allowed(user, s)
            actions = list(s.actions) if "*" in allowed else \
                [a for a in s.actions if a in allowed]
            if actions:
                access.append({"type": s.type, "name": s.name, "actions": actions})
        claims = {"iss": self.issuer, "sub": user or "", "aud": self.service,
                  "exp": int(t) + self.expiry, "nbf": int(t) - 1, "iat": int(t),
                  "jti": secrets.token_hex(16), "access": access}
        token = jwt.encode(claims, self.key)
        return {"token": token, "access_token": token, "expires_in": self.expiry,
                "issued_at": _iso(t)}

    def _refuse(self, message: str) -> Response:
        return _json(401, {"errors": [{"code": "UNAUTHORIZED", "message": message}],
                           "details": message},
                     [("WWW-Authenticate", f'Basic realm="{self.realm}", charset="UTF-8"')])

    async def handle(self, req: Request, run: Runner) -> Response:
        """``GET /token`` (query + Basic) or ``POST /token`` (OAuth2 form)."""
        creds: tuple[str, str] | None
        if req.method == "POST":
            body = await req.stream.readall(limit=_MAX_FORM) if req.stream is not None \
                else req.body
            params = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
            if _last(params, "grant_type") != "password":
                return _json(400, {"error": "unsupported_grant_type",
                                   "details": "only the password grant is supported"})
            username = _last(params, "username")
            creds = (username, _last(params, "password") or "") if username else None
        else:
            params = req.query
            try:
                creds = parse_basic(req.headers.get("authorization"))
            except UnauthorizedError as e:
                return self._refuse(e.message)
        scope_args = params.get("scope", [])
        service = _last(params, "service")
        if service is not None and service != self.service:
            return _json(400, {"error": "invalid_request",
                               "details": f"this server issues tokens for service "
                                          f"{self.service!r}, not {service[:100]!r}"})
        try:
            scopes = [Scope.parse(s) for a in scope_args for s in a.split() if s]
        except InvalidArgument as e:
            return _json(400, {"error": "invalid_scope", "details": str(e)})
        user: str | None = None
        if creds is not None:
            if not await run(self.htpasswd.verify, creds[0], creds[1]):
                return self._refuse("invalid username or password")
            user = creds[0]
        elif not self.policy.anonymous_read:
            return self._refuse("authentication required")
        doc = await run(self.issue, user, scopes)
        if req.method == "POST":
            doc["scope"] = " ".join(scope_args)
        return _json(200, doc)


def needed_scopes(kind: str, method: str, name: str | None) -> list[Scope]:
    """The scopes a request needs: ``kind`` is the route's (``base``, ``catalog``,
    ``repo`` or ``upload``); uploads need ``pull,push`` whatever the method."""
    if kind == "catalog":
        return [CATALOG]
    if name is None or kind not in ("repo", "upload"):
        return []
    if kind == "upload" or method in ("PUT", "POST", "PATCH"):
        return [Scope.repo(name, "pull", "push")]
    if method == "DELETE":
        return [Scope.repo(name, "delete")]
    return [Scope.repo(name, "pull")]

