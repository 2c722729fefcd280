"""System endpoints: ``/_ping``, ``/version``, ``/info``.

The router owns the API-level facts (ApiVersion, MinAPIVersion); everything
about the host and the daemon comes from the backend.
"""

from __future__ import annotations

from typing import Any, Protocol

from ketch.api import version
from ketch.api.httpstatus import json_response
from ketch.api.router import Route
from ketch.httpserver import Request, Response

__all__ = ["SystemBackend", "SystemRouter"]


class SystemBackend(Protocol):
    """What the system router needs from the engine."""

    def version(self) -> dict[str, Any]:
        """The body of GET /version, less ApiVersion and MinAPIVersion."""
        ...

    def info(self) -> dict[str, Any]:
        """The body of GET /info (SystemInfo)."""
        ...


_PING_HEADERS = [
    ("Content-Type", "text/plain; charset=utf-8"),
    ("Builder-Version", "1"),
    ("Docker-Experimental", "false"),
    ("Swarm", "inactive"),
    ("Cache-Control", "no-cache, no-store, must-revalidate"),
    ("Pragma", "no-cache"),
]


class SystemRouter:
    def __init__(self, backend: SystemBackend) -> None:
        self.backend = backend

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/_ping", self.ping),
            Route("HEAD", "/_ping", self.ping),
            Route("GET", "/version", self.version),
            Route("GET", "/info", self.info),
        ]

    async def ping(self, request: Request) -> Response:
        # Api-Version is added to every response by the router.
        return Response(200, list(_PING_HEADERS), b"OK")

    async def version(self, request: Request) -> Response:
        body = dict(self.backend.version())
        body["ApiVersion"] = version.CURRENT
        body["MinAPIVersion"] = version.MINIMUM
        for comp in body.get("Components") or []:
            if comp.get("Name") == "Engine":
                details = comp.setdefault("Details", {})
                details["ApiVersion"] = version.CURRENT
                details["MinAPIVersion"] = version.MINIMUM
        return json_response(body)

    async def info(self, request: Request) -> Response:
        return json_response(self.backend.info())
