"""Method + path routing, with version negotiation and error mapping around it.

Patterns are literal paths with ``{name}`` segments (one path segment) or
``{name:path}`` (the rest, slashes included — image names such as
``library/busybox``). Dispatch is, per request::

    strip /vX.Y ─▶ version.check (400 outside range) ─▶ match method+path
        ─▶ handler(request) ─▶ Response, or a ketch error → httpstatus

Unknown paths and methods answer 404 ``{"message": "page not found"}`` like
dockerd. HEAD falls back to the GET route (the server drops the body).
Every response carries ``Api-Version`` and ``Ostype``, as dockerd's do.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ketch.api import version
from ketch.api.httpstatus import error_response, json_response
from ketch.httpserver import Handler, Request, Response

__all__ = ["Route", "Router"]

log = logging.getLogger(__name__)


def _debug() -> bool:
    return log.isEnabledFor(logging.DEBUG)


_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(path))?\}")


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: str
    handler: Handler


def _compile(pattern: str) -> re.Pattern[str]:
    out, pos = [], 0
    for m in _PARAM.finditer(pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        out.append(f"(?P<{m.group(1)}>{'.+' if m.group(2) else '[^/]+'})")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out) + r"/?\Z")


class Router:
    """Holds routes; ``await router(request)`` is an ``http.Handler``."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self._exact: dict[tuple[str, str], Handler] = {}
        self._patterns: list[tuple[str, re.Pattern[str], Handler]] = []
        for r in routes:
            self.add(r)

    def add(self, route: Route) -> None:
        method = route.method.upper()
        if _PARAM.search(route.pattern) is None:
            key = (method, route.pattern.rstrip("/") or "/")
            if key in self._exact:
                raise ValueError(f"duplicate route {method} {route.pattern}")
            self._exact[key] = route.handler
        else:
            self._patterns.append((method, _compile(route.pattern), route.handler))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | None:
        for m in (method, "GET") if method == "HEAD" else (method,):
            h = self._exact.get((m, path.rstrip("/") or "/"))
            if h is not None:
                return h, {}
            for pm, rx, handler in self._patterns:
                if pm == m:
                    found = rx.match(path)
                    if found is not None:
                        return handler, found.groupdict()
        return None

    async def __call__(self, request: Request) -> Response:
        t0 = time.perf_counter() if _debug() else 0.0
        try:
            requested, path = version.split_path(request.path)
            request.api_version = version.check(requested)
            found = self.match(request.method, path)
            if found is None:
                resp = json_response({"message": "page not found"}, 404)
            else:
                handler, request.params = found
                resp = await handler(request)
        except Exception as e:
            resp = error_response(e)
        resp.headers.append(("Api-Version", version.CURRENT))
        resp.headers.append(("Ostype", "linux"))
        if t0:
            log.debug("%s %s -> %d in %.1f ms", request.method, request.target, resp.status,
                      (time.perf_counter() - t0) * 1000)
        return resp
