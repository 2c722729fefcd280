"""``GET /system/df``: what images, containers and volumes take on disk.

(``docker system prune`` is the client's sequence of the per-area prunes, which
the images, containers and volumes routers serve.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ketch.api.http import Request, Response
from ketch.api.httpstatus import json_response
from ketch.api.router import Route

__all__ = ["DiskRouter"]


class DiskRouter:
    def __init__(self, disk_usage: Callable[[], dict[str, Any]]) -> None:
        self.disk_usage = disk_usage

    def routes(self) -> list[Route]:
        return [Route("GET", "/system/df", self.df)]

    async def df(self, request: Request) -> Response:
        return json_response(await asyncio.to_thread(self.disk_usage))
