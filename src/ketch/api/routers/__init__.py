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
    from ketch.api.routers.events import EventsRouter
    from ketch.api.routers.images import ImagesRouter
    from ketch.api.routers.system import SystemRouter
    from ketch.api.routers.volumes import VolumesRouter

    routes = list(SystemRouter(engine.system).routes())
    # --- routers (one line each; keep this block additive) ---
    routes += ImagesRouter(engine.images).routes()
    from ketch.api.routers.auth import AuthRouter

    routes += AuthRouter(engine.images).routes()
    routes += EventsRouter(engine.events).routes()
    routes += VolumesRouter(engine.volumes).routes()
    from ketch.api.routers.containers import ContainersRouter

    routes += ContainersRouter(engine.containers, engine.execs).routes()
    from ketch.api.routers.archive import ArchiveRouter

    routes += ArchiveRouter(engine.containers, engine.images).routes()
    from ketch.api.routers.disk import DiskRouter

    routes += DiskRouter(engine.disk_usage, networks=engine.net is not None).routes()
    if engine.net is not None:
        from ketch.api.routers.networks import NetworksRouter

        routes += NetworksRouter(engine.networks, engine.containers).routes()
    from ketch.api.routers.build import BuildRouter

    routes += BuildRouter.for_engine(engine).routes()
    return routes
