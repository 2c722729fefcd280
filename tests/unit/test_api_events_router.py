"""GET /events through the real HTTP server on a temp unix socket, backed by an EventBus."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from ketch.api.router import Router
from ketch.api.routers.events import EventsRouter
from ketch.engine.events import Event, EventBus
from ketch.httpserver import HTTPServer


class CountingBus(EventBus):
    """An EventBus that tells how many subscribers it has."""

    def __init__(self) -> None:
        super().__init__()
        self.subscribed = 0

    def subscribe(self, fn: Callable[[Event], None]) -> Callable[[], None]:
        cancel = super().subscribe(fn)
        self.subscribed += 1

        def counted() -> None:
            self.subscribed -= 1
            cancel()
        return counted


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def serve(bus: EventBus, test: Callable[[str], Awaitable[None]]) -> None:
    async def main() -> None:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "ketchd.sock")
            http = HTTPServer(Router(EventsRouter(bus).routes()))
            server = await http.start_unix(path)
            try:
                await asyncio.wait_for(test(path), 10)
            finally:
                server.close()
                await server.wait_closed()
                await http.close_connections()
    asyncio.run(main())


async def get(path: str, target: str) -> tuple[Conn, int, dict[str, str]]:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: docker\r\n\r\n".encode())
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
    return (reader, writer), int(head[0].split()[1]), headers


async def read_chunk(reader: asyncio.StreamReader) -> bytes:
    """One chunk's data; b"" for the last chunk."""
    size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
    data = await reader.readexactly(size) if size else b""
    assert await reader.readexactly(2) == b"\r\n"
    return data


async def read_event(reader: asyncio.StreamReader) -> dict[str, Any]:
    chunk = await asyncio.wait_for(read_chunk(reader), 5)
    assert chunk.endswith(b"\n") and chunk.count(b"\n") == 1  # one object per line, per chunk
    out: dict[str, Any] = json.loads(chunk)
    return out


async def read_all_events(reader: asyncio.StreamReader) -> list[dict[str, Any]]:
    events = []
    while chunk := await asyncio.wait_for(read_chunk(reader), 5):
        events.append(json.loads(chunk))
    return events


async def close(conn: Conn, bus: CountingBus | None = None) -> None:
    """Hang up; with ``bus``, wait until the server has dropped the subscription.

    The server notices a client that went away when it next writes to it, so
    events are published until it has (else the stream would idle until the
    server shuts down).
    """
    conn[1].close()
    await conn[1].wait_closed()
    deadline = time.monotonic() + 5
    while bus is not None and bus.subscribed and time.monotonic() < deadline:
        bus.publish("container", "start", "probe", {"tier": "db"})  # passes every filter here
        await asyncio.sleep(0.02)
    assert bus is None or bus.subscribed == 0


def filters(**values: list[str]) -> str:
    return quote(json.dumps({k: {v: True for v in vs} for k, vs in values.items()}))


def test_streams_live_events_one_line_each() -> None:
    bus = CountingBus()

    async def test(path: str) -> None:
        conn, status, headers = await get(path, "/v1.47/events")
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert headers["transfer-encoding"] == "chunked"
        bus.publish("container", "start", "c0ffee", {"name": "web", "image": "busybox"})
        got = await read_event(conn[0])
        assert got["Type"] == "container" and got["Action"] == "start"
        assert got["status"] == "start" and got["id"] == "c0ffee" and got["from"] == "busybox"
        assert got["Actor"] == {"ID": "c0ffee", "Attributes": {"name": "web", "image": "busybox"}}
        assert abs(got["time"] - time.time()) < 5 and got["timeNano"] // 10**9 == got["time"]
        await asyncio.to_thread(bus.publish, "volume", "create", "data", {"driver": "local"})
        got = await read_event(conn[0])
        assert (got["Type"], got["Actor"]["ID"]) == ("volume", "data") and "status" not in got
        await close(conn, bus)

    serve(bus, test)


def test_filters_select_events() -> None:
    bus = CountingBus()

    async def test(path: str) -> None:
        target = "/events?filters=" + filters(type=["container"], event=["die", "start"])
        conn, status, _ = await get(path, target)
        assert status == 200
        bus.publish("image", "pull", "busybox:latest")
        bus.publish("container", "create", "a1")
        bus.publish("container", "die", "a1", {"exitCode": "0"})
        got = await read_event(conn[0])
        assert (got["Action"], got["Actor"]["ID"]) == ("die", "a1")
        await close(conn, bus)
        # docker-py's list shape and label filters
        legacy = quote(json.dumps({"label": ["tier=db"]}))
        conn, status, _ = await get(path, f"/events?filters={legacy}")
        assert status == 200
        bus.publish("container", "start", "web1", {"tier": "front"})
        bus.publish("container", "start", "db1", {"tier": "db"})
        assert (await read_event(conn[0]))["Actor"]["ID"] == "db1"
        await close(conn, bus)

    serve(bus, test)


def test_since_until_replays_history_and_ends() -> None:
    bus = CountingBus()
    bus.publish("container", "create", "old")
    first = bus.publish("container", "create", "x")
    bus.publish("image", "tag", "busybox:1")
    last = bus.publish("container", "start", "x")

    async def test(path: str) -> None:
        since = f"{first.time_nano // 10**9}.{first.time_nano % 10**9:09d}"
        until = f"{last.time_nano // 10**9}.{last.time_nano % 10**9:09d}"
        conn, status, _ = await get(path, f"/v1.47/events?since={since}&until={until}")
        assert status == 200
        got = await read_all_events(conn[0])  # until is past: the stream ends after replay
        assert [(e["Action"], e["Actor"]["ID"]) for e in got] == [
            ("create", "x"), ("tag", "busybox:1"), ("start", "x")]
        # the connection stays usable (keep-alive), and filters apply to the replay too
        conn[1].write(f"GET /events?until={until}&filters={filters(type=['image'])} HTTP/1.1"
                      "\r\nHost: docker\r\n\r\n".encode())
        await conn[0].readuntil(b"\r\n\r\n")
        got = await read_all_events(conn[0])
        assert [e["Actor"]["ID"] for e in got] == ["busybox:1"]
        await close(conn)
        assert bus.subscribed == 0

    serve(bus, test)


def test_since_duration_and_until_in_the_future() -> None:
    bus = CountingBus()
    bus.publish("network", "create", "n1", {"name": "front"})

    async def test(path: str) -> None:
        start = time.monotonic()
        until = f"{time.time() + 0.5:.9f}"
        conn, status, _ = await get(path, f"/events?since=1h&until={until}")
        assert status == 200
        assert (await read_event(conn[0]))["Actor"]["ID"] == "n1"  # replayed
        bus.publish("network", "destroy", "n1", {"name": "front"})
        assert (await read_event(conn[0]))["Action"] == "destroy"  # live
        assert await asyncio.wait_for(read_chunk(conn[0]), 5) == b""  # ends at until
        assert 0.4 < time.monotonic() - start < 5
        await close(conn)

    serve(bus, test)


def test_bad_requests() -> None:
    bus = CountingBus()

    async def test(path: str) -> None:
        for target, message in [
            ("/events?filters=" + filters(colour=["red"]), "invalid filter 'colour'"),
            ("/events?since=yesterday", 'failed to parse value as time or duration: "yesterday"'),
            ("/events?since=200&until=100",
             "`since` time (200) cannot be after `until` time (100)"),
            ("/events?filters=%7Bnot-json", "invalid filters"),
        ]:
            conn, status, headers = await get(path, target)
            body = await conn[0].readexactly(int(headers["content-length"]))
            assert status == 400, target
            assert message in json.loads(body)["message"], body
            await close(conn)
        assert bus.subscribed == 0

    serve(bus, test)


def test_client_going_away_unsubscribes() -> None:
    bus = CountingBus()

    async def test(path: str) -> None:
        conn, status, _ = await get(path, "/events")
        assert status == 200 and bus.subscribed == 1
        await close(conn, bus)  # asserts the subscription is gone

    serve(bus, test)
