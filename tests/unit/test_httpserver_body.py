"""Request bodies read straight into handler buffers: ``ketch.httpstream.BodyStream``
(``readinto``, pipelining, hang-ups, TLS, the StreamReader fallback) and the chunked
decoder of ``ketch.httpbody``, over a real server on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

import ketch.httpstream
from ketch.httpbody import BadRequest, ChunkDecoder
from ketch.httpserver import HTTPServer, Request, Response
from tests.unit.httpserver_client import Connect, serve

# -- the decoder ---------------------------------------------------------------------------


def _chunked(pieces: list[bytes], ext: bytes = b"", trailer: bytes = b"") -> bytes:
    return (b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in pieces)
            + b"0\r\n" + trailer + b"\r\n")


def _decode(wire: bytes, cuts: list[int]) -> tuple[bytes, int]:
    """Feed ``wire`` in reads ending at ``cuts``, as a socket would; (payload, consumed)."""
    dec = ChunkDecoder(1 << 30, 1 << 16)
    out = bytearray()
    consumed = 0
    for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        buf = bytearray(wire[a:b])
        end, pos = dec.feed(buf, 0, len(buf))
        out += buf[:end]
        consumed = a + pos
        if dec.done:
            break
    assert dec.done
    return bytes(out), consumed


def test_decoder_every_split_point() -> None:
    pieces = [b"a", b"bc" * 20, b"\r\n0\r\n", b"z" * 300]
    wire = _chunked(pieces, ext=b";name=val", trailer=b"X-Sum: 1\r\n") + b"NEXT"
    body = b"".join(pieces)
    for cut in range(1, len(wire)):
        assert _decode(wire, [cut]) == (body, len(wire) - 4), cut
    for step in (1, 2, 3, 7):  # every read tiny: framing lines cut everywhere
        assert _decode(wire, list(range(step, len(wire), step))) == (body, len(wire) - 4)


@pytest.mark.parametrize("wire,status", [
    (b"zz\r\nab\r\n0\r\n\r\n", 400),          # not hex
    (b"0x2\r\nab\r\n0\r\n\r\n", 400),         # int() would take these; HTTP does not
    (b"+2\r\nab\r\n0\r\n\r\n", 400),
    (b"1_0\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n", 400),
    (b"2\nab\r\n0\r\n\r\n", 400),             # bare LF ends the size line
    (b"2\r\nabXX0\r\n\r\n", 400),             # no CRLF after the payload
    (b"1" * 9000 + b"\r\n", 400),            # a size line without end
    (b"20\r\n" + b"a" * 32 + b"\r\n0\r\n\r\n", 413),  # past max_body (16)
])
def test_decoder_refuses_bad_framing(wire: bytes, status: int) -> None:
    dec = ChunkDecoder(16, 1 << 16)
    buf = bytearray(wire)
    with pytest.raises(BadRequest) as e:
        dec.feed(buf, 0, len(buf))
    assert e.value.status == status


# -- over a server ---------------------------------------------------------------------------

PIECE = 1 << 20


async def _app(req: Request) -> Response:
    """/sum: readinto PIECE-sized buffers; reports pieces, bytes and a sha256.
    /partial: records what arrived until the client hung up.
    /one: reads one PIECE and returns (the rest is the server's business)."""
    assert req.stream is not None
    buf = bytearray(PIECE)
    if req.path == "/sum":
        h = hashlib.sha256()
        sizes = []
        while n := await req.stream.readinto(buf):
            h.update(memoryview(buf)[:n])
            sizes.append(n)
        assert all(n == PIECE for n in sizes[:-1])  # full pieces until the end
        return Response(200, [("X-Pieces", str(len(sizes)))], h.hexdigest().encode())
    if req.path == "/partial":
        got = 0
        try:
            while n := await req.stream.readinto(buf):
                got += n
        except asyncio.IncompleteReadError:
            _RECORD.append(("hangup", got))
            raise
        return Response(200, [], b"")
    if req.path == "/one":
        await req.stream.readinto(buf)
        return Response(200, [], b"one")
    if req.path == "/slow":  # small reads with pauses, as a worker thread makes them
        h, small = hashlib.sha256(), bytearray(64 << 10)
        while n := await req.stream.readinto(small):
            h.update(memoryview(small)[:n])
            await asyncio.sleep(0.002)
        return Response(200, [], h.hexdigest().encode())
    return Response(404, [], b"")


_RECORD: list[tuple[str, int]] = []


def _run(test: Callable[[Connect], Awaitable[None]],
         tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None) -> None:
    serve(HTTPServer(_app, stream_body=lambda r: True), test, tls=tls)


def _put(path: str, body: bytes) -> bytes:
    return b"PUT %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        path.encode(), len(body), body)


def _patch_chunked(path: str, pieces: list[bytes]) -> bytes:
    return (b"PATCH %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            % path.encode()) + _chunked(pieces)


@pytest.fixture(params=["direct", "via-reader"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Both ways a BodyStream reads: straight from the socket, and the fallback."""
    if request.param == "via-reader":
        monkeypatch.setattr(ketch.httpstream, "_direct_transport", lambda r, w: None)
    yield request.param


def test_readinto_fills_whole_pieces_and_keeps_alive(mode: str) -> None:
    payload = os.urandom(5 * PIECE + 7)

    async def t(connect: Connect) -> None:
        c = await connect()
        await c.send(_put("/sum", payload), pieces=40)
        status, headers, body = await c.response()
        assert (status, body.decode()) == (200, hashlib.sha256(payload).hexdigest())
        assert headers["x-pieces"] == "6" and "connection" not in headers
        chunks = [os.urandom(n) for n in (1, 32 << 10, 3, PIECE + 5, 32 << 10, 17)]
        await c.send(_patch_chunked("/sum", chunks), pieces=97)  # same connection
        status, _, body = await c.response()
        assert body.decode() == hashlib.sha256(b"".join(chunks)).hexdigest()

    _run(t)


def test_a_reader_that_pauses_between_reads_loses_nothing(mode: str) -> None:
    """The socket keeps delivering while the handler is away; none of it may end up in
    the connection's own reader (where it would be lost to the body)."""
    payload = os.urandom(6 * PIECE + 11)

    async def t(connect: Connect) -> None:
        c = await connect()
        await c.send(_put("/slow", payload))
        status, _, body = await c.response()
        assert (status, body.decode()) == (200, hashlib.sha256(payload).hexdigest())
        chunks = [os.urandom(n) for n in (70_000, 3, PIECE, 65_536, 9)]
        await c.send(_patch_chunked("/slow", chunks))  # same connection, chunked
        status, _, body = await c.response()
        assert body.decode() == hashlib.sha256(b"".join(chunks)).hexdigest()

    _run(t)


def test_pipelined_request_after_a_body_is_served(mode: str) -> None:
    """Bytes after the body, read with it, belong to the next request."""
    a, b, c_ = os.urandom(300_000), os.urandom(2 * PIECE), b"third"

    async def t(connect: Connect) -> None:
        c = await connect()
        await c.send(_put("/sum", a) + _patch_chunked("/sum", [b[:PIECE], b[PIECE:]])
                     + _put("/sum", c_))
        for want in (a, b, c_):
            status, _, body = await c.response()
            assert (status, body.decode()) == (200, hashlib.sha256(want).hexdigest())

    _run(t)


def test_hangup_mid_body_hands_out_what_arrived_then_fails(mode: str) -> None:
    _RECORD.clear()

    async def t(connect: Connect) -> None:
        c = await connect()
        head = b"PUT /partial HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (3 * PIECE)
        await c.send(head + b"x" * (PIECE + 1000))
        await asyncio.sleep(0.2)
        c.w.write_eof()
        assert await c.r.read() == b""  # no response for a client that left
        d = await connect()  # the server is fine
        await d.send(_put("/sum", b"ok"))
        assert (await d.response())[0] == 200

    _run(t)
    assert _RECORD == [("hangup", PIECE + 1000)]


def test_unread_rest_small_is_drained_large_closes(mode: str) -> None:
    async def t(connect: Connect) -> None:
        c = await connect()
        await c.send(_put("/one", os.urandom(PIECE + 1000)))  # 1000 bytes left: drained
        status, headers, _ = await c.response()
        assert status == 200 and "connection" not in headers
        await c.send(_patch_chunked("/sum", [b"next"]))
        assert (await c.response())[2].decode() == hashlib.sha256(b"next").hexdigest()
        d = await connect()
        await d.send(_put("/one", os.urandom(4 * PIECE)))  # 3 MiB left: close
        status, headers, _ = await d.response()
        assert status == 200 and headers["connection"] == "close"

    _run(t)


def test_bad_chunk_after_good_ones_is_400(mode: str) -> None:
    async def t(connect: Connect) -> None:
        c = await connect()
        good = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in [b"a" * 70_000] * 20)
        await c.send(b"PATCH /sum HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + good + b"zz\r\n")
        status, headers, _ = await c.response()
        assert status == 400 and headers["connection"] == "close"

    _run(t)


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext,
                                                                 ssl.SSLContext]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed (needed to make a test certificate)")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-keyout", str(d / "k.pem"), "-out", str(d / "c.pem")],
                   check=True, capture_output=True)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(d / "c.pem", d / "k.pem")
    client = ssl.create_default_context(cafile=str(d / "c.pem"))
    client.check_hostname = False
    return server, client


def test_direct_reads_over_tls(tls_pair: tuple[ssl.SSLContext, ssl.SSLContext],
                               tmp_path: Path) -> None:
    payload = os.urandom(3 * PIECE + 11)
    chunks = [os.urandom(n) for n in (5, 40_000, PIECE)]

    async def t(connect: Connect) -> None:
        c = await connect()
        await c.send(_put("/sum", payload) + _patch_chunked("/sum", chunks), pieces=33)
        assert (await c.response())[2].decode() == hashlib.sha256(payload).hexdigest()
        assert (await c.response())[2].decode() == \
            hashlib.sha256(b"".join(chunks)).hexdigest()

    _run(t, tls_pair)
