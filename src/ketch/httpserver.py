"""A lean HTTP/1.1 server on asyncio, for the Docker Engine API and ketch's other servers.

Why our own: the Engine API needs connection hijacking (attach/exec answer
``101 UPGRADED`` with ``Connection: Upgrade`` / ``Upgrade: tcp`` and then speak a
raw byte protocol on the same socket), long-lived chunked streams (logs, events,
pulls) flushed per chunk, and nothing else fancy. The stdlib has no async HTTP
server, and the project takes no dependencies.

Lifecycle of one connection::

    accept ─▶ read head (≤ max_header_bytes) ─▶ read body (Content-Length or
    chunked, ≤ max_body_bytes) ─▶ handler(Request) ─▶ Response
        ├─ body: bytes            → Content-Length, then next request (keep-alive)
        ├─ body: async iterator   → Transfer-Encoding: chunked, one chunk per item
        ├─ body: FileBody         → Content-Length, sendfile(2) (unix) or 1 MiB writes (TCP)
        └─ hijack: callback       → head written, callback owns reader/writer, then close

Streamed request bodies: when the server's ``stream_body(request)`` predicate says so,
the body is *not* read before the handler; ``request.stream`` (a ``BodyStream``) hands
it over piece by piece instead (a registry writes a 100 MB blob straight to storage
while hashing it), read from the socket straight into the handler's buffers.
``100 Continue`` is sent on the handler's first read. When the handler returns, what
it left unread is drained if small; otherwise (or if the client is still waiting for
``100 Continue``) the response carries ``Connection: close``. A framing or size error
met while the handler reads answers 400/413 and closes, as for buffered bodies. Body
framing and ``FileBody`` live in ``ketch.httpbody``, ``BodyStream`` in ``ketch.httpstream``;
they are re-exported here.

HEAD requests get the GET head (with its Content-Length) and no body. A request
that cannot be parsed gets 400 (431 for an oversized head, 413 for an oversized
body) and the connection is closed. The handler is expected to turn its own
errors into responses (``ketch.api.httpstatus``); an exception that escapes it is
logged and answered with a bare 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import IO, Any
from urllib.parse import parse_qs, unquote, urlsplit

from ketch.httpbody import BadRequest, FileBody, Limits, read_body, send_file
from ketch.httpstream import BodyStream

__all__ = [
    "BadRequest",
    "BodyStream",
    "FileBody",
    "HTTPServer",
    "Handler",
    "Headers",
    "Hijacker",
    "Limits",
    "Request",
    "Response",
    "parse_head",
    "upgrade_response",
]

log = logging.getLogger(__name__)

Hijacker = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Headers:
    """Case-insensitive multi-map of header fields, in arrival order."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = list(items)

    def get(self, name: str, default: str | None = None) -> str | None:
        low = name.lower()
        for k, v in self._items:
            if k.lower() == low:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        low = name.lower()
        return [v for k, v in self._items if k.lower() == low]

    def tokens(self, name: str) -> set[str]:
        """Comma-separated tokens of every field called ``name``, lower-cased."""
        return {t.strip().lower() for v in self.get_all(name) for t in v.split(",") if t.strip()}

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)


@dataclass(slots=True)
class Request:
    """One parsed request. ``path`` is percent-decoded; ``params`` are filled by the router."""

    method: str
    target: str
    version: str
    headers: Headers
    body: bytes = b""
    path: str = ""
    query: dict[str, list[str]] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    api_version: str = ""
    spool: IO[bytes] | None = None  # set instead of ``body`` when the body was spooled
    stream: BodyStream | None = None  # set instead of ``body`` for streamed routes

    def body_io(self) -> IO[bytes]:
        """The whole body as a readable binary file, spooled or not (for tarballs)."""
        if self.spool is not None:
            self.spool.seek(0)
            return self.spool
        return io.BytesIO(self.body)

    def __post_init__(self) -> None:
        if not self.path:
            parts = urlsplit(self.target)
            self.path = unquote(parts.path)
            self.query = parse_qs(parts.query, keep_blank_values=True)

    def arg(self, name: str, default: str | None = None) -> str | None:
        """The last value of query parameter ``name``."""
        values = self.query.get(name)
        return values[-1] if values else default

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.tokens("connection")
        if self.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn


@dataclass(slots=True)
class Response:
    """What a handler returns.

    ``body`` is bytes (sent with Content-Length), an async iterator of bytes
    (sent chunked, each item flushed as it comes) or a ``FileBody`` (sent with
    Content-Length from a file). ``hijack``, if set, is called
    with the raw reader/writer once the head is written; the connection is closed
    when it returns.
    """

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | AsyncIterator[bytes] | FileBody = b""
    hijack: Hijacker | None = None

    def header(self, name: str) -> str | None:
        low = name.lower()
        for k, v in self.headers:
            if k.lower() == low:
                return v
        return None


Handler = Callable[[Request], Awaitable[Response]]


def upgrade_response(request: Request, hijack: Hijacker, *,
                     content_type: str = "application/vnd.docker.raw-stream") -> Response:
    """The response that hands the connection to ``hijack`` (Docker's attach/exec).

    A client that asked for ``Upgrade: tcp`` gets ``101 UPGRADED``; one that did
    not (old clients) gets ``200 OK`` and the same raw stream after the head.
    """
    headers = [("Content-Type", content_type)]
    if "upgrade" in request.headers.tokens("connection") and request.headers.get("upgrade"):
        headers += [("Connection", "Upgrade"), ("Upgrade", "tcp")]
        return Response(101, headers, hijack=hijack)
    return Response(200, headers, hijack=hijack)


_DEFAULT_LIMITS = Limits()
_HANGUP_POLL = 0.25  # seconds between checks for a client gone during a streamed body

_REASONS: dict[int, str] = {s.value: s.phrase for s in HTTPStatus}
_REASONS[101] = "UPGRADED"  # what dockerd writes; clients only look at the code


class _DateCache:
    """RFC 7231 Date header, formatted at most once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._value = email.utils.formatdate(second, usegmt=True)
        return self._value


_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                         "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def parse_head(data: bytes, limits: Limits = _DEFAULT_LIMITS) -> Request:
    """Parse a request line and header fields (``data`` ends with CRLF CRLF)."""
    try:
        text = data.decode("latin-1")
    except UnicodeDecodeError as e:  # pragma: no cover - latin-1 decodes anything
        raise BadRequest(400, "bad encoding") from e
    lines = text.split("\r\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise BadRequest(400, "empty request")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequest(400, f"malformed request line {lines[0][:100]!r}")
    method, target, version = parts
    if not method or not set(method) <= _TOKEN_CHARS:
        raise BadRequest(400, f"malformed method {method[:50]!r}")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(505, f"unsupported protocol version {version[:20]!r}")
    if not target.startswith("/"):
        if target.startswith(("http://", "https://")):
            target = urlsplit(target)._replace(scheme="", netloc="").geturl() or "/"
        else:
            raise BadRequest(400, f"malformed request target {target[:100]!r}")
    if len(lines) - 1 > limits.max_headers:
        raise BadRequest(431, "too many header fields")
    fields: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            raise BadRequest(400, "obsolete header line folding")
        name, sep, value = line.partition(":")
        if not sep or not name or not set(name) <= _TOKEN_CHARS:
            raise BadRequest(400, f"malformed header field {line[:100]!r}")
        fields.append((name, value.strip(" \t")))
    return Request(method, target, version, Headers(fields))


class HTTPServer:
    """Serves ``handler`` on every accepted connection; tracks them for shutdown."""

    def __init__(self, handler: Handler, *, limits: Limits = _DEFAULT_LIMITS,
                 server_header: str | None = None,
                 stream_body: Callable[[Request], bool] | None = None) -> None:
        self.handler = handler
        self.limits = limits
        self.server_header = server_header
        self.stream_body = stream_body  # requests whose body the handler reads itself
        self._dates = _DateCache()
        self._conns: dict[asyncio.StreamWriter, asyncio.Task[Any] | None] = {}

    async def start_unix(self, path: str) -> asyncio.Server:
        # The reader limit bounds readuntil(), hence the request head.
        return await asyncio.start_unix_server(self.serve, path=path,
                                               limit=self.limits.max_header_bytes)

    async def start_tcp(self, host: str, port: int, ssl: Any) -> asyncio.Server:
        """Listen on TCP with ``ssl`` (an ``ssl.SSLContext`` that verifies client certs)."""
        return await asyncio.start_server(self.serve, host, port, ssl=ssl,
                                          limit=self.limits.max_header_bytes)

    async def close_connections(self, timeout: float = 5.0) -> None:
        """Close every open connection (idle keep-alives, streams, hijacked sockets).

        Call after the listening servers are closed; waits up to ``timeout`` for
        the connection tasks to finish, then cancels the rest.
        """
        for w in list(self._conns):
            w.close()
        tasks = [t for t in self._conns.values() if t is not None and not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns[writer] = asyncio.current_task()
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("connection handler failed")
        finally:
            self._conns.pop(writer, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = True
        while True:
            try:
                if first:
                    # A TLS ClientHello (record type 0x16) sent to a plain listener carries
                    # no CRLF: answer at once so the client fails fast (and clients that
                    # try HTTPS first, like skopeo, fall back to HTTP without a timeout).
                    lead = await reader.readexactly(1)
                    if lead == b"\x16":
                        writer.write(b"HTTP/1.0 400 Bad Request\r\nConnection: close\r\n\r\n"
                                     b"Client sent an HTTPS request to an HTTP server.\n")
                        with contextlib.suppress(ConnectionError):
                            await writer.drain()
                        return
                    first = False
                    head = lead + await reader.readuntil(b"\r\n\r\n")
                else:
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as e:
                if e.partial.strip():
                    await self._write_error(writer, BadRequest(400, "truncated request"))
                return
            except asyncio.LimitOverrunError:
                await self._write_error(writer, BadRequest(431, "request header too large"))
                return
            try:
                req = parse_head(head, self.limits)
                if self.stream_body is not None and self.stream_body(req):
                    req.stream = BodyStream(reader, writer, req, self.limits)
                else:
                    await read_body(reader, writer, req, self.limits)
            except BadRequest as e:
                await self._write_error(writer, e)
                return
            except (asyncio.LimitOverrunError, ValueError):
                await self._write_error(writer, BadRequest(400, "malformed chunked body"))
                return
            try:
                resp = await self.handler(req)
            except BadRequest as e:
                if req.stream is None:
                    log.exception("unhandled error in %s %s", req.method, req.path)
                    resp = _internal_error()
                else:  # the streamed body broke its framing or limit mid-handler
                    req.stream.release()
                    await self._write_error(writer, e)
                    await _linger(reader, writer)
                    return
            except (asyncio.IncompleteReadError, ConnectionError):
                if req.stream is None:
                    log.exception("unhandled error in %s %s", req.method, req.path)
                    resp = _internal_error()
                else:  # the client went away while sending its body
                    req.stream.release()
                    return
            except Exception:
                log.exception("unhandled error in %s %s", req.method, req.path)
                resp = _internal_error()
            finally:
                if req.spool is not None:
                    req.spool.close()
            reusable = req.stream is None or await req.stream.finish()
            keep = await self._write_response(reader, writer, req, resp, close=not reusable)
            if not reusable:
                assert req.stream is not None
                if not req.stream.awaiting_continue:  # else the client sent no body
                    await _linger(reader, writer)
                return
            if resp.hijack is not None:
                await resp.hijack(reader, writer)
                return
            if not keep:
                return

    def _head(self, status: int, headers: list[tuple[str, str]]) -> bytearray:
        out = bytearray(f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n", "latin-1")
        out += f"Date: {self._dates.now()}\r\n".encode("latin-1")
        if self.server_header:
            out += f"Server: {self.server_header}\r\n".encode("latin-1")
        for k, v in headers:
            out += f"{k}: {v}\r\n".encode("latin-1")
        out += b"\r\n"
        return out

    async def _write_error(self, writer: asyncio.StreamWriter, e: BadRequest) -> None:
        body = b'{"message":' + _json_str(str(e)) + b"}\n"
        writer.write(self._head(e.status, [("Content-Type", "application/json"),
                                           ("Content-Length", str(len(body))),
                                           ("Connection", "close")]) + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    async def _write_response(self, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter, req: Request,
                              resp: Response, *, close: bool = False) -> bool:
        """Write ``resp``; True when the connection may carry another request."""
        keep = req.keep_alive and resp.hijack is None and not close
        headers = list(resp.headers)
        no_body = req.method == "HEAD" or resp.status in (204, 304) or resp.status < 200
        body = resp.body
        if resp.hijack is not None:
            if isinstance(body, FileBody):
                body.file.close()
            writer.write(self._head(resp.status, headers))
            await writer.drain()
            return False
        if isinstance(body, FileBody):
            return await self._write_file(writer, resp.status, headers, body, no_body, keep)
        if isinstance(body, bytes | bytearray):
            if resp.status not in (204, 304) and resp.header("content-length") is None:
                headers.append(("Content-Length", str(len(body))))
            if not keep:
                headers.append(("Connection", "close"))
            head = self._head(resp.status, headers)
            writer.write(head if no_body else head + body)
            await writer.drain()
            return keep
        # streaming
        chunked = req.version == "HTTP/1.1"
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            keep = False  # HTTP/1.0: the end of the body is the end of the connection
        if not keep:
            headers.append(("Connection", "close"))
        writer.write(self._head(resp.status, headers))
        await writer.drain()
        if no_body:
            await _aclose(body)
            return keep
        async def send() -> None:
            async for chunk in body:
                if not chunk:
                    continue
                if chunked:
                    writer.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                else:
                    writer.write(chunk)
                await writer.drain()

        sender = asyncio.get_running_loop().create_task(send())
        try:
            # A client that hangs up ends the stream (logs -f, events, stats) at once,
            # not at the next write: poll for EOF while the body produces.
            while True:
                done, _ = await asyncio.wait({sender}, timeout=_HANGUP_POLL)
                if done:
                    sender.result()
                    break
                if reader.at_eof() or writer.is_closing():
                    sender.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sender
                    raise ConnectionResetError("client went away during a streamed body")
        finally:
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(BaseException):
                    await sender
            await _aclose(body)
        if chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        return keep

    async def _write_file(self, writer: asyncio.StreamWriter, status: int,
                          headers: list[tuple[str, str]], body: FileBody, no_body: bool,
                          keep: bool) -> bool:
        try:
            if status not in (204, 304) and not any(k.lower() == "content-length"
                                                    for k, _ in headers):
                headers.append(("Content-Length", str(body.count)))
            if not keep:
                headers.append(("Connection", "close"))
            writer.write(self._head(status, headers))
            if not no_body:
                await send_file(writer, body)  # waits for the head to be flushed first
            else:
                await writer.drain()
        finally:
            body.file.close()
        return keep


_LINGER_SECONDS = 2.0
_LINGER_BYTES = 64 << 20


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Before closing on a client still sending a body we did not read: half-close, then
    read and discard for a moment. Closing at once would make the kernel answer the
    unread bytes with RST, which can destroy the response before the client reads it."""
    with contextlib.suppress(Exception):
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(_LINGER_SECONDS):
            drained = 0
            while drained < _LINGER_BYTES and (data := await reader.read(1 << 20)):
                drained += len(data)


def _internal_error() -> Response:
    return Response(500, [("Content-Type", "application/json")],
                    b'{"message":"internal server error"}\n')


async def _aclose(it: Any) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()


def _json_str(s: str) -> bytes:
    return json.dumps(s).encode()
