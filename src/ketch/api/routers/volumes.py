"""Volume endpoints: ``/volumes``, ``/volumes/create``, ``/volumes/{name}``, ``/volumes/prune``.

HTTP only: decode and check the request, call the backend in a worker thread
(it touches the disk), encode its answer. Semantics live in
``ketch.engine.volumes``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ketch.api import version
from ketch.api.filters import parse_filters
from ketch.api.httpstatus import json_response
from ketch.api.router import Route
from ketch.errors import InvalidArgument, NotImplementedYet
from ketch.httpserver import Request, Response

__all__ = ["VolumesBackend", "VolumesRouter", "query_bool"]

LIST_FILTERS = ("name", "driver", "label", "dangling")
PRUNE_FILTERS = ("label", "label!", "all")
# API 1.42 made prune spare named volumes unless asked for all
_PRUNE_ANONYMOUS_SINCE = "1.42"


class VolumesBackend(Protocol):
    """What the volumes router needs from the engine (``ketch.engine.volumes.VolumeService``)."""

    def create(self, name: str | None = None, driver: str = "local",
               driver_opts: Mapping[str, str] | None = None,
               labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The created (or existing, identical) volume's ``Volume`` JSON."""
        ...

    def inspect(self, name: str, usage: bool = False) -> dict[str, Any]:
        """``Volume`` JSON of ``name``."""
        ...

    def list(self, filters: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
        """``VolumeListResponse``."""
        ...

    def remove(self, name: str, force: bool = False) -> None:
        """Remove ``name``."""
        ...

    def prune(self, filters: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
        """``VolumePruneResponse``."""
        ...


def query_bool(request: Request, name: str) -> bool:
    """dockerd's reading of a boolean query parameter: absent, ``""``, ``0``, ``no``,
    ``false`` and ``none`` are false; anything else is true."""
    value = (request.arg(name) or "").strip().lower()
    return value not in ("", "0", "no", "false", "none")


def _string_map(body: Mapping[str, Any], key: str) -> dict[str, str]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidArgument(
            f"invalid volume create request: {key} must be an object of strings")
    return dict(value)


def _string(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"invalid volume create request: {key} must be a string")
    return value


_CREATE_FIELDS = ("Name", "Driver", "DriverOpts", "Labels", "ClusterVolumeSpec")


def parse_create_body(body: bytes) -> tuple[str, str, dict[str, str], dict[str, str]]:
    """(name, driver, driver_opts, labels) of a ``VolumeCreateOptions`` body.

    An empty body is ``{}`` (an anonymous local volume). Bad JSON, an unknown
    field or a field of the wrong type is ``InvalidArgument`` naming it; a
    cluster volume spec is ``NotImplementedYet``.
    """
    if not body.strip():
        return "", "", {}, {}
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise InvalidArgument(f"invalid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("invalid volume create request: expected a JSON object")
    for key in doc:
        if key not in _CREATE_FIELDS:
            raise InvalidArgument(f'invalid volume create request: unknown field "{key}"')
    if doc.get("ClusterVolumeSpec") is not None:
        raise NotImplementedYet("cluster volumes need a swarm, which ketch does not run")
    return (_string(doc, "Name"), _string(doc, "Driver"),
            _string_map(doc, "DriverOpts"), _string_map(doc, "Labels"))


class VolumesRouter:
    """Routes of the volume endpoints over a :class:`VolumesBackend`."""

    def __init__(self, backend: VolumesBackend) -> None:
        self.backend = backend

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/volumes", self.volume_list),
            Route("POST", "/volumes/create", self.volume_create),
            Route("POST", "/volumes/prune", self.volume_prune),
            Route("GET", "/volumes/{name}", self.volume_inspect),
            Route("DELETE", "/volumes/{name}", self.volume_remove),
        ]

    async def volume_list(self, request: Request) -> Response:
        filters = parse_filters(request.arg("filters"), LIST_FILTERS)
        return json_response(await asyncio.to_thread(self.backend.list, filters))

    async def volume_create(self, request: Request) -> Response:
        name, driver, opts, labels = parse_create_body(request.body)
        vol = await asyncio.to_thread(self.backend.create, name or None, driver or "local",
                                      opts, labels)
        return json_response(vol, 201)

    async def volume_inspect(self, request: Request) -> Response:
        return json_response(await asyncio.to_thread(self.backend.inspect,
                                                     request.params["name"]))

    async def volume_remove(self, request: Request) -> Response:
        await asyncio.to_thread(self.backend.remove, request.params["name"],
                                query_bool(request, "force"))
        return Response(204)

    async def volume_prune(self, request: Request) -> Response:
        filters = parse_filters(request.arg("filters"), PRUNE_FILTERS)
        if version.compare(request.api_version or version.CURRENT,
                           _PRUNE_ANONYMOUS_SINCE) < 0:
            filters["all"] = ["true"]  # older clients expect every unused volume to go
        return json_response(await asyncio.to_thread(self.backend.prune, filters))
