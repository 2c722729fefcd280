"""Streamed request bodies: read from the socket straight into the handler's buffers.

When a route streams its body (``HTTPServer(stream_body=…)``), the handler gets a
``BodyStream`` instead of bytes, so a 100 MB registry blob is never held whole and is
copied once (by the kernel) on its way in::

    StreamReader buffer ──(bytes that arrived with the head)──┐
    socket ──recv_into──▶ handler's buffer ──chunked framing removed in place──▶ handler
            (_Receiver: a BufferedProtocol swapped in for the connection's
             StreamReaderProtocol while the body is read; reading is paused
             between reads, so the socket is never read ahead of the handler)

When the body ends the connection's own protocol is put back and any bytes past the
body (a pipelined next request) are fed to its reader, so keep-alive works as for
buffered bodies. A transport that cannot swap protocols gets the same decoding fed
from the ``StreamReader``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ketch.httpbody import BadRequest, ChunkDecoder, Limits, send_continue

if TYPE_CHECKING:
    from ketch.httpserver import Request

__all__ = ["BodyStream"]


_DRAIN_LIMIT = 256 << 10  # unread body bytes drained to keep a connection; more → close
_SPILL = 64 << 10


def _direct_transport(reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> asyncio.Transport | None:
    """The transport when the socket can be read straight into the caller's buffers:
    it is a full ``Transport`` (it swaps protocols and pauses reading; every asyncio
    stream transport is), its protocol is a plain ``Protocol``, and the reader's buffer
    can be taken over (CPython's ``StreamReader`` keeps it in ``_buffer``)."""
    transport = writer.transport
    if (isinstance(transport, asyncio.Transport)
            and isinstance(transport.get_protocol(), asyncio.Protocol)
            and isinstance(getattr(reader, "_buffer", None), bytearray)):
        return transport
    return None


class _Receiver(asyncio.BufferedProtocol):
    """The connection's protocol while a ``BodyStream`` reads directly.

    Socket reads go into the stream's current target (``BodyStream._window``); events
    of the writing side and the end of the connection go on to the protocol it stands
    in for (``inner``, the connection's ``StreamReaderProtocol``). An EOF is kept for
    ``inner`` until the stream is released, so bytes read past the body reach the reader
    before it.
    """

    def __init__(self, stream: BodyStream, inner: asyncio.Protocol) -> None:
        self.stream = stream
        self.inner = inner
        self.eof = False
        self._spill: bytearray | None = None  # a read nobody asked for (see get_buffer)

    def get_buffer(self, sizehint: int) -> memoryview:
        window = self.stream._window()
        if window is not None:
            return window
        # Reading is paused whenever no target is set, so this is not expected; keep
        # the bytes for the next read rather than refuse them (which would be fatal).
        self._spill = bytearray(_SPILL)
        return memoryview(self._spill)

    def buffer_updated(self, nbytes: int) -> None:
        spill, self._spill = self._spill, None
        if spill is not None:
            self.stream._stash(memoryview(spill)[:nbytes])
        else:
            self.stream._arrived(nbytes)

    def eof_received(self) -> bool | None:
        self.eof = True
        self.stream._fail(None)
        return True  # keep the transport open; ``inner`` hears of the EOF on release

    def connection_lost(self, exc: Exception | None) -> None:
        self.stream._fail(exc, lost=True)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class BodyStream:
    """A request body read on demand, framed by Content-Length or chunked coding.

    ``readinto(buf)`` fills the bytearray ``buf`` with body bytes and returns how many:
    ``len(buf)`` unless the body ends first, 0 once it has ended. ``read(n)`` returns
    1..n bytes, or ``b""`` once the body is complete; ``readall`` the rest at once.
    ``length`` is the declared Content-Length (None when chunked), ``received`` the
    bytes handed out so far, ``done`` whether the end was reached.

    Framing errors and bodies past ``max_body_bytes`` raise ``BadRequest``; a client
    that hangs up mid-body raises ``asyncio.IncompleteReadError`` (or the connection's
    error). Bytes that arrived before such an error are handed out first; the error
    comes with the next call. ``100 Continue`` is sent on the first read.

    Lifecycle: the server makes one per streamed request; the handler reads all, some
    or none of it; then the server calls ``finish()`` (drain a small rest so the
    connection can be kept) or, on paths that close the connection, ``release()`` (give
    the connection back to its reader; idempotent, also done by ``finish``).
    """

    __slots__ = ("_continued", "_dechunk", "_direct", "_error", "_filled", "_left",
                 "_leftover", "_limits", "_pending", "_reader", "_receiver", "_req",
                 "_taken", "_target", "_transport", "_waiter", "_want", "_writer", "done",
                 "length", "received")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 req: Request, limits: Limits) -> None:
        self._reader, self._writer, self._req, self._limits = reader, writer, req, limits
        self.received = 0
        self._continued = False
        te = req.headers.tokens("transfer-encoding")
        cl_values = req.headers.get_all("content-length")
        self.length: int | None
        self._dechunk: ChunkDecoder | None = None
        if te:
            if te != {"chunked"}:
                raise BadRequest(501, f"unsupported transfer coding {sorted(te)}")
            if cl_values:
                raise BadRequest(400, "both Content-Length and Transfer-Encoding")
            self.length, self._left = None, -1
            self._dechunk = ChunkDecoder(limits.max_body_bytes, limits.max_header_bytes)
        else:
            if cl_values and (len(set(cl_values)) != 1 or not cl_values[0].isdigit()):
                raise BadRequest(400, "malformed Content-Length")
            self.length = int(cl_values[0]) if cl_values else 0
            if self.length > limits.max_body_bytes:
                raise BadRequest(413, "request body too large")
            self._left = self.length  # body bytes not yet decoded into a target
        self.done = self._left == 0
        self._direct: bool | None = None  # decided on the first read
        self._transport: asyncio.Transport | None = None  # set when reading directly
        self._taken = False  # the reader's buffered bytes were moved to ``_pending``
        self._pending = bytearray()  # raw bytes received, not yet decoded
        self._leftover = b""  # raw bytes after the body: the next request's
        self._error: BaseException | None = None
        self._receiver: _Receiver | None = None
        self._target: bytearray | None = None
        self._filled = 0
        self._want = 0
        self._waiter: asyncio.Future[None] | None = None

    @property
    def awaiting_continue(self) -> bool:
        """The client asked for ``100 Continue`` and has not been sent it yet."""
        return (not self._continued and self._req.version == "HTTP/1.1"
                and "100-continue" in self._req.headers.tokens("expect"))

    # -- reading ---------------------------------------------------------------------

    async def readinto(self, buf: bytearray) -> int:
        """Fill ``buf`` with body bytes; the count (< ``len(buf)`` only at the end)."""
        return await self._read(buf, len(buf))

    async def read(self, n: int = 1 << 20) -> bytes:
        """1..n bytes of body, or ``b""`` at its end."""
        if n <= 0 or (self.done and self._error is None):
            return b""
        buf = bytearray(min(n, self._left) if self._left > 0 else min(n, 1 << 20))
        got = await self._read(buf, 1)
        return bytes(buf) if got == len(buf) else bytes(buf[:got])

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

    async def _read(self, target: bytearray, want: int) -> int:
        """Decode body bytes into ``target`` until it holds ``want`` (or the end)."""
        if self._error is not None:
            raise self._error
        if self.done or not target:
            return 0
        if not self._continued:
            self._continued = True
            await send_continue(self._writer, self._req)
        if self._direct is None:
            self._transport = _direct_transport(self._reader, self._writer)
            self._direct = self._transport is not None
        if not self._direct:
            return await self._read_via_reader(target, want)
        if not self._taken:
            await self._take_reader_buffer()
        self._target, self._filled, self._want = target, 0, want
        try:
            self._decode_pending()
            if not self.done and self._filled < want and self._error is None:
                await self._receive()
            got = self._filled
        finally:
            self._target = None
        self.received += got
        if self.done:
            self.release()
        if not got and self._error is not None:
            raise self._error
        return got

    async def _take_reader_buffer(self) -> None:
        """Move the bytes the reader holds (read along with the head) to ``_pending``."""
        self._taken = True
        exc = self._reader.exception()
        if exc is not None:
            self._error = exc
            return
        buffered = getattr(self._reader, "_buffer", b"")
        if buffered:
            self._pending += await self._reader.readexactly(len(buffered))
        if self._reader.at_eof():
            self._fail(None)
            return
        # From here on the socket is ours: taking the buffer may have resumed reading
        # for the reader, which would otherwise go on filling its buffer behind our
        # back while reads are served from ``_pending``.
        self._install()

    def _install(self) -> None:
        """Put the ``_Receiver`` in the connection's protocol's place, reading paused."""
        transport = self._transport
        assert transport is not None
        if transport.is_closing():
            return
        if self._receiver is None:
            inner = transport.get_protocol()
            assert isinstance(inner, asyncio.Protocol)
            self._receiver = _Receiver(self, inner)
            transport.set_protocol(self._receiver)
        transport.pause_reading()

    async def _receive(self) -> None:
        """Read the socket until the target holds ``_want`` bytes, the body ends or an
        error is recorded; reading is paused again before this returns."""
        transport = self._transport
        assert transport is not None
        if transport.is_closing():
            self._error = ConnectionResetError("connection closed during the body")
            return
        if self._receiver is None:
            self._install()
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        transport.resume_reading()
        try:
            await waiter
        finally:
            self._waiter = None
            if not transport.is_closing():
                transport.pause_reading()

    def _window(self) -> memoryview | None:
        """Where the next socket read goes: the free part of the target, no further
        than the body's end when its length is known; None when no read is expected."""
        target = self._target
        if target is None or self._waiter is None or self._error is not None:
            return None
        free = len(target) - self._filled
        if self._left > 0:
            free = min(free, self._left)
        if free <= 0:
            return None
        return memoryview(target)[self._filled:self._filled + free]

    def _arrived(self, n: int) -> None:
        """``n`` raw bytes were read into ``_window()``."""
        try:
            self._consume(n)
        except BadRequest as e:
            self._error = e
        if self.done or self._filled >= self._want or self._error is not None:
            self._wake()

    def _stash(self, raw: memoryview) -> None:
        self._pending += raw
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    def _fail(self, exc: BaseException | None, *, lost: bool = False) -> None:
        """The peer ended the stream (EOF, or the connection is lost) before the body."""
        if self.done:
            return
        if self._error is None:
            if exc is not None:
                self._error = exc
            elif lost:
                self._error = ConnectionResetError("connection lost during the body")
            else:
                self._error = asyncio.IncompleteReadError(b"", self.length)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _consume(self, n: int) -> None:
        """Account for ``n`` raw bytes placed at ``target[_filled:]``."""
        target = self._target
        assert target is not None
        if self._dechunk is None:
            self._filled += n
            self._left -= n
            self.done = self._left == 0
            return
        start = self._filled
        out, pos = self._dechunk.feed(target, start, start + n)
        self._filled = out
        if self._dechunk.done:
            self.done = True
            if pos < start + n:
                self._leftover += target[pos:start + n]

    def _decode_pending(self) -> None:
        """Decode raw bytes received earlier (``_pending``) into the target."""
        target = self._target
        assert target is not None
        while self._pending and not self.done and self._filled < self._want:
            free = len(target) - self._filled
            if self._left > 0:
                free = min(free, self._left)
            k = min(free, len(self._pending))
            with memoryview(target) as dst, memoryview(self._pending) as src:
                dst[self._filled:self._filled + k] = src[:k]
            del self._pending[:k]
            try:
                self._consume(k)
            except BadRequest as e:
                self._error = e
                return
        if self.done and self._pending:
            self._leftover += self._pending
            self._pending = bytearray()

    async def _read_via_reader(self, target: bytearray, want: int) -> int:
        """The same decoding fed from the ``StreamReader``, never reading past the body
        (for transports that cannot swap protocols)."""
        filled = 0
        try:
            while filled < want and not self.done:
                dechunk = self._dechunk
                if dechunk is None:
                    data = await self._reader.read(min(len(target) - filled, self._left))
                elif dechunk.in_data:
                    data = await self._reader.read(min(len(target) - filled, dechunk.left))
                else:
                    try:
                        line = bytearray(await self._reader.readuntil(b"\n"))
                    except (asyncio.LimitOverrunError, ValueError):
                        raise BadRequest(400, "malformed chunked body") from None
                    dechunk.feed(line, 0, len(line))
                    self.done = dechunk.done
                    continue
                if not data:
                    raise asyncio.IncompleteReadError(b"", self.length)
                target[filled:filled + len(data)] = data
                filled += len(data)
                if dechunk is None:
                    self._left -= len(data)
                    self.done = self._left == 0
                else:
                    dechunk.skip(len(data))
        except (BadRequest, asyncio.IncompleteReadError, ConnectionError) as e:
            if not filled:
                raise
            self._error = e
        self.received += filled
        return filled

    # -- after the handler -------------------------------------------------------------

    async def finish(self) -> bool:
        """After the handler: drain a small unread rest; False when the connection
        cannot carry another request (too much left, a broken body, or a client still
        waiting for 100 Continue). Releases the connection either way."""
        try:
            if self._error is not None or self.awaiting_continue:
                return False
            if self.done:
                return True
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
        finally:
            self.release()

    def release(self) -> None:
        """Give the connection back to its ``StreamReader`` (idempotent): the original
        protocol is restored, raw bytes read past the body (or, for an abandoned body,
        not yet decoded) are fed to the reader, a kept EOF is passed on, and reading
        resumes."""
        receiver, self._receiver = self._receiver, None
        transport = self._transport
        if receiver is None or transport is None:
            return
        if transport.get_protocol() is receiver:
            transport.set_protocol(receiver.inner)
        if transport.is_closing():
            return
        rest = self._leftover + self._pending
        self._leftover, self._pending = b"", bytearray()
        if rest:
            self._reader.feed_data(bytes(rest))
        if receiver.eof:
            if not receiver.inner.eof_received():
                transport.close()
            return
        transport.resume_reading()
