"""Events: Docker's filters, since/until parsing, and the replay + live stream."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

import pytest

from ketch.engine.events import Event, EventBus, EventFilter, parse_time, stream
from ketch.errors import InvalidArgument

S = 1_000_000_000


def ev(type: str = "container", action: str = "start", actor: str = "abc123def456",
       t: int = 0, **attrs: str) -> Event:
    return Event(type, action, actor, attrs, t)


# -- filters ------------------------------------------------------------------------


def passes(filters: dict[str, list[str]], event: Event) -> bool:
    return EventFilter(filters).include(event)


def test_no_filters_pass_everything() -> None:
    assert passes({}, ev()) and passes({}, ev("image", "pull", "busybox:latest"))


def test_type_event_scope_exact() -> None:
    assert passes({"type": ["image", "container"]}, ev())
    assert not passes({"type": ["image"]}, ev())
    assert passes({"event": ["die", "start"]}, ev())
    assert not passes({"event": ["sta"]}, ev())
    assert passes({"scope": ["local"]}, ev())
    assert not passes({"scope": ["swarm"]}, ev())


def test_event_matches_action_prefix_before_colon() -> None:
    health = ev(action="health_status: healthy")
    assert passes({"event": ["health_status"]}, health)
    assert passes({"event": ["health_status: healthy"]}, health)
    assert not passes({"event": ["health_status: unhealthy"]}, health)
    assert passes({"event": ["exec_start"]}, ev(action="exec_start: sh -c true"))


def test_container_by_id_prefix_or_name() -> None:
    c = ev(name="web", image="busybox")
    assert passes({"container": ["abc123def456"]}, c)
    assert passes({"container": ["abc1"]}, c)  # short id
    assert passes({"container": ["web"]}, c)
    assert passes({"container": ["db", "web"]}, c)
    assert not passes({"container": ["db"]}, c)
    # like Docker, the filter applies to every event: image events do not name the container
    assert not passes({"container": ["web"]}, ev("image", "pull", "busybox:latest"))


@pytest.mark.parametrize("key,event", [
    ("volume", ev("volume", "create", "data", driver="local")),
    ("network", ev("network", "connect", "n3tw0rk", name="data", container="abc")),
    ("daemon", ev("daemon", "reload", "d43m0n", name="data")),
    ("plugin", ev("plugin", "enable", "p1", name="data")),
    ("node", ev("node", "update", "n0de", name="data")),
    ("service", ev("service", "create", "s3rv", name="data")),
    ("secret", ev("secret", "create", "s3cr", name="data")),
    ("config", ev("config", "create", "c0nf", name="data")),
])
def test_named_object_filters(key: str, event: Event) -> None:
    assert passes({key: ["data"]}, event)
    assert passes({key: [event.actor_id[:2]]}, event)
    assert not passes({key: ["other"]}, event)


def test_image_filter_on_container_and_image_events() -> None:
    c = ev(image="busybox:latest", name="web")
    assert passes({"image": ["busybox:latest"]}, c)
    assert passes({"image": ["busybox"]}, c)  # tag stripped
    assert not passes({"image": ["alpine"]}, c)
    pulled = ev("image", "pull", "docker.io/library/busybox:1.36", name="docker.io/library/busybox")
    assert passes({"image": ["busybox"]}, pulled)
    assert passes({"image": ["docker.io/library/busybox:1.36"]}, pulled)
    tagged = ev("image", "tag", "sha256:" + "a" * 64, name="me/app:2")
    assert passes({"image": ["me/app"]}, tagged)
    assert passes({"image": ["sha256:" + "a" * 64]}, tagged)
    assert not passes({"image": ["me/other"]}, tagged)


def test_labels_all_must_hold() -> None:
    c = ev(name="web", tier="front", team="a")
    assert passes({"label": ["tier"]}, c)
    assert passes({"label": ["tier=front", "team=a"]}, c)
    assert not passes({"label": ["tier=front", "team=b"]}, c)
    assert not passes({"label": ["missing"]}, c)
    assert passes({"label": ["tier"], "type": ["container"], "container": ["web"]}, c)


def test_unknown_filter_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="invalid filter 'colour'"):
        EventFilter({"colour": ["red"]})


# -- since / until ------------------------------------------------------------------

NOW = 1_700_000_000 * S


@pytest.mark.parametrize("text,expect", [
    ("10m", NOW - 600 * S),
    ("1h30m", NOW - 5400 * S),
    ("1.5s", NOW - 1_500_000_000),
    ("250ms", NOW - 250_000_000),
    ("-1m", NOW + 60 * S),
    ("0", 0),
    ("1700000000", 1_700_000_000 * S),
    ("1700000000.5", 1_700_000_000 * S + 500_000_000),
    ("1700000000.000000001", 1_700_000_000 * S + 1),
    ("2023-11-14T22:13:20Z", 1_700_000_000 * S),
    ("2023-11-14T22:13:20.123456789Z", 1_700_000_000 * S + 123_456_789),
    ("2023-11-14T23:13:20+01:00", 1_700_000_000 * S),
    ("2023-11-14T22:13:20.5-00:30", 1_700_001_800 * S + 500_000_000),
    ("2023-11-14Z", 1_699_920_000 * S),
    ("2023-11-14T22Z", 1_699_999_200 * S),
    ("2023-11-14T22:13Z", 1_699_999_980 * S),
])
def test_parse_time(text: str, expect: int) -> None:
    assert parse_time(text, NOW) == expect


def test_parse_time_without_zone_is_local_time() -> None:
    local = int(datetime(2023, 11, 14, 22, 13, 20).timestamp())
    assert parse_time("2023-11-14T22:13:20", NOW) == local * S
    assert parse_time("2023-11-14T22:13:20.25", NOW) == local * S + 250_000_000
    assert parse_time("2023-11-14", NOW) == int(datetime(2023, 11, 14).timestamp()) * S


def test_parse_time_duration_defaults_to_now() -> None:
    before = time.time_ns()
    got = parse_time("1s")
    assert before - S <= got <= time.time_ns() - S


@pytest.mark.parametrize("text", ["", "yesterday", "10x", "2023-13-01", "2023-11-14T25:00Z",
                                  "-5", "1h-5m"])
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_time(text, NOW)


# -- the stream ---------------------------------------------------------------------


class CountingBus(EventBus):
    """An EventBus that tells how many subscribers it has."""

    def __init__(self, history: int = 1024) -> None:
        super().__init__(history)
        self.subscribed = 0

    def subscribe(self, fn: Callable[[Event], None]) -> Callable[[], None]:
        cancel = super().subscribe(fn)
        self.subscribed += 1

        def counted() -> None:
            self.subscribed -= 1
            cancel()
        return counted


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        await asyncio.wait_for(test(), 10)
    asyncio.run(main())


def publish_later(bus: EventBus, delay: float, *events: tuple[str, str, str]) -> threading.Thread:
    def work() -> None:
        time.sleep(delay)
        for type_, action, actor in events:
            bus.publish(type_, action, actor, {"name": actor})
    t = threading.Thread(target=work)
    t.start()
    return t


def test_replay_since_then_until_in_the_past_ends() -> None:
    bus = CountingBus()
    old = bus.publish("container", "create", "a")
    mid = bus.publish("container", "start", "a")
    bus.publish("image", "pull", "busybox")
    last = bus.publish("container", "die", "a")

    async def body() -> None:
        got = [e async for e in stream(bus, {"type": ["container"]}, mid.time_nano,
                                       last.time_nano)]
        assert got == [mid, last]
        got = [e async for e in stream(bus, None, None, mid.time_nano)]
        assert got[0] is old and got[-1] is mid
        assert bus.subscribed == 0

    run(body)


def test_live_events_from_another_thread_after_replay() -> None:
    bus = CountingBus()
    before = bus.publish("container", "create", "a")

    async def body() -> None:
        events = stream(bus, {"event": ["create", "start"]}, since_ns=before.time_nano)
        t = publish_later(bus, 0.05, ("container", "start", "a"), ("container", "die", "a"),
                          ("container", "create", "b"))
        got = [await anext(events) for _ in range(3)]
        assert [(e.action, e.actor_id) for e in got] == [("create", "a"), ("start", "a"),
                                                         ("create", "b")]
        await events.aclose()
        assert bus.subscribed == 0
        with pytest.raises(StopAsyncIteration):
            await anext(events)
        await asyncio.to_thread(t.join)

    run(body)


def test_subscribed_before_iteration_starts() -> None:
    bus = CountingBus()

    async def body() -> None:
        events = stream(bus)
        bus.publish("container", "start", "early")  # before the first anext
        assert (await anext(events)).actor_id == "early"
        await events.aclose()

    run(body)


def test_until_in_the_future_ends_on_the_wall_clock() -> None:
    bus = CountingBus()

    async def body() -> None:
        start = time.monotonic()
        until = time.time_ns() + 300_000_000
        t = publish_later(bus, 0.05, ("volume", "create", "v1"))
        got = [e.actor_id async for e in stream(bus, None, None, until)]
        elapsed = time.monotonic() - start
        assert got == ["v1"]
        assert 0.25 <= elapsed < 3, elapsed
        assert bus.subscribed == 0
        await asyncio.to_thread(t.join)

    run(body)


def test_no_duplicates_while_publishing_concurrently() -> None:
    bus = EventBus(history=10_000)

    async def body() -> None:
        stop = threading.Event()
        n = [0]

        def spam() -> None:
            while not stop.is_set() and n[0] < 5000:
                bus.publish("container", "start", f"c{n[0]}")
                n[0] += 1

        t = threading.Thread(target=spam)
        t.start()
        await asyncio.sleep(0.01)
        events = stream(bus, None, since_ns=0, queue_size=10_000)
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.to_thread(t.join)
        seen: list[str] = []
        while len(seen) < n[0]:
            seen.append((await asyncio.wait_for(anext(events), 2)).actor_id)
        await events.aclose()
        assert seen == [f"c{i}" for i in range(n[0])]

    run(body)


def test_slow_consumer_loses_events_without_blocking_publishers(
        caplog: pytest.LogCaptureFixture) -> None:
    bus = CountingBus()

    async def body() -> None:
        events = stream(bus, queue_size=5)

        def burst() -> float:
            start = time.monotonic()
            for i in range(200):
                bus.publish("container", "start", f"c{i}")
            return time.monotonic() - start

        took = await asyncio.to_thread(burst)
        assert took < 2
        await asyncio.sleep(0.05)  # let the loop run the queued hand-offs
        got = [(await anext(events)).actor_id for _ in range(5)]
        assert got == [f"c{i}" for i in range(5)]
        bus.publish("container", "start", "after")
        await asyncio.sleep(0.01)
        assert (await anext(events)).actor_id == "after"
        await events.aclose()

    with caplog.at_level(logging.WARNING, logger="ketch.engine.events"):
        run(body)
    messages = [r.getMessage() for r in caplog.records]
    assert any("too slow" in m for m in messages)
    assert any("195 events" in m for m in messages)


def test_forgotten_stream_unsubscribes_when_collected() -> None:
    bus = CountingBus()

    async def body() -> None:
        events = stream(bus)
        assert bus.subscribed == 1
        del events
        gc.collect()
        assert bus.subscribed == 0

    run(body)


def test_bad_filter_raises_at_call() -> None:
    async def body() -> None:
        with pytest.raises(InvalidArgument):
            stream(EventBus(), {"nope": ["x"]})

    run(body)


def test_to_json_shape() -> None:
    e = ev(t=1_700_000_000 * S + 5, name="web", image="busybox")
    j = e.to_json()
    assert j["Type"] == "container" and j["Action"] == "start" and j["status"] == "start"
    assert j["Actor"] == {"ID": "abc123def456", "Attributes": {"name": "web", "image": "busybox"}}
    assert j["time"] == 1_700_000_000 and j["timeNano"] == 1_700_000_000 * S + 5
    assert j["from"] == "busybox" and j["scope"] == "local"
