"""Engine API routers: one module per area, each declaring the backend Protocol it consumes.

:func:`all_routes` is the one place that mounts every router on an engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ketch.api.router import Route

if TYPE_CHECKING:
    from ketch.engine.engine import Engine

__all__ = ["all_routes"]


def all_routes(engine: Engine) -> list[Route]:
    from ketch.api.routers.system import SystemRouter

    routes = list(SystemRouter(engine.system).routes())
    # --- routers (one line each; keep this block additive) ---
    return routes
