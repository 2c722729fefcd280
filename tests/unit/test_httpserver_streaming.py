"""Streamed request bodies and sendfile response bodies of ``ketch.httpserver``."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from ketch.httpserver import FileBody, HTTPServer, Limits, Request, Response
from tests.unit.httpserver_client import Connect, serve

FILE_DATA = os.urandom(3 << 20) + b"tail"


def _make_app(tmp: Path) -> Callable[[Request], Awaitable[Response]]:
    blob = tmp / "blob"
    blob.write_bytes(FILE_DATA)

    async def app(req: Request) -> Response:
        if req.path == "/hash":  # streamed: hash piece by piece
            assert req.stream is not None and req.body == b""
            h = hashlib.sha256()
            pieces = 0
            while data := await req.stream.read(1 << 16):
                h.update(data)
                pieces += 1
            return Response(200, [("X-Pieces", str(pieces)),
                                  ("X-Received", str(req.stream.received))],
                            h.hexdigest().encode())
        if req.path == "/small":
            assert req.stream is not None
            return Response(200, [], await req.stream.readall(limit=10))
        if req.path == "/ignore":  # streamed route whose handler never reads
            return Response(403, [], b"no")
        if req.path == "/buffered":
            assert req.stream is None
            return Response(200, [], req.body)
        if req.path == "/file":
            off = int(req.arg("offset") or 0)
            count = int(req.arg("count") or len(FILE_DATA) - off)
            return Response(200, [("Content-Type", "application/octet-stream")],
                            FileBody(open(blob, "rb"), off, count))
        return Response(404, [], b"")

    return app


def _run(tmp: Path, test: Callable[[Connect], Awaitable[None]],
         limits: Limits | None = None) -> None:
    serve(HTTPServer(_make_app(tmp), limits=limits or Limits(),
                     stream_body=lambda r: r.path != "/buffered"), test, timeout=20)


def _open_files() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # the listing's own descriptor
            pass
    return out


def _req(method: str, path: str, body: bytes = b"", extra: str = "") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"{extra}\r\n").encode() + body


def _chunked(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\nX-T: 1\r\n\r\n"


def test_content_length_body_streams_and_keeps_alive(tmp_path: Path) -> None:
    payload = os.urandom(5 << 20)

    async def t(connect: Connect) -> None:
        c = await connect()
        await c.send(_req("PUT", "/hash", payload))
        status, headers, body = await c.response()
        assert status == 200
        assert body.decode() == hashlib.sha256(payload).hexdigest()
        assert int(headers["x-pieces"]) >= 5 << 4  # read in 64 KiB pieces, not buffered
        assert headers["x-received"] == str(len(payload))
        assert "connection" not in headers
        await c.send(_req("PUT", "/hash", b"again"))  # same connection
        status, _, body = await c.response()
        assert body.decode() == hashlib.sha256(b"again").hexdigest()

    _run(tmp_path, t)


def test_chunked_body_streams_and_keeps_alive(tmp_path: Path) -> None:
    pieces = [os.urandom(n) for n in (1, 70_000, 3, 200_000)]

    async def t(connect: Connect) -> None:
        c = await connect()
        await c.send(b"PATCH /hash HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + _chunked(pieces))
        status, headers, body = await c.response()
        assert status == 200
        assert body.decode() == hashlib.sha256(b"".join(pieces)).hexdigest()
        assert headers["x-received"] == str(sum(map(len, pieces)))
        await c.send(_req("GET", "/hash"))
        status, _, body = await c.response()
        assert body.decode() == hashlib.sha256(b"").hexdigest()

    _run(tmp_path, t)


def test_unread_small_body_is_drained(tmp_path: Path) -> None:
    async def t(connect: Connect) -> None:
        c = await connect()
        await c.send(_req("PUT", "/ignore", b"x" * 1000))
        status, headers, _ = await c.response()
        assert status == 403 and "connection" not in headers
        await c.send(_req("GET", "/buffered"))
        assert (await c.response())[0] == 200

    _run(tmp_path, t)


def test_unread_large_body_closes_connection(tmp_path: Path) -> None:
    async def t(connect: Connect) -> None:
        c = await connect()
        await c.send(_req("PUT", "/ignore", b"x" * (2 << 20)))
        status, headers, _ = await c.response()
        assert status == 403
        assert headers["connection"] == "close"

    _run(tmp_path, t)


def test_expect_continue_sent_on_first_read_only(tmp_path: Path) -> None:
    async def t(connect: Connect) -> None:
        c = await connect()
        await c.send(_req("PUT", "/hash", extra="Content-Length: 3\r\nExpect: 100-continue\r\n")
                     .replace(b"Content-Length: 0\r\n", b""))
        assert await c.r.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        await c.send(b"abc")
        status, _, body = await c.response()
        assert body.decode() == hashlib.sha256(b"abc").hexdigest()
        # a handler that refuses without reading: no 100, final answer, then close
        d = await connect()
        await d.send(b"PUT /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        status, headers, _ = await d.response()
        assert status == 403 and headers["connection"] == "close"

    _run(tmp_path, t)


def test_readall_limit_gives_413(tmp_path: Path) -> None:
    async def t(connect: Connect) -> None:
        c = await connect()
        await c.send(_req("PUT", "/small", b"0123456789"))
        assert (await c.response())[2] == b"0123456789"
        await c.send(_req("PUT", "/small", b"0123456789A"))
        status, headers, _ = await c.response()
        assert status == 413 and headers["connection"] == "close"
        d = await connect()
        await d.send(b"PUT /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + _chunked([b"012345", b"6789AB"]))
        assert (await d.response())[0] == 413

    _run(tmp_path, t)


def test_body_over_server_limit_refused_before_handler(tmp_path: Path) -> None:
    async def t(connect: Connect) -> None:
        c = await connect()
        await c.send(_req("PUT", "/hash", b"x" * 101))
        assert (await c.response())[0] == 413
        d = await connect()
        await d.send(b"PUT /hash HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + _chunked([b"y" * 60, b"z" * 60]))
        assert (await d.response())[0] == 413

    _run(tmp_path, t, Limits(max_body_bytes=100))


@pytest.mark.parametrize("bad", [b"zz\r\nab\r\n0\r\n\r\n", b"2\r\nabXX0\r\n\r\n"])
def test_malformed_chunks_give_400(tmp_path: Path, bad: bytes) -> None:
    async def t(connect: Connect) -> None:
        c = await connect()
        await c.send(b"PUT /hash HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + bad)
        status, headers, _ = await c.response()
        assert status == 400 and headers["connection"] == "close"

    _run(tmp_path, t)


def test_client_hangup_mid_body_closes_quietly(tmp_path: Path) -> None:
    async def t(connect: Connect) -> None:
        c = await connect()
        await c.send(_req("PUT", "/hash", b"x" * 10).replace(b"Length: 10", b"Length: 99"))
        c.w.write_eof()
        assert await c.r.read() == b""  # no response, no 500 for a gone client
        d = await connect()  # the server is fine
        await d.send(_req("GET", "/buffered"))
        assert (await d.response())[0] == 200

    _run(tmp_path, t)


def test_buffered_routes_unchanged(tmp_path: Path) -> None:
    async def t(connect: Connect) -> None:
        c = await connect()
        await c.send(_req("POST", "/buffered", b"hello"))
        assert (await c.response())[2] == b"hello"

    _run(tmp_path, t)


def test_file_body_whole_range_and_head(tmp_path: Path) -> None:
    async def t(connect: Connect) -> None:
        c = await connect()
        await c.send(_req("GET", "/file"))
        status, headers, body = await c.response()
        assert status == 200 and body == FILE_DATA
        assert headers["content-length"] == str(len(FILE_DATA))
        await c.send(_req("GET", "/file?offset=1000&count=5000"))
        status, headers, body = await c.response()
        assert body == FILE_DATA[1000:6000]
        await c.send(_req("HEAD", "/file"))
        status, headers = await c.head_only()
        assert headers["content-length"] == str(len(FILE_DATA))
        await c.send(_req("GET", "/file?offset=2&count=0"))  # empty, and keep-alive holds
        status, headers, body = await c.response()
        assert (status, body, headers["content-length"]) == (200, b"", "0")
        # nothing left open on the blob once the responses are done
        assert str(tmp_path / "blob") not in _open_files()

    _run(tmp_path, t)


def test_tls_handshake_on_plain_listener_is_refused_at_once(tmp_path: Path) -> None:
    import ssl

    async def t(connect: Connect) -> None:
        c = await connect()
        port = c.w.get_extra_info("peername")[1]
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with pytest.raises((ssl.SSLError, ConnectionError)):  # fails fast, no timeout
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), 2)
        await c.send(_req("GET", "/buffered"))  # plain HTTP still fine
        assert (await c.response())[0] == 200

    _run(tmp_path, t)
