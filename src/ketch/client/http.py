"""The request plumbing under :class:`ketch.client.remote.RemoteEngineClient`.

:class:`APIConnection` turns "GET /containers/json with these params" into an
HTTP exchange with the engine:

* **keep-alive**: one idle connection is kept and reused (a small pool: callers
  in other threads, or holding a stream open, get connections of their own);
  a request that fails on a reused connection before any reply is retried once
  on a fresh one, since the engine may have closed it while it was idle.
* **version negotiation**: the first request asks ``/_ping`` for ``Api-Version``
  and prefixes every path with ``/v<min(ours, theirs)>``, like the docker CLI.
* **errors**: a non-2xx reply becomes the :mod:`ketch.errors` class of its status
  (:data:`ERRORS`) carrying the engine's ``{"message": ...}``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from ketch import errors
from ketch.client.engine import Body, ConnectionFailed, Stream
from ketch.client.transport import Connection, ProtocolError, Response, Transport

__all__ = ["API_VERSION", "ERRORS", "APIConnection", "Query", "error_for", "path_quote"]

#: The newest Engine API version this client speaks.
API_VERSION = "1.47"

#: HTTP status → ketch error class (the inverse of ketch.api.httpstatus; 409 is
#: ambiguous there — Conflict or FailedPrecondition — and comes back as Conflict).
ERRORS: Mapping[int, type[errors.KetchError]] = {
    304: errors.NotModified,
    400: errors.InvalidArgument,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    500: errors.Internal,
    501: errors.NotImplementedYet,
    503: errors.Unavailable,
}

Query = Mapping[str, str | int | bool | list[str] | None]
_IDLE_MAX = 4


def path_quote(name: str, *, slashes: bool = False) -> str:
    """``name`` as a path segment (image names keep their slashes when ``slashes``)."""
    return quote(name, safe="/:@" if slashes else ":@")


def _version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in v.split("."))
    except ValueError:
        return ()


def error_for(status: int, body: bytes, content_type: str | None = None) -> errors.KetchError:
    """The ketch error for an error reply: its class by status, the engine's message."""
    message = ""
    if body:
        try:
            obj = json.loads(body)
            if isinstance(obj, dict) and isinstance(obj.get("message"), str):
                message = obj["message"]
        except (ValueError, UnicodeDecodeError):
            message = body.decode(errors="replace").strip()
    if status == 304 and not message:
        message = "not modified"
    cls = ERRORS.get(status)
    if cls is None:
        cls = errors.InvalidArgument if 400 <= status < 500 else errors.Internal
    if not message:
        message = f"{status} error from the engine"
    return cls(message)


def _encode_query(query: Query | None) -> str:
    if not query:
        return ""
    pairs: list[tuple[str, str]] = []
    for k, v in query.items():
        if v is None:
            continue
        if isinstance(v, bool):
            pairs.append((k, "1" if v else "0"))
        elif isinstance(v, list):
            pairs.extend((k, item) for item in v)
        else:
            pairs.append((k, str(v)))
    return "?" + urlencode(pairs) if pairs else ""


class APIConnection:
    """Requests to one engine, with keep-alive, version negotiation and error mapping."""

    def __init__(self, transport: Transport, *, version: str | None = None) -> None:
        self.transport = transport
        self._version = version
        self._lock = threading.Lock()
        self._idle: list[Connection] = []

    # -- connections -------------------------------------------------------------------

    def _take(self) -> Connection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self.transport.connect()

    def _give_back(self, conn: Connection, resp: Response) -> None:
        if conn.closed or conn.hijacked or not resp.done or resp.will_close:
            conn.close()
            return
        with self._lock:
            if len(self._idle) < _IDLE_MAX:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close idle connections (streams in use keep theirs)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    # -- version -----------------------------------------------------------------------

    @property
    def version(self) -> str:
        """The API version requests use, negotiated with the engine on first use."""
        if self._version is None:
            ver = API_VERSION
            try:
                resp, conn = self._exchange("GET", "/_ping", None, (), None)
                resp.read_all()
                self._give_back(conn, resp)
                theirs = resp.header("api-version")
                if theirs and () < _version_tuple(theirs) < _version_tuple(API_VERSION):
                    ver = theirs
            except ConnectionFailed:
                raise
            except errors.KetchError:
                pass  # an engine that fails /_ping is spoken to at our version
            self._version = ver
        return self._version

    def ping(self) -> tuple[str, str]:
        """``(Api-Version header, body)`` of ``GET /_ping``, unversioned."""
        resp, conn = self._exchange("GET", "/_ping", None, (), None)
        body = resp.read_all()
        self._give_back(conn, resp)
        if resp.status >= 300:
            raise error_for(resp.status, body)
        return resp.header("api-version") or "", body.decode(errors="replace")

    # -- requests ----------------------------------------------------------------------

    def _exchange(self, method: str, target: str, body: Body | None,
                  headers: tuple[tuple[str, str], ...], conn: Connection | None
                  ) -> tuple[Response, Connection]:
        # A reused connection may have been closed by the engine while idle; such a
        # request is sent again on a new connection, if its body can be replayed.
        c = conn or self._take()
        reused = c.requests > 0
        try:
            return c.request(method, target, headers=headers, body=body), c
        except ConnectionFailed:
            c.close()
            replayable = body is None or isinstance(body, bytes | bytearray)
            if not (reused and replayable and conn is None):
                raise
        c = self.transport.connect()
        try:
            return c.request(method, target, headers=headers, body=body), c
        except ConnectionFailed:
            c.close()
            raise

    def _target(self, path: str, query: Query | None) -> str:
        return f"/v{self.version}{path}{_encode_query(query)}"

    def open(self, method: str, path: str, *, query: Query | None = None,
             body: Body | None = None, json_body: Any = None,
             headers: Mapping[str, str] | None = None, dedicated: bool = False
             ) -> Response:
        """Send a request and return the response with its body unread.

        Raises the mapped error for a non-2xx status. The caller must finish the
        body (``read``/``stream``) or :meth:`discard` it. ``dedicated`` uses a new
        connection (for long waits and hijacks).
        """
        hdrs = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        target = self._target(path, query)
        conn = self.transport.connect() if dedicated else None
        resp, c = self._exchange(method, target, body, tuple(hdrs.items()), conn)
        if resp.status >= 300 and resp.status != 101:
            try:
                data = resp.read_all()
            except ConnectionFailed:
                data = b""
            self._give_back(c, resp)
            raise error_for(resp.status, data, resp.header("content-type"))
        return resp

    def discard(self, resp: Response) -> None:
        """Stop using ``resp``: its connection goes back to the pool if it is clean."""
        self._give_back(resp.conn, resp)

    def read(self, resp: Response) -> bytes:
        try:
            data = resp.read_all()
        except BaseException:
            resp.conn.close()
            raise
        self._give_back(resp.conn, resp)
        return data

    def call(self, method: str, path: str, *, query: Query | None = None,
             json_body: Any = None, body: Body | None = None,
             headers: Mapping[str, str] | None = None) -> Any:
        """A request whose reply is JSON (or empty → None)."""
        resp = self.open(method, path, query=query, json_body=json_body, body=body,
                         headers=headers)
        data = self.read(resp)
        if not data.strip():
            return None
        try:
            return json.loads(data)
        except ValueError:
            raise ProtocolError(f"{method} {path}: reply is not JSON: {data[:80]!r}") from None

    def stream(self, resp: Response) -> Stream[bytes]:
        """The body of ``resp`` as it arrives; closing early closes the connection."""
        try:
            yield from resp.iter_body()
        finally:
            if resp.done:
                self._give_back(resp.conn, resp)
            else:
                resp.conn.close()

    def json_lines(self, resp: Response) -> Stream[Any]:
        from ketch.client.streams import json_stream

        chunks = self.stream(resp)
        try:
            yield from json_stream(chunks)
        finally:
            chunks.close()
