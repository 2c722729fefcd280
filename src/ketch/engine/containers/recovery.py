"""Daemon start and stop as containers see them.

``restore`` runs when ketchd starts: containers that were running are re-attached
to their supervisors (which never depended on the daemon); an exit that happened
while the daemon was away is read from the supervisor's ``exit.json``; containers
whose restart policy says so are started. ``shutdown`` runs on a graceful stop:
without live-restore, running containers are stopped (not as a manual stop, so
their restart policy brings them back with the daemon).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ketch.engine.containers.model import Container, now_rfc3339

if TYPE_CHECKING:
    from ketch.engine.containers.service import ContainerService

__all__ = ["restore", "shutdown"]

log = logging.getLogger(__name__)


async def restore(svc: ContainerService) -> None:
    """Re-attach to running containers after a daemon (re)start; apply restart policies."""
    from ketch.engine.containers.service import has_healthcheck
    from ketch.engine.supervisor import SupervisorClient

    to_start: list[Container] = []
    for c in svc.store.all():
        lv = svc.live(c.id)
        if c.state.status == "removing":
            await asyncio.to_thread(svc.remove_files, c, False)
            continue
        if c.state.status in ("running", "paused"):
            sup = SupervisorClient(svc.bundle_dir(c))
            try:
                st = await asyncio.to_thread(sup.state)
            except Exception:
                st = None
            if st is not None and st.get("status") in ("running", "created"):
                lv.sup = sup
                lv.sup_ready.set()
                lv.monitor = asyncio.get_running_loop().create_task(
                    svc.monitor_exit(c, lv, sup))
                if has_healthcheck(c):
                    from ketch.engine.containers.health import run_health

                    lv.health_task = asyncio.get_running_loop().create_task(
                        run_health(svc, c, lv))
                log.info("container %s: re-attached to its supervisor", c.short_id)
                continue
            ex = await asyncio.to_thread(sup.read_exit) or {
                "exit_code": 255, "finished_at": now_rfc3339(), "oom_killed": False,
                "error": "container's supervisor was lost while ketchd was down"}
            await svc.on_exit(c, lv, ex)
            continue
        if c.state.status == "restarting":
            c.state.status = "exited"
            svc.save(c)
        policy = (c.host_config.get("RestartPolicy") or {}).get("Name")
        if policy in ("always", "unless-stopped") and not c.manually_stopped:
            to_start.append(c)
    for c in to_start:
        lv = svc.live(c.id)
        async with lv.lock:
            try:
                await svc.start_locked(c, lv)
            except Exception as e:
                log.warning("restart policy: starting %s failed: %s", c.short_id, e)


async def shutdown(svc: ContainerService) -> None:
    """Daemon stop: without live-restore, stop running containers (not as a manual stop)."""
    svc.closing = True
    running = [c for c in svc.store.all() if c.state.status in ("running", "paused")]
    if not svc.config.live_restore and running:
        await asyncio.gather(*(svc.stop_container(c, None, None) for c in running),
                             return_exceptions=True)
    for lv in svc.live_all.values():
        for t in (lv.monitor, lv.restart_task, lv.health_task):
            if t is not None:
                t.cancel()
