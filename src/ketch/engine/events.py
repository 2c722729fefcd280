"""The engine's event bus: what ``docker events`` shows.

Every service publishes through one :class:`EventBus`; the API streams from it.
Contract of ``publish``: ``type`` is Docker's event type (``container``,
``image``, ``volume``, ``network``, ``daemon``), ``action`` Docker's action
(``create``, ``start``, ``die``, ``tag``, ``destroy`` ...; health results are
``health_status: healthy``), ``actor_id`` the object's ID (or name for volumes
and images where Docker uses the name), ``attributes`` string labels Docker shows
(``name``, ``image``, ``exitCode`` ...). Publishing never blocks and never fails
the caller.

Reading side, as ``GET /events`` uses it::

    EventFilter(filters)            which events a client wants (Docker's keys)
    parse_time(since/until, now)    Docker's time forms -> unix nanoseconds
    stream(bus, filter, since, until)
        ├─ replay: history events in [since, until] (only when either is given)
        └─ follow: live events until the wall clock passes ``until`` (or forever)

Live events reach the stream from the publisher's thread through
``loop.call_soon_threadsafe`` into a bounded queue; a consumer that falls behind
loses events (logged) instead of slowing publishers down.
"""

from __future__ import annotations

import asyncio
import calendar
import collections
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from typing import Any, Final, Protocol

from ketch.errors import InvalidArgument

__all__ = [
    "FILTER_KEYS",
    "Event",
    "EventBus",
    "EventFilter",
    "EventSource",
    "EventStream",
    "parse_time",
    "stream",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    type: str
    action: str
    actor_id: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    time_nano: int = 0
    scope: str = "local"

    def to_json(self) -> dict[str, Any]:
        """Docker's ``EventMessage`` (with the legacy ``status``/``id``/``from`` members)."""
        out: dict[str, Any] = {
            "Type": self.type, "Action": self.action,
            "Actor": {"ID": self.actor_id, "Attributes": dict(self.attributes)},
            "scope": self.scope, "time": self.time_nano // 1_000_000_000,
            "timeNano": self.time_nano,
        }
        if self.type == "container":
            out["status"] = self.action
            out["id"] = self.actor_id
            if "image" in self.attributes:
                out["from"] = self.attributes["image"]
        return out


class EventBus:
    """Publish/subscribe with a bounded history for ``since``."""

    def __init__(self, history: int = 1024) -> None:
        self._history: collections.deque[Event] = collections.deque(maxlen=history)
        self._subscribers: list[Callable[[Event], None]] = []
        self._mu = threading.Lock()

    def publish(self, type: str, action: str, actor_id: str,
                attributes: Mapping[str, str] | None = None) -> Event:
        ev = Event(type, action, actor_id, dict(attributes or {}), time.time_ns())
        with self._mu:
            self._history.append(ev)
            subs = list(self._subscribers)
        for fn in subs:
            try:
                fn(ev)
            except Exception:  # a broken subscriber must not fail the publisher
                pass
        return ev

    def subscribe(self, fn: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``fn`` for each new event (from the publisher's thread); returns unsubscribe."""
        with self._mu:
            self._subscribers.append(fn)

        def cancel() -> None:
            with self._mu:
                if fn in self._subscribers:
                    self._subscribers.remove(fn)
        return cancel

    def history(self) -> list[Event]:
        with self._mu:
            return list(self._history)


class EventSource(Protocol):
    """What :func:`stream` reads: the subscribe/history half of :class:`EventBus`."""

    def subscribe(self, fn: Callable[[Event], None]) -> Callable[[], None]: ...

    def history(self) -> list[Event]: ...


# ---- filters ----------------------------------------------------------------------------

# Keys whose values name the event's actor: matched against Actor.ID and the
# ``name`` attribute, a value also matching as a prefix (short IDs), like Docker.
_BY_NAME: Final = ("container", "daemon", "plugin", "volume", "network", "node",
                   "service", "secret", "config")
FILTER_KEYS: Final = frozenset((*_BY_NAME, "event", "image", "label", "type", "scope"))


def _familiar_name(image: str) -> str:
    """``docker.io/library/busybox:1`` -> ``busybox``; what is not a reference stays."""
    from ketch.image.reference import Reference, normalize

    try:
        ref = normalize(image)
    except InvalidArgument:
        return image
    return Reference(ref.domain, ref.path).familiar()


class EventFilter:
    """Docker's ``filters`` for events; :meth:`include` says whether an event passes.

    Different keys must all match; several values of one key are alternatives,
    except ``label``, where every value must hold. Keys and matching:

    - ``type``, ``scope``: exact; ``event``: the action, where ``health_status``
      also matches ``health_status: healthy`` (the part before ``:``);
    - ``container``, ``daemon``, ``plugin``, ``volume``, ``network``, ``node``,
      ``service``, ``secret``, ``config``: Actor.ID or the ``name`` attribute,
      exactly or as a prefix. As in Docker these apply to every event, so
      ``container=web`` also leaves out image events;
    - ``image``: Actor.ID or the image name (the ``image`` attribute, or ``name``
      for image events), as given or without tag/digest;
    - ``label``: ``key`` or ``key=value`` against Actor.Attributes.

    An unknown key is ``InvalidArgument("invalid filter 'key'")``.
    """

    def __init__(self, filters: Mapping[str, Iterable[str]] | None = None) -> None:
        self.filters: dict[str, frozenset[str]] = {}
        for key, values in (filters or {}).items():
            if key not in FILTER_KEYS:
                raise InvalidArgument(f"invalid filter '{key}'")
            self.filters[key] = frozenset(values)

    def _exact(self, key: str, value: str) -> bool:
        want = self.filters.get(key)
        return want is None or value in want

    def _fuzzy(self, key: str, *sources: str) -> bool:
        want = self.filters.get(key)
        if want is None:
            return True
        return any(s == w or s.startswith(w) for s in sources for w in want)

    def _action(self, ev: Event) -> bool:
        want = self.filters.get("event")
        if want is None:
            return True
        return ev.action in want or ev.action.partition(":")[0] in want

    def _image(self, ev: Event) -> bool:
        want = self.filters.get("image")
        if want is None:
            return True
        name = ev.attributes.get("name" if ev.type == "image" else "image", "")
        candidates = {ev.actor_id, name, _familiar_name(ev.actor_id)}
        if name:
            candidates.add(_familiar_name(name))
        return not want.isdisjoint(candidates)

    def _labels(self, attributes: Mapping[str, str]) -> bool:
        for item in self.filters.get("label", ()):
            key, sep, value = item.partition("=")
            if key not in attributes or (sep and attributes[key] != value):
                return False
        return True

    def include(self, ev: Event) -> bool:
        """Whether ``ev`` passes every filter."""
        if not self.filters:
            return True
        name = ev.attributes.get("name", "")
        return (self._action(ev) and self._exact("type", ev.type)
                and self._exact("scope", ev.scope)
                and all(self._fuzzy(k, ev.actor_id, name) for k in _BY_NAME if k in self.filters)
                and self._image(ev) and self._labels(ev.attributes))


# ---- since / until ----------------------------------------------------------------------

_NS_PER_UNIT: Final = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
                       "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_DURATION = re.compile(r"([+-]?)((?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+)")
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIX = re.compile(r"(\d+)(?:\.(\d{0,9}))?")
_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt](\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?)?"
    r"(?P<zone>[Zz]|[+-]\d{2}:\d{2})?")


def _duration_ns(text: str) -> int | None:
    """A Go duration (``10m``, ``1h30m``, ``-1.5s``) in ns, or None if ``text`` is not one."""
    m = _DURATION.fullmatch(text)
    if m is None:
        return None
    total = sum(Fraction(num) * _NS_PER_UNIT[unit]
                for num, unit in _DURATION_PART.findall(m.group(2)))
    ns = int(total)
    return -ns if m.group(1) == "-" else ns


def _datetime_ns(m: re.Match[str]) -> int:
    year, month, day, hour, minute, second = (int(g or 0) for g in m.groups()[:6])
    frac = m.group(7) or ""
    zone = m.group("zone")
    try:
        naive = datetime(year, month, day, hour, minute, second)
    except ValueError as e:
        raise InvalidArgument(f'parsing time "{m.string}": {e}') from None
    if zone is None:  # no zone: the daemon's local time, as Docker reads it
        seconds = int(naive.timestamp())
    else:
        seconds = calendar.timegm(naive.timetuple())
        if zone not in ("Z", "z"):
            sign = -1 if zone[0] == "+" else 1
            seconds += sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * 1_000_000_000 + int(frac.ljust(9, "0"))


def parse_time(text: str, now: int | None = None) -> int:
    """A ``since``/``until`` value as unix nanoseconds, accepting what Docker accepts.

    - a Go duration (``10m``, ``1h30m``, ``90s``): that long before ``now``
      (unix ns, default the current time);
    - unix seconds with an optional fraction (``1700000000``, ``1700000000.5``);
    - RFC 3339 with or without fraction (``2024-01-02T15:04:05.123Z``), and the
      shorter forms ``2024-01-02``, ``2024-01-02T15``, ``2024-01-02T15:04``, each
      with an optional ``Z``/``±hh:mm`` zone; without a zone the local time zone.

    ``"0"`` is the epoch, not a zero duration. Anything else is InvalidArgument.
    """
    text = text.strip()
    if text != "0":
        d = _duration_ns(text)
        if d is not None:
            return (time.time_ns() if now is None else now) - d
    m = _UNIX.fullmatch(text)
    if m is not None:
        return int(m.group(1)) * 1_000_000_000 + int((m.group(2) or "").ljust(9, "0"))
    m = _DATETIME.fullmatch(text)
    if m is not None:
        return _datetime_ns(m)
    raise InvalidArgument(f'failed to parse value as time or duration: "{text}"')


# ---- the stream -------------------------------------------------------------------------

class EventStream:
    """The async iterator :func:`stream` returns; subscribed from the moment it is made.

    Unsubscribes when exhausted, on :meth:`aclose`, or when garbage-collected
    unclosed (a response that was never written), whichever comes first.
    """

    def __init__(self, bus: EventSource, flt: EventFilter, since_ns: int | None,
                 until_ns: int | None, queue_size: int) -> None:
        self._since, self._until = since_ns, until_ns
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue(queue_size)
        self._queue = queue
        drops = [0, 0]  # total dropped, dropped in the current burst

        def enqueue(ev: Event) -> None:  # runs in the loop's thread
            try:
                queue.put_nowait(ev)
            except asyncio.QueueFull:
                drops[0] += 1
                drops[1] += 1
                if drops[1] == 1:
                    log.warning("events: consumer too slow, dropping events")
                return
            if drops[1]:
                log.warning("events: consumer caught up after dropping %d events "
                            "(%d in all)", drops[1], drops[0])
                drops[1] = 0

        def on_event(ev: Event) -> None:  # runs in the publisher's thread
            if flt.include(ev):
                loop.call_soon_threadsafe(enqueue, ev)

        # Subscribe first, then read history: an event published in between is
        # in both, and is recognised by identity (``past`` keeps the objects alive).
        self._finalizer = weakref.finalize(self, bus.subscribe(on_event))
        past = bus.history() if since_ns is not None or until_ns is not None else []
        self._replayed = {id(ev) for ev in past}
        self._past = past
        self._backlog = collections.deque(
            ev for ev in past if _within(ev, since_ns, until_ns) and flt.include(ev))
        self._done = False

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self._backlog:
            return self._backlog.popleft()
        while not self._done:
            if self._until is None:
                ev = await self._queue.get()
            else:
                left = (self._until - time.time_ns()) / 1e9
                if left <= 0:
                    break
                try:
                    ev = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            if id(ev) in self._replayed or not _within(ev, self._since, None):
                continue
            if self._until is not None and ev.time_nano > self._until:
                break
            return ev
        await self.aclose()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop: unsubscribe and end the iteration. Idempotent."""
        self._done = True
        self._backlog.clear()
        self._finalizer()


def stream(bus: EventSource,
           filters: EventFilter | Mapping[str, Iterable[str]] | None = None,
           since_ns: int | None = None, until_ns: int | None = None, *,
           queue_size: int = 1024) -> EventStream:
    """Events for one ``docker events`` client, in order (``async for ev in stream(...)``).

    With ``since`` or ``until`` given, first the history events in
    [``since``, ``until``] (an absent bound is open); then live events, until the
    wall clock passes ``until`` (at once if it already has) or, without
    ``until``, until the consumer closes the iterator. Only events passing
    ``filters`` are yielded; none is yielded twice.

    Must be called in the event loop that consumes it. The subscription is made
    by this call, before history is read, so nothing published afterwards is
    lost however late iteration starts. At most ``queue_size`` live events wait
    for the consumer; beyond that new ones are dropped (and logged), so
    publishers never block. Filter keys are checked here (InvalidArgument).
    """
    flt = filters if isinstance(filters, EventFilter) else EventFilter(filters)
    return EventStream(bus, flt, since_ns, until_ns, queue_size)


def _within(ev: Event, since_ns: int | None, until_ns: int | None) -> bool:
    return ((since_ns is None or ev.time_nano >= since_ns)
            and (until_ns is None or ev.time_nano <= until_ns))
