"""Webhook notifications: an event per manifest or blob push, blob mount and delete,
POSTed in the background, retried with backoff, never holding up the request that
caused it.

The body is Distribution's envelope (media type
``application/vnd.docker.distribution.events.v1+json``), one event per POST::

    {"events": [{"id": "…", "timestamp": "2024-…Z",
                 "action": "push" | "mount" | "delete",
                 "target": {"mediaType", "digest", "size", "length", "repository",
                            "fromRepository", "url", "tag"},
                 "request": {"id", "addr", "host", "method", "useragent"},
                 "actor": {"name"}, "source": {"addr", "instanceID"}}]}

What each event's target holds, as Distribution sends it:

=================  ======================================================================
manifest push      mediaType, digest, size, length, repository, url, tag (one per tag)
blob push          mediaType ``application/octet-stream``, digest, size, length,
                   repository, url (an upload completed, monolithic or not)
blob mount         as a blob push, action ``mount``, plus ``fromRepository`` when the
                   request named one
delete             repository and digest (manifest or blob) or tag (a tag)
=================  ======================================================================

Lifecycle: ``Notifier(endpoints…)`` starts one sender thread per endpoint, each with
its own bounded queue (a slow endpoint delays only itself). ``emit`` puts the event on
every queue without blocking; a full queue drops the event and counts it. A sender POSTs
with ``timeout``; a failure or a non-2xx answer is retried after ``backoff``, doubling,
up to ``attempts`` tries, then the event is dropped (logged, counted). ``close()``
stops the senders, giving queued events a short time to go out.
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from ketch.errors import InvalidArgument

__all__ = ["BLOB_MEDIA_TYPE", "EVENTS_MEDIA_TYPE", "Endpoint", "Notifier", "make_event"]

log = logging.getLogger(__name__)

EVENTS_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
#: the media type of a blob event's target (registries store bytes, not their types)
BLOB_MEDIA_TYPE = "application/octet-stream"


def make_event(action: str, *, repository: str, digest: str = "", media_type: str = "",
               size: int = 0, tag: str | None = None, actor: str | None = None,
               request: Mapping[str, str] | None = None, url: str = "",
               source: Mapping[str, str] | None = None,
               from_repository: str = "") -> dict[str, Any]:
    """One event in Distribution's shape (see the module docstring); empty fields are
    left out, as Distribution's ``omitempty`` does."""
    target: dict[str, Any] = {"repository": repository}
    if from_repository:
        target["fromRepository"] = from_repository
    if media_type:
        target["mediaType"] = media_type
    if digest:
        target["digest"] = digest
    if size:
        target["size"] = target["length"] = size
    if url:
        target["url"] = url
    if tag:
        target["tag"] = tag
    stamp = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return {"id": secrets.token_hex(16), "timestamp": stamp, "action": action,
            "target": target, "request": dict(request or {}),
            "actor": {"name": actor} if actor else {}, "source": dict(source or {})}


@dataclass
class Endpoint:
    """One webhook receiver and its sender thread's state."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 5.0
    attempts: int = 5
    backoff: float = 1.0
    queue_size: int = 1000
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    pending: queue.Queue[dict[str, Any] | None] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgument(f"notification endpoint {self.url!r}: want an http(s) URL")
        self.pending = queue.Queue(self.queue_size)


class Notifier:
    """Sends events to ``endpoints``; see the module docstring for the lifecycle."""

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = list(endpoints)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(ep,), daemon=True,
                                          name=f"registry-notify-{n}")
                         for n, ep in enumerate(self.endpoints)]
        for t in self._threads:
            t.start()

    def emit(self, event: dict[str, Any]) -> None:
        """Queue ``event`` for every endpoint; never blocks."""
        for ep in self.endpoints:
            try:
                ep.pending.put_nowait(event)
            except queue.Full:
                ep.dropped += 1
                log.warning("notification queue for %s full; event %s dropped",
                            ep.url, event.get("id"))

    def close(self, timeout: float = 2.0) -> None:
        """Stop the senders; queued events get until ``timeout`` to go out."""
        deadline = time.monotonic() + timeout
        for ep in self.endpoints:
            try:
                ep.pending.put_nowait(None)
            except queue.Full:
                pass
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        for t in self._threads:
            t.join(0.5)

    def _run(self, ep: Endpoint) -> None:
        while not self._stop.is_set():
            event = ep.pending.get()
            if event is None:
                return
            body = json.dumps({"events": [event]}, separators=(",", ":")).encode()
            delay = ep.backoff
            for attempt in range(1, ep.attempts + 1):
                error = self._post(ep, body)
                if error is None:
                    ep.sent += 1
                    break
                if attempt == ep.attempts:
                    ep.failed += 1
                    log.warning("notification %s to %s failed %d times (%s); dropped",
                                event.get("id"), ep.url, attempt, error)
                    break
                log.info("notification to %s failed (%s); retry in %.1fs",
                         ep.url, error, delay)
                if self._stop.wait(delay):
                    return
                delay *= 2

    @staticmethod
    def _post(ep: Endpoint, body: bytes) -> str | None:
        """POST ``body``; None on a 2xx answer, else what went wrong."""
        parts = urlsplit(ep.url)
        conn_type = http.client.HTTPSConnection if parts.scheme == "https" \
            else http.client.HTTPConnection
        conn = conn_type(parts.hostname or "", parts.port, timeout=ep.timeout)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        try:
            conn.request("POST", path, body=body, headers={
                "Content-Type": EVENTS_MEDIA_TYPE, "User-Agent": "ketch-registry",
                **ep.headers})
            resp = conn.getresponse()
            resp.read()
            if 200 <= resp.status < 300:
                return None
            return f"HTTP {resp.status}"
        except (OSError, http.client.HTTPException) as e:
            return str(e) or type(e).__name__
        finally:
            conn.close()
