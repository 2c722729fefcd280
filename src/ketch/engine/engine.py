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

from ketch.content.local import LocalContentStore
from ketch.engine.events import EventBus
from ketch.engine.system import System
from ketch.image.store import ImageStore
from ketch.snapshot import Snapshotter

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

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        data, exe = config.data_root, config.exec_root
        for d in (data, exe):
            os.makedirs(d, mode=0o711, exist_ok=True)
        self.events = EventBus()
        self.content = LocalContentStore(os.path.join(data, "content"))
        self.snapshotter = _snapshotter(os.path.join(data, "snapshots"))
        self.image_store = ImageStore(os.path.join(data, "images"), self.content)
        self.system = System(data_root=data, exec_root=exe, debug=config.debug)
        # --- services (one line each; keep this block additive) ---

    def close(self) -> None:
        """Stop background work; running containers are left to their supervisors."""
