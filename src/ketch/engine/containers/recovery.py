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
import contextlib
import logging
from typing import TYPE_CHECKING

from ketch.engine.containers import network
from ketch.engine.containers.model import Container, now_rfc3339

if TYPE_CHECKING:
    from ketch.engine.containers.service import ContainerService

__all__ = ["restore", "shutdown"]

log = logging.getLogger(__name__)


def kill_supervisor(pidfile: str) -> None:
    """SIGKILL the supervisor named in ``pidfile`` if it still runs (checked by its name):
    its container was never started, so it holds nothing worth a graceful end."""
    import os
    import signal

    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/comm") as f:
            if f.read().startswith("ksup-"):
                os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        return


def collect_orphans(svc: ContainerService) -> None:
    """Release what a create or remove cut short by SIGKILL left without a record:
    the container's snapshot (and its rootfs mount), its runtime state, its bundle
    directory and its holds on volumes."""
    import os
    import shutil

    known = {c.id for c in svc.store.all()}
    for c in svc.store.all():
        # A start cut short after the supervisor created the container: the record
        # never said "running", so nobody will start or stop it. Undo the create.
        sock = os.path.join(svc.bundle_dir(c), "sup.sock")
        if c.state.status not in ("running", "paused", "restarting") and os.path.exists(sock):
            with contextlib.suppress(Exception):
                svc.runtime(c.runtime).delete(c.id, force=True)
            kill_supervisor(os.path.join(svc.bundle_dir(c), "sup.pid"))
            log.info("container %s: undid a start interrupted by the daemon's death",
                     c.short_id)
    for info in svc.snapshotter.walk():
        if not info.key.startswith("container-"):
            continue
        cid = info.key[len("container-"):]
        if cid in known:
            continue
        rootfs = os.path.join(svc.config.exec_root, "c", cid[:20], "rootfs")
        with contextlib.suppress(OSError):
            while os.path.ismount(rootfs):
                from ketch.snapshot import unmount

                unmount(rootfs, detach=True)
        with contextlib.suppress(Exception):
            svc.snapshotter.remove(info.key)
        log.info("removed the snapshot of unrecorded container %s", cid[:12])
    for name in svc.runtime_names():
        try:
            rt = svc.runtime(name)
            states = rt.list()
        except Exception:
            continue
        for st in states:
            if st.get("id") not in known:
                with contextlib.suppress(Exception):
                    rt.delete(st["id"], force=True)
                log.info("deleted runtime state of unrecorded container %s", st.get("id"))
    cdir = os.path.join(svc.config.exec_root, "c")
    with contextlib.suppress(OSError):
        for entry in os.listdir(cdir):
            if not any(k.startswith(entry) for k in known):
                path = os.path.join(cdir, entry)
                if not os.path.ismount(os.path.join(path, "rootfs")):
                    shutil.rmtree(path, ignore_errors=True)
    # Sandboxes of containers that do not run (a create or start cut short, a stop the
    # daemon did not see through); the records' endpoints are released by restore().
    nsdir = os.path.join(svc.config.exec_root, "netns")
    with contextlib.suppress(OSError):
        from ketch.sys import netns

        live = {c.id for c in svc.store.all()
                if c.state.status in ("running", "paused", "restarting")}
        for entry in os.listdir(nsdir):
            if entry not in live:  # a stopped container's sandbox is made again at start
                with contextlib.suppress(OSError):
                    netns.delete(os.path.join(nsdir, entry))
                log.info("removed the network namespace left by container %s", entry[:12])
    if svc.volumes is not None:
        for vol in svc.volumes.list().get("Volumes") or []:
            for holder in svc.volumes.users(vol["Name"]):
                if holder not in known:
                    svc.volumes.release(vol["Name"], holder)
                    log.info("released volume %s held by unrecorded container %s",
                             vol["Name"], holder[:12])


async def restore(svc: ContainerService) -> None:
    """Re-attach to running containers after a daemon (re)start; apply restart policies."""
    try:
        await asyncio.to_thread(collect_orphans, svc)
    except Exception as e:  # best effort: never keep the daemon from starting
        log.warning("collecting leftovers of unrecorded containers failed: %s", e)
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
                try:
                    await network.restore(svc, c)
                except Exception as e:
                    log.warning("container %s: restoring its network: %s", c.short_id, e)
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
        if c.sandbox or c.ports or any(e.get("IPAddress") for e in c.endpoints.values()):
            # a start cut short, or a stop the daemon did not see through
            await asyncio.to_thread(network.release, svc, c)
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
    if svc.prespawns:  # let spawns in flight land, then undo what nobody started
        await asyncio.gather(*list(svc.prespawns), return_exceptions=True)
    for c in svc.store.all():
        lv = svc.live_all.get(c.id)
        if lv is not None and lv.prespawned is not None:
            with contextlib.suppress(Exception):
                await svc.drop_prespawn(c)
    running = [c for c in svc.store.all() if c.state.status in ("running", "paused")]
    if not svc.config.live_restore and running:
        await asyncio.gather(*(svc.stop_container(c, None, None) for c in running),
                             return_exceptions=True)
    for lv in svc.live_all.values():
        for t in (lv.monitor, lv.restart_task, lv.health_task):
            if t is not None:
                t.cancel()
