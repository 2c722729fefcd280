"""``GET /events``: the engine's events as a stream of JSON objects, one per line.

HTTP only: ``since``/``until``/``filters`` are decoded here and handed to
``ketch.engine.events.stream``, which owns replay, filtering and the end of the
stream. Each event is one chunk, written as it happens. The subscription is made
before the response head is written, so an event caused by a client right after
it saw the head is never missed.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

from ketch.api.filters import parse_filters
from ketch.api.router import Route
from ketch.engine.events import FILTER_KEYS, EventSource, EventStream, parse_time, stream
from ketch.errors import InvalidArgument
from ketch.httpserver import Request, Response

__all__ = ["EventsRouter"]


async def _json_lines(events: EventStream) -> AsyncIterator[bytes]:
    try:
        async for ev in events:
            yield json.dumps(ev.to_json(), separators=(",", ":")).encode() + b"\n"
    finally:
        await events.aclose()


class EventsRouter:
    """Routes of the events area; the backend is the engine's event bus."""

    def __init__(self, backend: EventSource) -> None:
        self.backend = backend

    def routes(self) -> list[Route]:
        return [Route("GET", "/events", self.events)]

    async def events(self, request: Request) -> Response:
        now = time.time_ns()
        since_text, until_text = request.arg("since") or "", request.arg("until") or ""
        since = parse_time(since_text, now) if since_text else None
        until = parse_time(until_text, now) if until_text else None
        if since is not None and until is not None and until < since:
            raise InvalidArgument(
                f"`since` time ({since_text}) cannot be after `until` time ({until_text})")
        filters = parse_filters(request.arg("filters"), FILTER_KEYS)
        events = stream(self.backend, filters, since, until)
        return Response(200, [("Content-Type", "application/json")], _json_lines(events))
