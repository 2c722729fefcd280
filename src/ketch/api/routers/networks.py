"""Network endpoints: ``/networks``, ``/networks/create``, ``/networks/prune``,
``/networks/{id}``, ``/networks/{id}/connect`` and ``/networks/{id}/disconnect``.

HTTP only: decode and check the request, call the backend in a worker thread
(drivers touch the kernel), encode its answer. Semantics live in
``ketch.engine.networks``. Status codes are dockerd's: 201 on create, 204 on
delete, 200 with no body on connect/disconnect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ketch.api.filters import parse_filters
from ketch.api.httpstatus import json_response
from ketch.api.params import json_body
from ketch.api.router import Route
from ketch.errors import InvalidArgument
from ketch.httpserver import Request, Response

__all__ = ["LIST_FILTERS", "PRUNE_FILTERS", "NetworksBackend", "NetworksRouter"]

LIST_FILTERS = ("dangling", "driver", "id", "label", "name", "scope", "type")
PRUNE_FILTERS = ("label", "label!", "until")

_TRUE = ("1", "t", "T", "true", "TRUE", "True")
_FALSE = ("0", "f", "F", "false", "FALSE", "False")


class NetworksBackend(Protocol):
    """What the networks router needs (``ketch.engine.networks.NetworkService``)."""

    def list(self, filters: Mapping[str, Sequence[str]] | None = None) -> list[dict[str, Any]]:
        """Matching ``Network`` objects."""
        ...

    def inspect(self, ref: str, scope: str | None = None) -> dict[str, Any]:
        """The ``Network`` object of ``ref`` (id, name or id prefix)."""
        ...

    def create(self, body: Mapping[str, Any]) -> dict[str, str]:
        """``{"Id": ..., "Warning": ...}`` for a ``NetworkCreateRequest``."""
        ...

    def remove(self, ref: str) -> None:
        """Remove ``ref``."""
        ...

    def prune(self, filters: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
        """``NetworkPruneResponse``."""
        ...

    def connect(self, ref: str, body: Mapping[str, Any]) -> None:
        """Connect the body's ``Container`` to ``ref``."""
        ...

    def disconnect(self, ref: str, body: Mapping[str, Any]) -> None:
        """Disconnect the body's ``Container`` from ``ref``."""
        ...


def _object_body(request: Request) -> dict[str, Any]:
    """The JSON object body (400 for none, bad JSON or another JSON type)."""
    body = json_body(request, allow_empty=False)
    if not isinstance(body, dict):
        raise InvalidArgument("invalid request body: expected a JSON object")
    return body


def _verbose(request: Request) -> bool:
    """Go's ``strconv.ParseBool`` of ``verbose``, as dockerd reads it (unset: false)."""
    value = request.arg("verbose") or ""
    if value == "" or value in _FALSE:
        return False
    if value in _TRUE:
        return True
    raise InvalidArgument(f"invalid value for verbose: {value}")


class Attacher(Protocol):
    """Who plugs containers into networks (``ketch.engine.containers.service``)."""

    async def connect_network(self, ref: str, body: Mapping[str, Any]) -> None: ...

    async def disconnect_network(self, ref: str, body: Mapping[str, Any]) -> None: ...


class NetworksRouter:
    """Routes of the network endpoints over a :class:`NetworksBackend`; connect and
    disconnect go to ``attacher`` when given (the backend's otherwise)."""

    def __init__(self, backend: NetworksBackend, attacher: Attacher | None = None) -> None:
        self.backend = backend
        self.attacher = attacher

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/networks", self.network_list),
            Route("POST", "/networks/create", self.network_create),
            Route("POST", "/networks/prune", self.network_prune),
            Route("GET", "/networks/{id}", self.network_inspect),
            Route("DELETE", "/networks/{id}", self.network_remove),
            Route("POST", "/networks/{id}/connect", self.network_connect),
            Route("POST", "/networks/{id}/disconnect", self.network_disconnect),
        ]

    async def network_list(self, request: Request) -> Response:
        filters = parse_filters(request.arg("filters"), LIST_FILTERS)
        return json_response(await asyncio.to_thread(self.backend.list, filters))

    async def network_create(self, request: Request) -> Response:
        body = _object_body(request)
        return json_response(await asyncio.to_thread(self.backend.create, body), 201)

    async def network_inspect(self, request: Request) -> Response:
        _verbose(request)  # checked as dockerd does; ketch has no services to show
        scope = request.arg("scope") or None
        return json_response(await asyncio.to_thread(self.backend.inspect,
                                                     request.params["id"], scope))

    async def network_remove(self, request: Request) -> Response:
        await asyncio.to_thread(self.backend.remove, request.params["id"])
        return Response(204)

    async def network_prune(self, request: Request) -> Response:
        filters = parse_filters(request.arg("filters"), PRUNE_FILTERS)
        return json_response(await asyncio.to_thread(self.backend.prune, filters))

    async def network_connect(self, request: Request) -> Response:
        body = _object_body(request)
        if self.attacher is not None:
            await self.attacher.connect_network(request.params["id"], body)
        else:
            await asyncio.to_thread(self.backend.connect, request.params["id"], body)
        return Response(200)

    async def network_disconnect(self, request: Request) -> Response:
        body = _object_body(request)
        if self.attacher is not None:
            await self.attacher.disconnect_network(request.params["id"], body)
        else:
            await asyncio.to_thread(self.backend.disconnect, request.params["id"], body)
        return Response(200)
