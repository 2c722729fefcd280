"""The asyncio HTTP/1.1 server: parsing, limits, bodies, keep-alive, streaming, hijack."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from ketch.httpserver import (
    BadRequest,
    HTTPServer,
    Limits,
    Request,
    Response,
    parse_head,
    upgrade_response,
)

# -- parsing ---------------------------------------------------------------------


def test_parse_head_basic() -> None:
    req = parse_head(b"GET /v1.47/containers/json?all=1&filters=%7B%7D HTTP/1.1\r\n"
                     b"Host: docker\r\nX-Thing:  a b \r\n\r\n")
    assert (req.method, req.version) == ("GET", "HTTP/1.1")
    assert req.path == "/v1.47/containers/json"
    assert req.arg("all") == "1" and req.arg("filters") == "{}"
    assert req.headers.get("host") == "docker"
    assert req.headers.get("x-thing") == "a b"
    assert req.keep_alive


@pytest.mark.parametrize("head,status", [
    (b"GET /\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"G(T / HTTP/1.1\r\n\r\n", 400),
    (b"GET foo HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
])
def test_parse_head_rejects(head: bytes, status: int) -> None:
    with pytest.raises(BadRequest) as e:
        parse_head(head)
    assert e.value.status == status


def test_parse_head_too_many_fields() -> None:
    head = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(5)) + b"\r\n"
    with pytest.raises(BadRequest) as e:
        parse_head(head, Limits(max_headers=4))
    assert e.value.status == 431


def test_keep_alive_rules() -> None:
    assert not parse_head(b"GET / HTTP/1.0\r\n\r\n").keep_alive
    assert parse_head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive
    assert not parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive


# -- a server on a private unix socket --------------------------------------------


_CLOSED = asyncio.Event()


async def _app(req: Request) -> Response:
    if req.path == "/echo":
        return Response(200, [("Content-Type", "application/octet-stream")], req.body)
    if req.path == "/forever":
        async def endless() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"tick;"
                    await asyncio.sleep(3600)  # nothing more to say for a long time
            finally:
                _CLOSED.set()
        return Response(200, [("Content-Type", "text/plain")], endless())
    if req.path == "/echo-io":
        spooled = b"spooled" if req.spool is not None else b"memory"
        return Response(200, [("X-Body", spooled.decode())], req.body_io().read())
    if req.path == "/stream":
        async def gen() -> AsyncIterator[bytes]:
            for i in range(3):
                yield b"part%d;" % i
                await asyncio.sleep(0)
        return Response(200, [("Content-Type", "text/plain")], gen())
    if req.path == "/attach":
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data.upper())
                await writer.drain()
            writer.write(b"BYE")
            await writer.drain()
        return upgrade_response(req, echo)
    if req.path == "/boom":
        raise RuntimeError("boom")
    return Response(200, [], b"hello")


def _run(test: Callable[[str], Awaitable[None]], limits: Limits | None = None) -> None:
    async def main() -> None:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "s.sock")
            http = HTTPServer(_app, limits=limits or Limits())
            server = await http.start_unix(path)
            try:
                await asyncio.wait_for(test(path), 10)
            finally:
                server.close()
                await server.wait_closed()
                await http.close_connections()
    asyncio.run(main())


async def _close(w: asyncio.StreamWriter) -> None:
    w.close()
    await w.wait_closed()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    elif status in (101, 204, 304):
        body = b""
    else:
        body = await reader.read()
    return status, headers, body


def test_keep_alive_content_length_and_chunked_bodies() -> None:
    async def t(path: str) -> None:
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        assert (await _read_response(r))[2] == b"hello"
        w.write(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n")
        status, headers, body = await _read_response(r)
        assert (status, body) == (200, b"abcde")
        assert "date" in headers
        w.write(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        status, headers, body = await _read_response(r)
        assert (status, body, headers["connection"]) == (200, b"hello", "close")
        assert await r.read() == b""
        await _close(w)
    _run(t)


def test_expect_100_continue() -> None:
    async def t(path: str) -> None:
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        assert await r.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        w.write(b"ok")
        assert (await _read_response(r))[2] == b"ok"
        await _close(w)
    _run(t)


def test_streaming_response_is_chunked() -> None:
    async def t(path: str) -> None:
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"GET /stream HTTP/1.1\r\n\r\n")
        status, headers, body = await _read_response(r)
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        assert body == b"part0;part1;part2;"
        # HTTP/1.0 client: the body is delimited by the close
        w.write(b"GET /stream HTTP/1.0\r\n\r\n")
        _, headers, body = await _read_response(r)
        assert "transfer-encoding" not in headers and body == b"part0;part1;part2;"
        await _close(w)
    _run(t)


def test_head_has_length_but_no_body() -> None:
    async def t(path: str) -> None:
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"HEAD / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        head = await r.readuntil(b"\r\n\r\n")
        assert b"Content-Length: 5\r\n" in head
        # the next bytes are the second response, not a body
        status, _, body = await _read_response(r)
        assert (status, body) == (200, b"hello")
        await _close(w)
    _run(t)


@pytest.mark.parametrize("request_bytes,status", [
    (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n", 431),
    (b"POST /echo HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", 413),
    (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\n", 413),
    (b"POST /echo HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
])
def test_limits_and_malformed_bodies_close(request_bytes: bytes, status: int) -> None:
    async def t(path: str) -> None:
        r, w = await asyncio.open_unix_connection(path)
        w.write(request_bytes)
        got, headers, body = await _read_response(r)
        assert got == status and headers["connection"] == "close"
        assert body.startswith(b'{"message":')
        assert await r.read() == b""
        await _close(w)
    _run(t, Limits(max_header_bytes=2048, max_body_bytes=4096))


@pytest.mark.parametrize("chunked", [False, True])
def test_large_bodies_are_spooled_to_a_file_and_read_whole(chunked: bool) -> None:
    payload = bytes(range(256)) * 40  # 10 KiB: over the 4 KiB spool threshold below
    async def t(path: str) -> None:
        r, w = await asyncio.open_unix_connection(path)
        for body in (payload, b"small"):
            if chunked:
                framed = b"".join(b"%x\r\n" % len(body[i:i + 3000]) + body[i:i + 3000] + b"\r\n"
                                  for i in range(0, len(body), 3000)) + b"0\r\n\r\n"
                w.write(b"POST /echo-io HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + framed)
            else:
                w.write(b"POST /echo-io HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body)
                        + body)
            status, headers, got = await _read_response(r)
            assert (status, got) == (200, body)
            assert headers["x-body"] == ("spooled" if body is payload else "memory")
        await _close(w)
    _run(t, Limits(spool_bytes=4096))


def test_a_client_hanging_up_ends_an_idle_streamed_body() -> None:
    async def t(path: str) -> None:
        _CLOSED.clear()
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"GET /forever HTTP/1.1\r\n\r\n")
        await r.readuntil(b"tick;")
        await _close(w)
        await asyncio.wait_for(_CLOSED.wait(), 2)  # not after the hour-long sleep
    _run(t)


def test_unhandled_error_is_500_and_connection_survives() -> None:
    async def t(path: str) -> None:
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"GET /boom HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        assert (await _read_response(r))[0] == 500
        assert (await _read_response(r))[2] == b"hello"
        await _close(w)
    _run(t)


def test_hijack_with_upgrade_echoes_raw_bytes() -> None:
    async def t(path: str) -> None:
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"POST /attach HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
        status, headers, _ = await _read_response(r)
        assert status == 101
        assert headers["connection"] == "Upgrade" and headers["upgrade"] == "tcp"
        assert headers["content-type"] == "application/vnd.docker.raw-stream"
        w.write(b"ping\r\n\r\nnot http")
        assert await r.readexactly(16) == b"PING\r\n\r\nNOT HTTP"
        w.write_eof()  # half-close: the handler sees EOF, says goodbye, the server closes
        assert await r.read() == b"BYE"
        await _close(w)
    _run(t)


def test_hijack_without_upgrade_answers_200() -> None:
    async def t(path: str) -> None:
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"POST /attach HTTP/1.1\r\n\r\n")
        head = await r.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"Upgrade" not in head and b"Content-Length" not in head
        w.write(b"x")
        assert await r.readexactly(1) == b"X"
        await _close(w)
    _run(t)
