"""HTTP/1.1 client transport for the Engine API, by hand on blocking sockets.

Why not ``http.client``: attach and exec hijack the connection (``Connection:
Upgrade``/``Upgrade: tcp``, ``101``, then raw bytes both ways with a half-close),
and logs/events stream for as long as the engine likes; both need the socket and
the read buffer, which ``http.client`` keeps to itself.

One :class:`Connection` carries one request at a time::

    Transport.connect() ─▶ Connection ─ request() ─▶ Response (status, headers)
        body: read_all() / iter_body()  → connection reusable if the body was framed
              (Content-Length or chunked) and nobody said "Connection: close"
        hijack: Response.hijacked() → HijackedStream (the socket, raw, both ways)

Hosts: ``unix:///path`` (the default engine socket) and ``tcp://host:port``, the
latter with TLS when the transport is given an ``ssl.SSLContext``.
"""

from __future__ import annotations

import contextlib
import io
import socket
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ketch.client.engine import Body, ConnectionFailed, Readable
from ketch.errors import InvalidArgument

if TYPE_CHECKING:  # ssl is imported where a TLS connection is made (it costs a
    import ssl  # CLI run 15 ms)

__all__ = [
    "Connection",
    "HijackedStream",
    "ProtocolError",
    "Response",
    "Transport",
    "parse_host",
]

_CHUNK = 1 << 16
_MAX_HEAD = 1 << 20


class ProtocolError(ConnectionFailed):
    """The peer did not speak HTTP/1.1 as expected (or hung up mid-response)."""


@dataclass(frozen=True, slots=True)
class Transport:
    """Where the engine is and how to reach it; ``connect`` opens one socket."""

    url: str
    family: int
    address: str | tuple[str, int]
    host_header: str
    ssl_context: ssl.SSLContext | None = None
    timeout: float | None = None

    def connect(self) -> Connection:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout if self.timeout is not None else 60.0)
            sock.connect(self.address)
            if self.ssl_context is not None:
                host = self.address[0] if isinstance(self.address, tuple) else None
                sock = self.ssl_context.wrap_socket(sock, server_hostname=host)
            sock.settimeout(self.timeout)
        except OSError as e:
            sock.close()
            raise ConnectionFailed(
                f"Cannot connect to the ketch daemon at {self.url}. "
                f"Is the daemon running? ({e.strerror or e})") from e
        return Connection(sock, self.host_header)


def parse_host(url: str, *, ssl_context: ssl.SSLContext | None = None,
               timeout: float | None = None) -> Transport:
    """``unix:///run/ketch.sock`` or ``tcp://host:2375`` → a Transport.

    A bare path is taken as a unix socket. InvalidArgument for anything else.
    """
    if url.startswith("/"):
        url = "unix://" + url
    parts = urlsplit(url)
    if parts.scheme == "unix":
        path = parts.path
        if not path:
            raise InvalidArgument(f"invalid host {url!r}: no socket path")
        return Transport(url, socket.AF_UNIX, path, "docker", ssl_context, timeout)
    if parts.scheme in ("tcp", "http", "https"):
        if not parts.hostname:
            raise InvalidArgument(f"invalid host {url!r}: no host name")
        tls = parts.scheme == "https" or ssl_context is not None
        if parts.scheme == "https" and ssl_context is None:
            import ssl

            ssl_context = ssl.create_default_context()
        port = parts.port or (2376 if tls else 2375)
        v6 = ":" in parts.hostname
        host = f"[{parts.hostname}]" if v6 else parts.hostname
        return Transport(url, socket.AF_INET6 if v6 else socket.AF_INET,
                         (parts.hostname, port), f"{host}:{port}", ssl_context, timeout)
    raise InvalidArgument(f"invalid host {url!r}: use unix:///path or tcp://host:port")


class Response:
    """Status and head of one response; the body is read through its methods once."""

    def __init__(self, conn: Connection, method: str, status: int, reason: str,
                 headers: list[tuple[str, str]]) -> None:
        self.conn = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self._method = method
        self._done = False
        te = {t.strip().lower() for v in self.header_all("transfer-encoding")
              for t in v.split(",")}
        length = self.header("content-length")
        self.chunked = "chunked" in te
        self.length: int | None = None
        if not self.chunked and length is not None:
            try:
                self.length = int(length)
            except ValueError:
                raise ProtocolError(f"bad Content-Length {length!r}") from None
        self.no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
        self.will_close = ("close" in {t.strip().lower() for t in self.header_all("connection")}
                           or (not self.no_body and not self.chunked and self.length is None))

    def header(self, name: str) -> str | None:
        low = name.lower()
        for k, v in self.headers:
            if k.lower() == low:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        low = name.lower()
        return [v for k, v in self.headers if k.lower() == low]

    @property
    def done(self) -> bool:
        """The body was read to its end (the connection may carry another request)."""
        return self._done

    def iter_body(self) -> Iterator[bytes]:
        """Body bytes as they arrive (chunk boundaries are not preserved)."""
        if self._done:
            return
        rfile = self.conn.rfile
        if self.no_body:
            pass
        elif self.chunked:
            while True:
                line = rfile.readline(_MAX_HEAD)
                if not line.endswith(b"\n"):
                    raise ProtocolError("connection closed inside a chunked body")
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size line {line[:40]!r}") from None
                if size == 0:
                    while rfile.readline(_MAX_HEAD) not in (b"\r\n", b"\n", b""):
                        pass  # trailer fields
                    break
                yield from _read_exact(rfile, size)
                if rfile.readline(3) not in (b"\r\n", b"\n"):
                    raise ProtocolError("bad chunk terminator")
        elif self.length is not None:
            yield from _read_exact(rfile, self.length)
        else:
            while data := rfile.read1(_CHUNK):
                yield data
        self._done = True

    def read_all(self) -> bytes:
        return b"".join(self.iter_body())

    def hijacked(self, *, multiplexed: bool) -> HijackedStream:
        """The connection as a raw stream (after a 101 or a 200 to an attach)."""
        self._done = True
        self.conn.hijacked = True
        return HijackedStream(self.conn, multiplexed)


def _read_exact(rfile: io.BufferedIOBase, size: int) -> Iterator[bytes]:
    while size:
        data = rfile.read1(min(size, _CHUNK))
        if not data:
            raise ProtocolError("connection closed inside a response body")
        size -= len(data)
        yield data


class Connection:
    """One socket to the engine, carrying one request at a time."""

    def __init__(self, sock: socket.socket, host_header: str) -> None:
        self.sock = sock
        self.rfile = sock.makefile("rb")
        self.host_header = host_header
        self.hijacked = False
        self.closed = False
        self.requests = 0  # how many requests this connection has carried

    def request(self, method: str, target: str, *, headers: Iterable[tuple[str, str]] = (),
                body: Body | None = None) -> Response:
        """Send a request and read the response head (the body is left to the caller).

        ``body`` bytes go with Content-Length; a file or an iterable of chunks is
        sent chunked as it is read.
        """
        self.send(method, target, headers=headers, body=body)
        return self.read_response(method)

    def send(self, method: str, target: str, *, headers: Iterable[tuple[str, str]] = (),
             body: Body | None = None) -> None:
        """Send a request without waiting for the reply (see :meth:`read_response`)."""
        self.requests += 1
        head = [f"{method} {target} HTTP/1.1", f"Host: {self.host_header}",
                "User-Agent: ketch-client"]
        head += [f"{k}: {v}" for k, v in headers]
        if isinstance(body, bytes | bytearray):
            head.append(f"Content-Length: {len(body)}")
        elif body is not None:
            head.append("Transfer-Encoding: chunked")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        try:
            if isinstance(body, bytes | bytearray):
                self.sock.sendall(data + body)
            else:
                self.sock.sendall(data)
                if body is not None:
                    for chunk in _body_chunks(body):
                        if chunk:
                            self.sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                    self.sock.sendall(b"0\r\n\r\n")
        except BrokenPipeError:
            pass  # the engine answered early (an error); read what it said
        except OSError as e:
            raise ConnectionFailed(f"error sending {method} {target}: {e}") from e

    def read_response(self, method: str) -> Response:
        """Read the head of the reply to the request just sent (``method`` is its method)."""
        while True:
            try:
                line = self.rfile.readline(_MAX_HEAD)
            except OSError as e:
                raise ConnectionFailed(f"error reading response: {e}") from e
            if not line:
                raise ProtocolError("the engine closed the connection without a response")
            parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise ProtocolError(f"malformed status line {line[:80]!r}")
            status = int(parts[1])
            headers: list[tuple[str, str]] = []
            while True:
                h = self.rfile.readline(_MAX_HEAD)
                if h in (b"\r\n", b"\n"):
                    break
                if not h:
                    raise ProtocolError("connection closed inside a response head")
                name, sep, value = h.decode("latin-1").partition(":")
                if not sep:
                    raise ProtocolError(f"malformed header line {h[:80]!r}")
                headers.append((name.strip(), value.strip()))
            if status == 100:
                continue  # 100 Continue: the real response follows
            return Response(self, method, status, parts[2] if len(parts) > 2 else "", headers)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self.rfile.close()
        with contextlib.suppress(OSError):
            self.sock.close()


def _body_chunks(body: Body) -> Iterator[bytes]:
    if isinstance(body, Readable):
        while chunk := body.read(_CHUNK):
            yield bytes(chunk)
        return
    assert not isinstance(body, bytes | bytearray)
    for chunk in body:
        yield bytes(chunk)


class HijackedStream:
    """The socket of an attach/exec after the upgrade (implements ``RawStream``)."""

    def __init__(self, conn: Connection, multiplexed: bool) -> None:
        self._conn = conn
        self.multiplexed = multiplexed
        conn.sock.settimeout(None)

    def read(self, size: int = 65536) -> bytes:
        if self._conn.closed:
            return b""
        try:
            return bytes(self._conn.rfile.read1(size))
        except ConnectionResetError:
            return b""
        except (OSError, ValueError) as e:
            tls = sys.modules.get("ssl")  # imported if this is a TLS connection
            if tls is not None and isinstance(e, tls.SSLError):  # the TLS peer went away
                return b""
            if self._conn.closed:
                return b""
            raise

    def write(self, data: bytes) -> None:
        try:
            self._conn.sock.sendall(data)
        except OSError as e:
            raise ConnectionFailed(f"error writing to the attached stream: {e}") from e

    def close_write(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.sock.shutdown(socket.SHUT_RDWR)
        self._conn.close()

    def fileno(self) -> int:
        return self._conn.sock.fileno()

    def __enter__(self) -> HijackedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
