"""The engine: one object owning the stores and services behind the Docker API.

Built once by the composition root (``ketch.cmd.ketchd``) from an
:class:`EngineConfig`; routers receive the services they need from it.

Layout of the data root (persistent) and exec root (per boot)::

    <data-root>/content/      blobs (ketch.content.local)
    <data-root>/snapshots/    snapshotter state (overlay, or native where overlay fails)
    <data-root>/images/       image names -> content (ketch.image.store)
    <data-root>/volumes/      local volume driver
    <data-root>/containers/<id>/   container records, logs
    <exec-root>/              supervisor sockets, runtime state, bundles
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ketch.content.local import LocalContentStore
from ketch.engine.events import EventBus
from ketch.engine.images import ImageService
from ketch.engine.system import System
from ketch.engine.volumes import VolumeService
from ketch.image.store import ImageStore
from ketch.snapshot import Snapshotter

if TYPE_CHECKING:
    from ketch.engine.supervisor import ZygoteHandle

__all__ = ["Engine", "EngineConfig"]

log = logging.getLogger(__name__)


@dataclass
class EngineConfig:
    data_root: str = "/var/lib/ketch"
    exec_root: str = "/run/ketch"
    default_runtime: str = "ketch"
    # name -> runc-compatible binary path; "ketch" (in-process) is always present
    runtimes: dict[str, str] = field(default_factory=dict)
    live_restore: bool = False
    debug: bool = False
    log_driver: str = "json-file"
    log_opts: dict[str, str] = field(default_factory=dict)


def _snapshotter(root: str) -> Snapshotter:
    from ketch.snapshot.overlay import OverlaySnapshotter

    try:
        return OverlaySnapshotter(os.path.join(root, "overlay"))
    except OSError as e:  # no overlayfs here: copy-based snapshots still work
        from ketch.snapshot.native import NativeSnapshotter

        log.warning("overlay snapshotter unavailable (%s); using native copies", e)
        return NativeSnapshotter(os.path.join(root, "native"))


class Engine:
    """Stores and services of one daemon instance."""

    def __init__(self, config: EngineConfig, zygote: ZygoteHandle | None = None) -> None:
        """``zygote``: the supervisors' fork server (None: containers cannot start)."""
        self.config = config
        data, exe = config.data_root, config.exec_root
        for d in (data, exe):
            os.makedirs(d, mode=0o711, exist_ok=True)
        self.events = EventBus()
        self.content = LocalContentStore(os.path.join(data, "content"))
        self.snapshotter = _snapshotter(os.path.join(data, "snapshots"))
        self.image_store = ImageStore(os.path.join(data, "images"), self.content)
        from ketch.engine.containers import runtimes

        self.system = System(
            data_root=data, exec_root=exe, debug=config.debug,
            default_runtime=config.default_runtime,
            runtimes={n: runtimes.describe(n, config.runtimes, exe).get("path", "ketch")
                      for n in runtimes.known(config.runtimes)},
            live_restore=config.live_restore, log_driver=config.log_driver)
        # --- services (one line each; keep this block additive) ---
        self.images = ImageService(self.image_store, self.content, self.snapshotter, self.events)
        self.volumes = VolumeService(os.path.join(data, "volumes"), self.events)

        self._containers(zygote)

    def _containers(self, zygote: ZygoteHandle | None) -> None:
        from ketch.engine.containers.exec import ExecService
        from ketch.engine.containers.service import ContainerService
        from ketch.engine.containers.store import ContainerStore

        self.containers = ContainerService(
            config=self.config,
            store=ContainerStore(os.path.join(self.config.data_root, "containers")),
            image_store=self.image_store, content=self.content, snapshotter=self.snapshotter,
            events=self.events, volumes=getattr(self, "volumes", None), zygote=zygote)
        self.execs = ExecService(self.containers)
        self.images.in_use = self.containers.in_use
        self.images.running = self.containers.running_with
        self.system.counts = self._counts

    def _counts(self) -> dict[str, int]:
        states = [c.state.status for c in self.containers.store.all()]
        running = sum(s in ("running", "restarting") for s in states)
        paused = states.count("paused")
        return {"Containers": len(states), "ContainersRunning": running,
                "ContainersPaused": paused, "ContainersStopped": len(states) - running - paused,
                "Images": len({i.id for i in self.image_store.list()})}

    def disk_usage(self) -> dict[str, Any]:
        """``GET /system/df``."""
        from ketch.engine.containers.query import list_containers

        img = self.images.usage()
        return {"LayersSize": img["LayersSize"], "Images": img["Images"],
                "Containers": list_containers(self.containers, all=True, size=True),
                "Volumes": self.volumes.usage(), "BuildCache": []}

    async def start(self) -> None:
        """Reconnect to running containers and apply restart policies (daemon start)."""
        await self.containers.restore()

    async def shutdown(self) -> None:
        """Daemon stop: containers stop unless live-restore keeps them running."""
        await self.containers.shutdown()

    def close(self) -> None:
        """Stop background work; running containers are left to their supervisors."""
