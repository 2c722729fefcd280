"""``GET /system/df``: what images, containers and volumes take on disk.

``docker system prune`` is the client's sequence of per-area prunes: containers,
images, volumes and networks are served by their routers; the build cache (no
builder yet) answers here with nothing to delete, and so do networks on a daemon
without networking.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ketch.api.httpstatus import json_response
from ketch.api.router import Route
from ketch.httpserver import Request, Response

__all__ = ["DiskRouter"]


class DiskRouter:
    def __init__(self, disk_usage: Callable[[], dict[str, Any]], networks: bool = False
                 ) -> None:
        """``networks``: the daemon serves /networks itself (its router prunes)."""
        self.disk_usage = disk_usage
        self.networks = networks

    def routes(self) -> list[Route]:
        out = [Route("GET", "/system/df", self.df)]
        if not self.networks:
            out.append(Route("POST", "/networks/prune", self.networks_prune))
        return out

    async def df(self, request: Request) -> Response:
        return json_response(await asyncio.to_thread(self.disk_usage))

    async def networks_prune(self, request: Request) -> Response:
        return json_response({"NetworksDeleted": None})

