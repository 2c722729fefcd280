"""HTTP for the registry client: kept-alive connections per thread, TLS, redirects.

stdlib ``http.client`` only. Each thread keeps one connection per (scheme, host), so
parallel layer downloads each have their own socket; a connection is reused only when
the previous answer on it was read to its end, and dropped otherwise.

Scheme choice (:meth:`Transport.scheme`): ``https`` always, except for an endpoint
marked insecure (loopback registries), where a TLS failure makes the transport use
``http`` for that host from then on — dockerd's fallback for insecure registries.
"""

from __future__ import annotations

import http.client
import logging
import ssl
import threading
from collections.abc import Mapping
from typing import IO
from urllib.parse import urljoin, urlsplit

from ketch.distribution.endpoint import Endpoint
from ketch.errors import Unavailable

__all__ = ["Reply", "Transport", "TransportError"]

log = logging.getLogger(__name__)

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
#: what a dropped or refused connection raises inside http.client
TransportError = (OSError, http.client.HTTPException)


class Reply:
    """One HTTP answer; ``read`` streams the body. ``close()`` when done with it."""

    def __init__(self, resp: http.client.HTTPResponse, url: str,
                 release: threading.Event) -> None:
        self.resp = resp
        self.url = url
        self.status = resp.status
        self.reason = resp.reason
        self._release = release

    def header(self, name: str, default: str = "") -> str:
        return self.resp.getheader(name, default) or default

    def read(self, n: int = -1) -> bytes:
        return self.resp.read(n if n >= 0 else None)

    def read1(self, n: int) -> bytes:
        """Up to ``n`` bytes, as soon as some are there (b"" at the end)."""
        return self.resp.read1(n)

    def body(self, limit: int = 16 << 20) -> bytes:
        """The whole body (at most ``limit`` bytes: manifests and error documents)."""
        data = self.resp.read(limit + 1)
        if len(data) > limit:
            raise Unavailable(f"{self.url}: answer larger than {limit} bytes")
        return data

    def close(self) -> None:
        if self.resp.isclosed():
            self._release.set()  # read to the end: the connection may be reused
        self.resp.close()

    def __enter__(self) -> Reply:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Conn:
    def __init__(self, conn: http.client.HTTPConnection) -> None:
        self.conn = conn
        self.free = threading.Event()
        self.free.set()


class Transport:
    """HTTP(S) requests to registries (see the module doc). Thread-safe."""

    def __init__(self, timeout: float = 60.0, ssl_context: ssl.SSLContext | None = None,
                 user_agent: str = "ketch") -> None:
        self.timeout = timeout
        self.ssl_context = ssl_context or ssl.create_default_context()
        self.user_agent = user_agent
        self._local = threading.local()
        self._schemes: dict[str, str] = {}
        self._mu = threading.Lock()
        self._all: set[http.client.HTTPConnection] = set()

    def release_thread(self) -> None:
        """Close this thread's connections (a worker thread about to end)."""
        pool: dict[tuple[str, str], _Conn] = self._local.__dict__.setdefault("pool", {})
        for key in list(pool):
            self._drop(*key)

    def close(self) -> None:
        """Close every connection this transport opened, in any thread."""
        with self._mu:
            conns, self._all = self._all, set()
        for c in conns:
            c.close()

    def scheme(self, endpoint: Endpoint) -> str:
        with self._mu:
            return self._schemes.get(endpoint.host, "https")

    def _conn(self, scheme: str, netloc: str) -> _Conn:
        pool: dict[tuple[str, str], _Conn] = self._local.__dict__.setdefault("pool", {})
        c = pool.get((scheme, netloc))
        if c is not None and c.free.is_set():
            return c
        if c is not None:
            c.conn.close()
            with self._mu:
                self._all.discard(c.conn)
        if scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                netloc, timeout=self.timeout, context=self.ssl_context)
        else:
            conn = http.client.HTTPConnection(netloc, timeout=self.timeout)
        c = _Conn(conn)
        pool[(scheme, netloc)] = c
        with self._mu:
            self._all.add(conn)
        return c

    def _drop(self, scheme: str, netloc: str) -> None:
        pool: dict[tuple[str, str], _Conn] = self._local.__dict__.setdefault("pool", {})
        c = pool.pop((scheme, netloc), None)
        if c is not None:
            c.conn.close()
            with self._mu:
                self._all.discard(c.conn)

    def request(self, method: str, url: str, headers: Mapping[str, str] | None = None,
                body: bytes | IO[bytes] | None = None, length: int | None = None,
                follow: bool = True) -> Reply:
        """Send one request; follows redirects for GET/HEAD (dropping Authorization
        when the host changes). A stream ``body`` without ``length`` goes out with
        ``Transfer-Encoding: chunked``. ``OSError``/``HTTPException`` for a failed
        connection."""
        hdrs = dict(headers or {})
        hdrs.setdefault("User-Agent", self.user_agent)
        for _ in range(_MAX_REDIRECTS + 1):
            reply = self._once(method, url, hdrs, body, length)
            if not follow or reply.status not in _REDIRECTS or method not in ("GET", "HEAD"):
                return reply
            target = urljoin(url, reply.header("Location"))
            reply.read()
            reply.close()
            if urlsplit(target).netloc != urlsplit(url).netloc:
                hdrs.pop("Authorization", None)
            url = target
        raise Unavailable(f"{method} {url}: too many redirects")

    def _once(self, method: str, url: str, headers: dict[str, str],
              body: bytes | IO[bytes] | None, length: int | None) -> Reply:
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        if body is not None and length is None and isinstance(body, bytes):
            length = len(body)
        chunked = body is not None and not isinstance(body, bytes) and length is None
        if length is not None:
            headers = {**headers, "Content-Length": str(length)}
        elif chunked:
            headers = {**headers, "Transfer-Encoding": "chunked"}
        elif method in ("POST", "PUT", "PATCH"):
            headers = {**headers, "Content-Length": "0"}
        for attempt in (0, 1):
            c = self._conn(parts.scheme, parts.netloc)
            fresh = c.conn.sock is None
            try:
                c.conn.putrequest(method, path, skip_accept_encoding=True)
                for k, v in headers.items():
                    c.conn.putheader(k, v)
                c.conn.endheaders()
                if isinstance(body, bytes):
                    c.conn.send(body)
                elif body is not None:
                    while chunk := body.read(1 << 20):
                        c.conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked
                                    else chunk)
                    if chunked:
                        c.conn.send(b"0\r\n\r\n")
                resp = c.conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError) as e:
                self._drop(parts.scheme, parts.netloc)
                # a kept-alive connection the server closed meanwhile: retry once afresh
                if fresh or attempt or not (body is None or isinstance(body, bytes)):
                    raise e
                continue
            except BaseException:
                self._drop(parts.scheme, parts.netloc)
                raise
            c.free.clear()
            if method == "HEAD":
                resp.read()
            return Reply(resp, url, c.free)
        raise AssertionError("unreachable")

    def open(self, endpoint: Endpoint, method: str, path: str,
             headers: Mapping[str, str] | None = None, body: bytes | IO[bytes] | None = None,
             length: int | None = None, follow: bool = True) -> Reply:
        """``request`` against ``endpoint`` (``path`` absolute, or a full URL the
        registry gave in a ``Location``), choosing the scheme as the module doc says."""
        if path.startswith(("http://", "https://")):
            return self.request(method, path, headers, body, length, follow)
        scheme = self.scheme(endpoint)
        try:
            return self.request(method, endpoint.url(scheme, path), headers, body, length,
                                follow)
        except (ssl.SSLError, ConnectionResetError) as e:
            if scheme != "https" or not endpoint.insecure:
                raise
            log.info("registry %s does not speak TLS (%s); using plain HTTP (insecure "
                     "registry on loopback)", endpoint.host, e)
            with self._mu:
                self._schemes[endpoint.host] = "http"
            if hasattr(body, "seek"):
                body.seek(0)  # type: ignore[union-attr]
            return self.request(method, endpoint.url("http", path), headers, body, length,
                                follow)

