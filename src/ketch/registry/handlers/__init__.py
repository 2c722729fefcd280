"""HTTP handlers of the registry: each turns one spec endpoint into ``Registry`` calls.

Every handler is ``async (ctx, req, **route params) -> Response``; it validates what the
URL carries (``ketch.registry.names``) before touching storage, runs blocking storage
calls through ``ctx.run`` (a worker pool, so the event loop never waits on a disk), and
raises ``RegistryError`` for the app to render. Modules: ``base`` (``/v2/``, health,
metrics), ``blobs``, ``uploads``, ``manifests``, ``discovery`` (tags, catalog,
referrers).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ketch.httpserver import Request, Response
from ketch.registry.metrics import Metrics
from ketch.registry.notify import Notifier, make_event
from ketch.registry.repository import Registry

__all__ = ["API_VERSION_HEADER", "Context", "json_response"]

API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")

T = TypeVar("T")


@dataclass
class Context:
    """What every handler gets: the data model, the worker pool, per-upload locks,
    and where events go (``notifier``; None: nowhere)."""

    registry: Registry
    executor: ThreadPoolExecutor
    metrics: Metrics = field(default_factory=Metrics)
    notifier: Notifier | None = None
    source: dict[str, str] = field(default_factory=dict)
    _upload_locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def emit(self, req: Request, action: str, repository: str, **target: Any) -> None:
        """Send a notification about ``req`` (never blocks; no-op without endpoints).
        The actor is the user the app authorised (``req.params["user"]``)."""
        if self.notifier is None:
            return
        request = {"id": req.params.get("request_id", ""), "method": req.method,
                   "host": req.headers.get("host") or "",
                   "useragent": req.headers.get("user-agent") or ""}
        self.notifier.emit(make_event(action, repository=repository,
                                      actor=req.params.get("user"), request=request,
                                      source=self.source, **target))

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the worker pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args))

    def upload_lock(self, upload_id: str) -> asyncio.Lock:
        """Serialises requests on one upload (two PATCHes must not interleave)."""
        lock = self._upload_locks.get(upload_id)
        if lock is None:
            lock = self._upload_locks[upload_id] = asyncio.Lock()
        return lock

    def forget_upload(self, upload_id: str) -> None:
        lock = self._upload_locks.get(upload_id)
        if lock is not None and not lock.locked():
            del self._upload_locks[upload_id]


def json_response(status: int, doc: Any, headers: list[tuple[str, str]] | None = None,
                  content_type: str = "application/json") -> Response:
    body = json.dumps(doc, separators=(",", ":")).encode()
    return Response(status, [("Content-Type", content_type), *(headers or [])], body)
