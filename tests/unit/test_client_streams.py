"""ketch.client: stream decoders, and RemoteEngineClient against a tiny in-process engine.

The engine here is ketch.httpserver.HTTPServer on a private unix socket with a few
handlers, run on an asyncio loop in a thread; the client is the real one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ketch import errors
from ketch.client import STDERR, STDOUT, ConnectionFailed, RemoteEngineClient
from ketch.client.streams import (
    Demuxer,
    JSONStreamDecoder,
    StreamFormatError,
    demux,
    frame,
    frames,
    json_stream,
)
from ketch.client.transport import parse_host
from ketch.httpserver import HTTPServer, Request, Response, upgrade_response

# -- multiplexed stdout/stderr --------------------------------------------------------


def test_frame_header_layout() -> None:
    assert frame(STDERR, b"hey") == b"\x02\x00\x00\x00\x00\x00\x00\x03hey"
    assert frame(STDOUT, b"x" * 70000)[:8] == b"\x01\x00\x00\x00\x00\x01\x11\x70"


def _joined(pieces: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Adjacent pieces of the same stream merged (frames may arrive in pieces)."""
    out: list[tuple[int, bytes]] = []
    for n, data in pieces:
        if out and out[-1][0] == n:
            out[-1] = (n, out[-1][1] + data)
        else:
            out.append((n, data))
    return out


def test_demux_any_split() -> None:
    wire = frame(1, b"hello ") + frame(2, b"oops\n") + frame(1, b"") + frame(1, b"world\n")
    want = [(1, b"hello "), (2, b"oops\n"), (1, b"world\n")]
    assert list(demux([wire])) == want
    assert _joined(list(demux([bytes([b]) for b in wire]))) == want
    for cut in range(len(wire)):
        assert _joined(list(demux([wire[:cut], wire[cut:]]))) == want


def test_demux_hands_out_big_frames_as_they_come() -> None:
    d = Demuxer()
    assert d.feed(frame(1, b"a" * 100)[:58]) == [(1, b"a" * 50)]
    assert d.feed(b"a" * 50) == [(1, b"a" * 50)]
    d.finish()


@pytest.mark.parametrize("wire", [b"\x05\x00\x00\x00\x00\x00\x00\x01x",
                                  b"\x01\x00\x01\x00\x00\x00\x00\x01x"])
def test_demux_rejects_bad_headers(wire: bytes) -> None:
    with pytest.raises(StreamFormatError):
        list(demux([wire]))


def test_demux_rejects_truncation() -> None:
    with pytest.raises(StreamFormatError):
        list(demux([frame(1, b"hello")[:-1]]))
    with pytest.raises(StreamFormatError):
        list(demux([b"\x01\x00\x00"]))


# -- JSON streams -----------------------------------------------------------------------


def test_json_stream_any_split() -> None:
    objs = [{"status": "Loading", "progress": "é ✓"}, {"stream": "Loaded image: a\n"}, [1], 42]
    wire = "".join(json.dumps(o, ensure_ascii=False) + "\r\n" for o in objs).encode()
    assert list(json_stream([wire])) == objs
    for cut in range(len(wire)):
        assert list(json_stream([wire[:cut], wire[cut:]])) == objs, cut
    assert list(json_stream([bytes([b]) for b in wire])) == objs


def test_json_stream_without_newlines_and_trailing_number() -> None:
    d = JSONStreamDecoder()
    assert d.feed(b'{"a":1}{"b":2} 12') == [{"a": 1}, {"b": 2}]
    assert d.feed(b"3") == []
    assert d.finish() == [123]


def test_json_stream_junk_is_an_error() -> None:
    with pytest.raises(StreamFormatError):
        list(json_stream([b'{"a":1}\nnot json\n']))
    with pytest.raises(StreamFormatError):
        list(json_stream([b'{"a":']))


# -- a tiny engine ----------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]


class _CountingServer(HTTPServer):
    accepted = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        await super().serve(reader, writer)


class Engine:
    """HTTPServer on its own loop thread; ``routes[(method, path)]`` (path without /vX.Y)."""

    def __init__(self, sock: Path, api_version: str = "1.47") -> None:
        self.api_version = api_version
        self.requests: list[Request] = []
        self.routes: dict[tuple[str, str], Handler] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.http = _CountingServer(self._dispatch)
        self.server = self.run(self.http.start_unix(str(sock)))
        self.url = f"unix://{sock}"

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _dispatch(self, req: Request) -> Response:
        self.requests.append(req)
        path = req.path
        if path.startswith("/v"):
            path = "/" + path.split("/", 2)[2]
        if path == "/_ping":
            return Response(200, [("Api-Version", self.api_version)], b"OK")
        method = "GET" if req.method == "HEAD" else req.method  # the server drops the body
        handler = self.routes.get((method, path))
        if handler is None:
            return _json({"message": "page not found"}, 404)
        return await handler(req)

    async def _shutdown(self) -> None:
        self.server.close()
        await self.http.close_connections()
        await self.server.wait_closed()

    def close(self) -> None:
        self.run(self._shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def _json(obj: Any, status: int = 200) -> Response:
    return Response(status, [("Content-Type", "application/json")], json.dumps(obj).encode())


def _inspect(tty: bool) -> Handler:
    async def h(req: Request) -> Response:
        return _json({"Id": "abc", "Config": {"Tty": tty}})
    return h


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = Engine(tmp_path / "engine.sock")
    try:
        yield e
    finally:
        e.close()


@pytest.fixture
def client(engine: Engine) -> Iterator[RemoteEngineClient]:
    c = RemoteEngineClient(engine.url)
    try:
        yield c
    finally:
        c.close()


def test_version_negotiated_down_and_capped(tmp_path: Path) -> None:
    for theirs, used in (("1.41", "1.41"), ("1.52", "1.47")):
        e = Engine(tmp_path / f"{theirs}.sock", api_version=theirs)
        try:
            e.routes[("GET", "/info")] = lambda req: asyncio.sleep(0, _json({"Name": "x"}))
            with RemoteEngineClient(e.url) as c:
                assert c.info() == {"Name": "x"}
                assert c.api_version == used
            assert [r.path for r in e.requests] == ["/_ping", f"/v{used}/info"]
        finally:
            e.close()


def test_keep_alive_reuses_one_connection(engine: Engine, client: RemoteEngineClient) -> None:
    engine.routes[("GET", "/version")] = lambda req: asyncio.sleep(0, _json({"Version": "9"}))
    for _ in range(5):
        assert client.version()["Version"] == "9"
    assert engine.http.accepted == 1


def test_reconnects_when_the_engine_dropped_an_idle_connection(
        engine: Engine, client: RemoteEngineClient) -> None:
    engine.routes[("GET", "/version")] = lambda req: asyncio.sleep(0, _json({"Version": "9"}))
    client.version()
    engine.run(engine.http.close_connections())
    assert client.version()["Version"] == "9"
    assert engine.http.accepted == 2


@pytest.mark.parametrize("status,cls", [
    (404, errors.NotFound), (409, errors.Conflict), (400, errors.InvalidArgument),
    (500, errors.Internal), (503, errors.Unavailable), (401, errors.Unauthorized),
])
def test_errors_map_back_to_ketch_classes(engine: Engine, client: RemoteEngineClient,
                                          status: int, cls: type[Exception]) -> None:
    engine.routes[("POST", "/containers/web/start")] = lambda req: asyncio.sleep(
        0, _json({"message": f"it went wrong: {status}"}, status))
    with pytest.raises(cls, match=f"^it went wrong: {status}$"):
        client.container_start("web")
    # the connection stays usable after an error reply
    with pytest.raises(cls):
        client.container_start("web")
    assert engine.http.accepted == 1


def test_304_is_not_modified(engine: Engine, client: RemoteEngineClient) -> None:
    engine.routes[("POST", "/containers/web/stop")] = lambda req: asyncio.sleep(
        0, Response(304))
    with pytest.raises(errors.NotModified):
        client.container_stop("web", timeout=3)
    assert engine.requests[-1].arg("t") == "3"


def test_unreachable_engine(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/none.sock"
    with RemoteEngineClient(url) as c, pytest.raises(ConnectionFailed) as e:
        c.ping()
    assert isinstance(e.value, errors.Unavailable)
    assert str(e.value).startswith(f"Cannot connect to the ketch daemon at {url}.")


def test_chunked_json_stream_arrives_as_it_is_sent(engine: Engine,
                                                    client: RemoteEngineClient) -> None:
    got_first = threading.Event()

    async def events(req: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b'{"Type":"container","Act'
            yield b'ion":"start"}\n'
            await asyncio.get_running_loop().run_in_executor(None, got_first.wait, 5)
            yield b'{"Type":"image","Action":"tag"}\n{"Type":"volume",'
            yield b'"Action":"create"}\n'
        return Response(200, [("Content-Type", "application/json")], body())

    engine.routes[("GET", "/events")] = events
    stream = client.events(filters={"type": ["container", "image"]})
    first = next(stream)
    got_first.set()  # the rest is only sent now: the first event came before the end
    assert first == {"Type": "container", "Action": "start"}
    assert [e["Action"] for e in stream] == ["tag", "create"]
    assert json.loads(engine.requests[-1].arg("filters") or "") == {
        "type": ["container", "image"]}
    client.version  # noqa: B018 - the stream's connection went back to the pool
    assert engine.http.accepted == 1


def test_logs_demultiplexed_or_raw_by_tty(engine: Engine, client: RemoteEngineClient) -> None:
    async def logs(req: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            wire = frame(1, b"out 1\n") + frame(2, b"err 1\n") + frame(1, b"out 2\n")
            for i in range(0, len(wire), 5):  # frames cut across chunks
                yield wire[i:i + 5]
        return Response(200, [], body())

    engine.routes[("GET", "/containers/abc/json")] = _inspect(False)
    engine.routes[("GET", "/containers/abc/logs")] = logs
    pieces = _joined(list(client.container_logs("abc", tail="2", timestamps=True)))
    assert pieces == [(1, b"out 1\n"), (2, b"err 1\n"), (1, b"out 2\n")]
    req = engine.requests[-1]
    assert (req.arg("tail"), req.arg("timestamps"), req.arg("stdout")) == ("2", "1", "1")

    async def tty_logs(req: Request) -> Response:
        return Response(200, [], b"\x01\x00raw tty bytes\r\n")

    engine.routes[("GET", "/containers/abc/json")] = _inspect(True)
    engine.routes[("GET", "/containers/abc/logs")] = tty_logs
    assert b"".join(d for _, d in client.container_logs("abc")) == b"\x01\x00raw tty bytes\r\n"


def test_chunked_upload_and_progress_errors(engine: Engine, client: RemoteEngineClient) -> None:
    async def load(req: Request) -> Response:
        data = req.body_io().read()
        if data.startswith(b"bad"):
            return _json({"errorDetail": {"message": "not a tarball"},
                          "error": "not a tarball"})
        return _json({"stream": f"Loaded {len(data)} bytes, chunked="
                                f"{req.headers.get('transfer-encoding') == 'chunked'}\n"})

    engine.routes[("POST", "/images/load")] = load
    parts = (b"x" * 100_000 for _ in range(30))
    assert list(client.image_load(parts)) == [
        {"stream": "Loaded 3000000 bytes, chunked=True\n"}]
    assert engine.requests[-1].headers.get("content-type") == "application/x-tar"
    assert list(client.image_load(b"abc")) == [{"stream": "Loaded 3 bytes, chunked=False\n"}]
    with pytest.raises(errors.Internal, match="not a tarball"):
        list(client.image_load(b"bad tar"))


async def _echo_upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """stdin → STDOUT frames, upper-cased; at stdin EOF one STDERR frame, then close."""
    while data := await reader.read(4096):
        writer.write(frame(1, data.upper()))
        await writer.drain()
    writer.write(frame(2, b"bye\n"))
    await writer.drain()


def test_attach_hijacks_the_connection(engine: Engine, client: RemoteEngineClient) -> None:
    async def attach(req: Request) -> Response:
        return upgrade_response(req, _echo_upper)

    engine.routes[("GET", "/containers/abc/json")] = _inspect(False)
    engine.routes[("POST", "/containers/abc/attach")] = attach
    stream = client.container_attach("abc", stdin=True, detach_keys="ctrl-x,y")
    try:
        req = engine.requests[-1]
        assert req.headers.get("upgrade") == "tcp"
        assert "upgrade" in req.headers.tokens("connection")
        assert (req.arg("stdin"), req.arg("stream"), req.arg("detachKeys")) == \
               ("1", "1", "ctrl-x,y")
        assert stream.multiplexed
        stream.write(b"hello ")
        stream.write(b"world\n")
        stream.close_write()  # half-close: the engine sees EOF and still answers
        out = _joined(list(frames(stream)))
    finally:
        stream.close()
    assert out == [(1, b"HELLO WORLD\n"), (2, b"bye\n")]
    stream.close()  # idempotent


def test_exec_with_tty_is_a_raw_stream(engine: Engine, client: RemoteEngineClient) -> None:
    async def create(req: Request) -> Response:
        assert json.loads(req.body)["Cmd"] == ["sh"]
        return _json({"Id": "e1"}, 201)

    async def start(req: Request) -> Response:
        assert json.loads(req.body) == {"Detach": False, "Tty": True, "ConsoleSize": [24, 80]}

        async def tty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"\x01\x00\x00\x00 not a frame header\r\n")
            await writer.drain()
        return upgrade_response(req, tty)

    engine.routes[("POST", "/containers/abc/exec")] = create
    engine.routes[("POST", "/exec/e1/start")] = start
    exec_id = client.exec_create("abc", ["sh"], stdin=True, tty=True)
    stream = client.exec_start(exec_id, tty=True, console_size=(24, 80))
    assert stream is not None
    try:
        assert not stream.multiplexed
        data = b"".join(d for _, d in frames(stream))
    finally:
        stream.close()
    assert data == b"\x01\x00\x00\x00 not a frame header\r\n"


def test_wait_is_registered_before_it_returns(engine: Engine,
                                              client: RemoteEngineClient) -> None:
    exited = asyncio.Event()

    async def wait(req: Request) -> Response:
        await exited.wait()
        return _json({"StatusCode": 3, "Error": None})

    async def kill(req: Request) -> Response:
        engine.loop.call_soon(exited.set)
        return Response(204)

    engine.routes[("POST", "/containers/abc/wait")] = wait
    engine.routes[("POST", "/containers/abc/kill")] = kill
    waiter = client.container_wait("abc", condition="next-exit")
    try:
        with pytest.raises(TimeoutError):
            waiter.result(timeout=0.1)
        client.container_kill("abc", signal="TERM")
        assert waiter.result(timeout=5) == {"StatusCode": 3, "Error": None}
        assert waiter.result() == {"StatusCode": 3, "Error": None}
    finally:
        waiter.close()
    wait_req = next(r for r in engine.requests if r.path.endswith("/wait"))
    assert wait_req.arg("condition") == "next-exit"


def test_archive_stat_header_and_missing_path(engine: Engine,
                                              client: RemoteEngineClient) -> None:
    stat = {"name": "hostname", "size": 4, "mode": 420, "mtime": "2024-01-01T00:00:00Z",
            "linkTarget": ""}

    async def archive(req: Request) -> Response:
        if req.arg("path") == "/nope":
            return _json({"message": "Could not find the file /nope in container abc"}, 404)
        header = base64.b64encode(json.dumps(stat).encode()).decode()
        return Response(200, [("X-Docker-Container-Path-Stat", header),
                              ("Content-Type", "application/x-tar")], b"TAR")

    engine.routes[("GET", "/containers/abc/archive")] = archive
    assert client.container_archive_stat("abc", "/etc/hostname") == stat
    got, chunks = client.container_archive_get("abc", "/etc/hostname")
    assert got == stat and b"".join(chunks) == b"TAR"
    with pytest.raises(errors.NotFound, match=r"^Could not find the file /nope in container abc$"):
        client.container_archive_stat("abc", "/nope")
    with pytest.raises(errors.NotFound, match=r"^Could not find the file /nope in container abc$"):
        client.container_archive_get("abc", "/nope")


def test_hosts() -> None:
    unix = parse_host("unix:///run/ketch.sock")
    assert (unix.family, unix.address) == (socket.AF_UNIX, "/run/ketch.sock")
    assert parse_host("/tmp/k.sock").address == "/tmp/k.sock"
    tcp = parse_host("tcp://10.0.0.1")
    assert (tcp.family, tcp.address, tcp.ssl_context) == (socket.AF_INET, ("10.0.0.1", 2375),
                                                          None)
    tls = parse_host("tcp://[::1]:4000", ssl_context=ssl.create_default_context())
    assert (tls.family, tls.address, tls.host_header) == (socket.AF_INET6, ("::1", 4000),
                                                          "[::1]:4000")
    assert parse_host("https://engine.example").address == ("engine.example", 2376)
    for bad in ("ftp://x", "unix://", "tcp://:99"):
        with pytest.raises(errors.InvalidArgument):
            parse_host(bad)
