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
        ├─ body: FileBody         → Content-Length, bytes sent with sendfile(2)
        └─ hijack: callback       → head written, callback owns reader/writer, then close

Streamed request bodies: when the server's ``stream_body(request)`` predicate says so,
the body is *not* read before the handler; ``request.stream`` (a ``BodyStream``) hands
it over piece by piece instead (a registry writes a 100 MB blob straight to storage
while hashing it). ``100 Continue`` is sent on the handler's first read. When the handler
returns, what it left unread is drained if small; otherwise (or if the client is still
waiting for ``100 Continue``) the response carries ``Connection: close``. A framing or
size error met while the handler reads answers 400/413 and closes, as for buffered
bodies.

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
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import IO, Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

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


class BadRequest(Exception):
    """The bytes on the wire are not an HTTP/1.x request we accept; carries the status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-request limits. Go's net/http defaults to a 1 MiB head, so clients fit in it."""

    max_header_bytes: int = 1 << 20
    max_body_bytes: int = 1 << 40  # tarballs (load, import, cp) are spooled to disk
    spool_bytes: int = 8 << 20  # bodies larger than this go to a temp file, not memory
    max_headers: int = 200


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
class FileBody:
    """A response body of ``count`` bytes of ``file`` from ``offset``, sent with
    ``sendfile(2)`` when ``file`` has a descriptor and the socket is plain TCP/unix
    (else read and written in large pieces). The server closes ``file`` afterwards."""

    file: BinaryIO
    offset: int
    count: int


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


def parse_head(data: bytes, limits: Limits = Limits()) -> Request:
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


class _Sink:
    """Collects a body in memory, moving it to an unnamed temp file past ``limits.spool_bytes``."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.mem = bytearray()
        self.file: IO[bytes] | None = None
        self.size = 0

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limits.max_body_bytes:
            raise BadRequest(413, "request body too large")
        if self.file is None and self.size > self.limits.spool_bytes:
            self.file = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the Request
            self.file.write(self.mem)
            self.mem = bytearray()
        if self.file is not None:
            self.file.write(data)
        else:
            self.mem += data

    def into(self, req: Request) -> None:
        if self.file is not None:
            req.spool = self.file
        else:
            req.body = bytes(self.mem)


async def _read_chunked(reader: asyncio.StreamReader, sink: _Sink) -> None:
    while True:
        line = await reader.readuntil(b"\r\n")
        size_text = line[:-2].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadRequest(400, "malformed chunk size") from None
        if size < 0:
            raise BadRequest(400, "malformed chunk size")
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailer fields, ignored
                pass
            return
        if sink.size + size > sink.limits.max_body_bytes:
            raise BadRequest(413, "request body too large")
        while size:
            part = await reader.readexactly(min(size, 1 << 20))
            sink.add(part)
            size -= len(part)
        if await reader.readexactly(2) != b"\r\n":
            raise BadRequest(400, "malformed chunk terminator")


async def read_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    req: Request, limits: Limits) -> None:
    """Read the body framed by Transfer-Encoding or Content-Length (RFC 9112 §6.3) into
    ``req.body``, or into ``req.spool`` when it is larger than ``limits.spool_bytes``."""
    te = req.headers.tokens("transfer-encoding")
    cl_values = req.headers.get_all("content-length")
    if te:
        if te != {"chunked"}:
            raise BadRequest(501, f"unsupported transfer coding {sorted(te)}")
        if cl_values:
            raise BadRequest(400, "both Content-Length and Transfer-Encoding")
        await _continue(writer, req)
        sink = _Sink(limits)
        await _read_chunked(reader, sink)
        sink.into(req)
        return
    if not cl_values:
        return
    if len(set(cl_values)) != 1 or not cl_values[0].isdigit():
        raise BadRequest(400, "malformed Content-Length")
    length = int(cl_values[0])
    if length > limits.max_body_bytes:
        raise BadRequest(413, "request body too large")
    if length == 0:
        return
    await _continue(writer, req)
    if length <= limits.spool_bytes:
        req.body = await reader.readexactly(length)
        return
    sink = _Sink(limits)
    while length:
        part = await reader.readexactly(min(length, 1 << 20))
        sink.add(part)
        length -= len(part)
    sink.into(req)


_DRAIN_LIMIT = 256 << 10  # unread body bytes drained to keep a connection; more → close


class BodyStream:
    """A request body read on demand, framed by Content-Length or chunked coding.

    ``read(n)`` returns 1..n bytes, or ``b""`` once the body is complete; ``readall``
    the rest at once. ``length`` is the declared Content-Length (None when chunked),
    ``received`` the bytes handed out so far, ``done`` whether the end was reached.
    Framing errors and bodies past ``max_body_bytes`` raise ``BadRequest``; a client
    that hangs up mid-body raises ``asyncio.IncompleteReadError``.
    """

    __slots__ = ("_chunk_left", "_continued", "_left", "_limits", "_reader", "_req",
                 "_writer", "done", "length", "received")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 req: Request, limits: Limits) -> None:
        self._reader, self._writer, self._req, self._limits = reader, writer, req, limits
        self.received = 0
        self._continued = False
        self._chunk_left = 0  # chunked: bytes left in the current chunk
        te = req.headers.tokens("transfer-encoding")
        cl_values = req.headers.get_all("content-length")
        self.length: int | None
        if te:
            if te != {"chunked"}:
                raise BadRequest(501, f"unsupported transfer coding {sorted(te)}")
            if cl_values:
                raise BadRequest(400, "both Content-Length and Transfer-Encoding")
            self.length, self._left = None, -1
        else:
            if cl_values and (len(set(cl_values)) != 1 or not cl_values[0].isdigit()):
                raise BadRequest(400, "malformed Content-Length")
            self.length = int(cl_values[0]) if cl_values else 0
            if self.length > limits.max_body_bytes:
                raise BadRequest(413, "request body too large")
            self._left = self.length
        self.done = self._left == 0

    @property
    def awaiting_continue(self) -> bool:
        """The client asked for ``100 Continue`` and has not been sent it yet."""
        return (not self._continued and self._req.version == "HTTP/1.1"
                and "100-continue" in self._req.headers.tokens("expect"))

    async def read(self, n: int = 1 << 20) -> bytes:
        if self.done or n <= 0:
            return b""
        if not self._continued:
            self._continued = True
            await _continue(self._writer, self._req)
        if self.length is not None:
            data = await self._reader.read(min(n, self._left))
            if not data:
                raise asyncio.IncompleteReadError(b"", self._left)
            self._left -= len(data)
            self.done = self._left == 0
        else:
            if self._chunk_left == 0 and not await self._next_chunk():
                return b""
            data = await self._reader.read(min(n, self._chunk_left))
            if not data:
                raise asyncio.IncompleteReadError(b"", self._chunk_left)
            self._chunk_left -= len(data)
            if self._chunk_left == 0 and await self._reader.readexactly(2) != b"\r\n":
                raise BadRequest(400, "malformed chunk terminator")
        self.received += len(data)
        return data

    async def _next_chunk(self) -> bool:
        line = await self._readline()
        size_text = line[:-2].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadRequest(400, "malformed chunk size") from None
        if size < 0:
            raise BadRequest(400, "malformed chunk size")
        if size == 0:
            while (await self._readline()) != b"\r\n":  # trailer fields, ignored
                pass
            self.done = True
            return False
        if self.received + size > self._limits.max_body_bytes:
            raise BadRequest(413, "request body too large")
        self._chunk_left = size
        return True

    async def _readline(self) -> bytes:
        try:
            return await self._reader.readuntil(b"\r\n")
        except (asyncio.LimitOverrunError, ValueError):
            raise BadRequest(400, "malformed chunked body") from None

    async def readall(self, limit: int | None = None) -> bytes:
        """The rest of the body; ``BadRequest(413)`` once it passes ``limit`` bytes."""
        if self.length is not None and limit is not None and self.length > limit:
            raise BadRequest(413, "request body too large")
        parts: list[bytes] = []
        total = 0
        while data := await self.read():
            total += len(data)
            if limit is not None and total > limit:
                raise BadRequest(413, "request body too large")
            parts.append(data)
        return b"".join(parts)

    async def finish(self) -> bool:
        """After the handler: drain a small unread rest; False when the connection
        cannot carry another request (too much left, a broken body, or a client still
        waiting for 100 Continue)."""
        if self.done:
            return True
        if self.awaiting_continue:
            return False
        if self.length is not None and self._left > _DRAIN_LIMIT:
            return False
        try:
            drained = 0
            while data := await self.read(_DRAIN_LIMIT):
                drained += len(data)
                if drained > _DRAIN_LIMIT:
                    return False
        except (BadRequest, asyncio.IncompleteReadError, ConnectionError):
            return False
        return True


async def _continue(writer: asyncio.StreamWriter, req: Request) -> None:
    if req.version == "HTTP/1.1" and "100-continue" in req.headers.tokens("expect"):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()


class HTTPServer:
    """Serves ``handler`` on every accepted connection; tracks them for shutdown."""

    def __init__(self, handler: Handler, *, limits: Limits = Limits(),
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
                    await self._write_error(writer, e)
                    await _linger(reader, writer)
                    return
            except (asyncio.IncompleteReadError, ConnectionError):
                if req.stream is None:
                    log.exception("unhandled error in %s %s", req.method, req.path)
                    resp = _internal_error()
                else:  # the client went away while sending its body
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
            await writer.drain()
            if not no_body and body.count > 0:
                loop = asyncio.get_running_loop()
                sent = await loop.sendfile(writer.transport, body.file, body.offset,
                                           body.count)
                if sent != body.count:  # the file shrank under us: the framing is broken
                    raise ConnectionResetError(f"short file body ({sent} of {body.count})")
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
