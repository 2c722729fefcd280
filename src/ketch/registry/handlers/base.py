"""``GET /v2/`` (API version check), ``/health`` and ``/metrics``."""

from __future__ import annotations

from ketch.httpserver import Request, Response
from ketch.registry.handlers import Context, json_response
from ketch.registry.storage import PathNotFound

__all__ = ["health", "metrics", "version_check"]


async def version_check(ctx: Context, req: Request) -> Response:
    return json_response(200, {})


async def health(ctx: Context, req: Request) -> Response:
    """200 when storage answers a ``stat`` of its root, else 503."""
    try:
        await ctx.run(ctx.registry.driver.stat, "")
    except (OSError, PathNotFound) as e:
        return json_response(503, {"status": "unhealthy", "storage": str(e)})
    return json_response(200, {"status": "ok", "storage": ctx.registry.driver.name})


async def metrics(ctx: Context, req: Request) -> Response:
    return Response(200, [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")],
                    ctx.metrics.render())
