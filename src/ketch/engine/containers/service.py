"""The container service: create, start, stop, kill, wait, remove ... on one host.

Runs on the daemon's event loop; blocking work (mounts, unpacking, the runtime's
CLI) goes to threads. Per container, one ``asyncio.Lock`` orders lifecycle
operations. A started container has a supervisor (``ketch.engine.supervisor``):
it holds the container's stdio and log and reports its exit; the service keeps
one monitor task per running container that awaits that report, records it and
applies the restart policy.

State on disk (``<data-root>/containers/<id>/``): ``config.v2.json`` (the record,
replaced atomically), the json-file log, and the hostname/hosts/resolv.conf files
bind-mounted into the container. Per boot (``<exec-root>/c/<id[:20]>/``): the OCI
bundle (``config.json``), the mounted rootfs, and the supervisor's state dir.

Daemon restart: ``restore()`` reconnects to the supervisors of containers that
were running (they never depended on the daemon), records the exits that happened
meanwhile (``exit.json``), and starts containers whose restart policy asks for it.
Without ``live_restore`` a graceful daemon shutdown stops running containers first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ketch.engine.containers import create as create_mod
from ketch.engine.containers import network, recovery, runtimes, setup
from ketch.engine.containers.lifecycle import RestartBackoff, parse_signal, should_restart
from ketch.engine.containers.model import Container, State, now_rfc3339, parse_rfc3339
from ketch.engine.containers.store import ContainerStore
from ketch.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotModified,
    Unavailable,
)

if TYPE_CHECKING:
    from ketch.content import ContentStore
    from ketch.engine.containers.network import NetContext
    from ketch.engine.engine import EngineConfig
    from ketch.engine.events import EventBus
    from ketch.engine.supervisor import SpawnResult, SupervisorClient, ZygoteHandle
    from ketch.engine.volumes import VolumeService
    from ketch.image.store import ImageStore
    from ketch.runtime.oci_runtime import OCIRuntime
    from ketch.snapshot import Snapshotter

__all__ = ["ContainerService"]

log = logging.getLogger(__name__)

_INIT_CANDIDATES = ("docker-init", "tini-static", "tini")


class _Live:
    """In-memory facts of a container this daemon runs: its supervisor and monitor."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.sup: SupervisorClient | None = None
        self.sup_ready = asyncio.Event()  # a supervisor exists (attach can connect)
        self.attaching = 0  # attach requests waiting for the supervisor
        self.attached = asyncio.Event()
        self.monitor: asyncio.Task[None] | None = None
        self.exits: list[asyncio.Future[dict[str, Any]]] = []  # next-exit waiters
        self.removed: list[asyncio.Future[dict[str, Any]]] = []
        self.backoff = RestartBackoff()
        self.restart_task: asyncio.Task[None] | None = None
        self.health_task: asyncio.Task[None] | None = None
        self.stopping = False
        # A supervisor spawned speculatively right after create (bundle dir, result):
        # `docker run` sends start a few ms later, and finds the container created.
        self.prespawned: tuple[str, SpawnResult] | None = None
        self.expire_task: asyncio.Task[None] | None = None


class ContainerService:
    def __init__(self, *, config: EngineConfig, store: ContainerStore, image_store: ImageStore,
                 content: ContentStore, snapshotter: Snapshotter, events: EventBus,
                 volumes: VolumeService | None, zygote: ZygoteHandle | None,
                 net: NetContext | None = None) -> None:
        self.config = config
        self.net = net
        self.store = store
        self.image_store = image_store
        self.content = content
        self.snapshotter = snapshotter
        self.events = events
        self.volumes = volumes
        self.zygote = zygote
        self.live_all: dict[str, _Live] = {}
        self._runtimes: dict[str, OCIRuntime] = {}
        self._descs: dict[str, dict[str, Any]] = {}
        self.prespawns: set[asyncio.Task[None]] = set()
        self.closing = False

    # ---- helpers -----------------------------------------------------------------

    def live(self, cid: str) -> _Live:
        lv = self.live_all.get(cid)
        if lv is None:
            lv = self.live_all[cid] = _Live()
        return lv

    def get(self, ref: str) -> Container:
        return self.store.get(ref)

    def bundle_dir(self, c: Container) -> str:
        return os.path.join(self.config.exec_root, "c", c.id[:20])

    def rootfs_dir(self, c: Container) -> str:
        return os.path.join(self.bundle_dir(c), "rootfs")

    def runtime_names(self) -> list[str]:
        return runtimes.known(self.config.runtimes)

    def runtime_desc(self, name: str) -> dict[str, Any]:
        desc = self._descs.get(name)
        if desc is None:
            desc = self._descs[name] = runtimes.describe(name, self.config.runtimes,
                                                         self.config.exec_root)
        return desc

    def runtime(self, name: str) -> OCIRuntime:
        rt = self._runtimes.get(name)
        if rt is None:
            from ketch.engine.supervisor import make_runtime

            rt = self._runtimes[name] = make_runtime(self.runtime_desc(name))
        return rt

    def _event(self, c: Container, action: str, **extra: str) -> None:
        attrs = dict(c.config.get("Labels") or {})
        attrs.update(image=c.image_name, name=c.name.lstrip("/"))
        attrs.update(extra)
        self.events.publish("container", action, c.id, attrs)

    def save(self, c: Container, *, sync: bool = True) -> None:
        self.store.save(c, sync=sync)

    def in_use(self, image_id: str) -> list[str]:
        """IDs of containers created from ``image_id`` (the image service's rmi check)."""
        return [c.id for c in self.store.all() if c.image_id == image_id]

    def running_with(self, image_id: str) -> list[str]:
        """IDs of running containers created from ``image_id`` (rmi -f refuses those)."""
        return [c.id for c in self.store.all()
                if c.image_id == image_id and c.state.status in ("running", "paused",
                                                                 "restarting")]

    # ---- create ------------------------------------------------------------------

    async def create(self, name: str | None, body: Any) -> dict[str, Any]:
        """``POST /containers/create``: see :func:`ketch.engine.containers.create.create`."""
        return await create_mod.create(self, name, body)

    def _release_volumes(self, c: Container, anonymous_too: bool) -> None:
        if self.volumes is None:
            return
        for m in c.mounts:
            if m["Type"] == "volume":
                with contextlib.suppress(Exception):
                    self.volumes.release(m["Name"], c.id)
        if anonymous_too and c.anonymous_volumes:
            try:
                self.volumes.remove_anonymous_of(c.id, c.anonymous_volumes)
            except Exception as e:
                log.warning("anonymous volumes of %s kept: %s", c.short_id, e)

    # ---- start -------------------------------------------------------------------

    async def connect_network(self, ref: str, body: Mapping[str, Any]) -> None:
        """``POST /networks/{id}/connect``."""
        c = self.get(str(body.get("Container") or ""))
        async with self.live(c.id).lock:
            await network.connect(self, c, ref, body.get("EndpointConfig") or {})

    async def disconnect_network(self, ref: str, body: Mapping[str, Any]) -> None:
        """``POST /networks/{id}/disconnect``."""
        c = self.get(str(body.get("Container") or ""))
        async with self.live(c.id).lock:
            await network.disconnect(self, c, ref, bool(body.get("Force")))

    async def start(self, ref: str) -> None:
        c = self.get(ref)
        lv = self.live(c.id)
        async with lv.lock:
            if c.state.status in ("running", "paused"):
                raise NotModified("container already started")
            if c.state.status in ("removing", "dead"):
                raise Conflict(f"cannot start container {c.id}: it is being removed")
            c.manually_stopped = False
            await self.start_locked(c, lv)

    async def start_locked(self, c: Container, lv: _Live) -> None:
        from ketch.engine.supervisor import SupervisorClient

        if self.zygote is None:
            raise FailedPrecondition("this daemon cannot run containers (no supervisor)")
        if self.closing:
            raise Unavailable("the daemon is shutting down")
        try:
            gone = self.store.get(c.id) is not c or c.state.status == "removing"
        except NotFound:
            gone = True
        if gone:  # removed while a restart (policy, health, API) waited for the lock
            raise NotFound(f"No such container: {c.id}")
        t0 = time.perf_counter()
        pre, lv.prespawned = lv.prespawned, None
        if lv.expire_task is not None:
            lv.expire_task.cancel()
            lv.expire_task = None
        if pre is not None and os.path.exists(os.path.join(pre[0], "sup.sock")):
            bundle, res = pre
        else:
            if pre is not None:  # its supervisor is gone: start afresh
                await self._teardown_prespawn(c, lv, pre)
            try:
                bundle, res = await self._spawn(c)
            except asyncio.CancelledError:
                raise  # _spawn undoes what the zygote makes
            except BaseException as e:
                await asyncio.to_thread(setup.unmount, self, c)
                self._start_failed(c, lv, e)
                raise
        t2 = time.perf_counter()
        sup = SupervisorClient(bundle)
        lv.sup = sup
        lv.sup_ready.set()
        if lv.attaching:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lv.attached.wait(), 5)
        try:
            await asyncio.to_thread(sup.start)
        except BaseException as e:
            with contextlib.suppress(Exception):
                self.runtime(c.runtime).kill(c.id, signal.SIGKILL)
            lv.sup = None
            await asyncio.to_thread(setup.unmount, self, c)
            self._start_failed(c, lv, e)
            raise
        log.debug("start %s: %s %.1f ms, start %.1f ms", c.short_id,
                  "prespawned" if pre is not None else "spawn", (t2 - t0) * 1000,
                  (time.perf_counter() - t2) * 1000)
        c.state = State(status="running", pid=res.init_pid, started_at=now_rfc3339(),
                        health={"Status": "starting", "FailingStreak": 0, "Log": []}
                        if has_healthcheck(c) else None)
        # Not fsync'd: after a power loss nothing runs, whatever the record says (restore
        # then finds no supervisor and records the container as exited).
        self.save(c, sync=False)
        self._event(c, "start")
        lv.monitor = asyncio.get_running_loop().create_task(self.monitor_exit(c, lv, sup))
        if has_healthcheck(c):
            from ketch.engine.containers.health import run_health

            lv.health_task = asyncio.get_running_loop().create_task(run_health(self, c, lv))

    async def _spawn(self, c: Container) -> tuple[str, SpawnResult]:
        """Mount, write the bundle and have the zygote fork a supervisor that creates the
        container; (bundle dir, result). Raises what the runtime raised."""
        from ketch.engine.supervisor import SpawnRequest

        assert self.zygote is not None
        bundle, _spec, joined = await asyncio.to_thread(setup.prepare_start, self, c)
        lc = c.host_config.get("LogConfig") or {}
        req = SpawnRequest(
            id=c.id, bundle=bundle, state_dir=bundle,
            runtime=self.runtime_desc(c.runtime),
            open_stdin=bool(c.config.get("OpenStdin")),
            stdin_once=bool(c.config.get("StdinOnce")),
            log={"driver": "json-file" if c.log_path else "none", "path": c.log_path,
                 "opts": dict(lc.get("Config") or {})})
        for stale in ("exit.json", "sup.sock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(bundle, stale))
        spawn = asyncio.ensure_future(self.zygote.aspawn(req))
        # The network's kernel side (veths and ports, under way since the namespace was
        # made; then the DNS) lands while the supervisor creates the container: the
        # runtime only needs the namespace to exist.
        plug = asyncio.ensure_future(network.plug(self, c, joined))
        try:
            res = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            # The zygote goes on regardless (a restart cancelled by `docker stop`, say):
            # undo what it makes, or its supervisor would wait for a start forever.
            asyncio.get_running_loop().create_task(self._undo_spawn(c, bundle, spawn, plug))
            raise
        except BaseException:
            if plug is not None:  # let it land: the caller's unmount releases it all
                await asyncio.gather(plug, return_exceptions=True)
            raise
        if plug is not None:
            try:
                await asyncio.shield(plug)
            except asyncio.CancelledError:
                asyncio.get_running_loop().create_task(self._undo_spawn(c, bundle, spawn, plug))
                raise
            except BaseException:
                # undone here, not in the background: the caller releases the network and
                # may start again at once, which a late undo would tear down
                await self._undo_spawn(c, bundle, spawn, unmount=False)
                raise
        return bundle, res

    async def _undo_spawn(self, c: Container, bundle: str, spawn: asyncio.Future[SpawnResult],
                          plug: asyncio.Future[None] | None = None, *,
                          unmount: bool = True) -> None:
        """Kill and delete what a spawn made; ``unmount``: also release the rootfs and
        network (when nobody else will)."""
        if plug is not None:
            await asyncio.gather(plug, return_exceptions=True)
        try:
            await spawn
        except Exception:
            if unmount and c.state.status not in ("running", "paused"):
                await asyncio.to_thread(setup.unmount, self, c)
            return  # nothing else was made
        from ketch.engine.supervisor import SupervisorClient

        rt = self.runtime(c.runtime)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(rt.kill, c.id, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(SupervisorClient(bundle).await_exit(), 5)
        if os.path.exists(os.path.join(bundle, "sup.sock")):
            recovery.kill_supervisor(os.path.join(bundle, "sup.pid"))
        with contextlib.suppress(Exception):
            await asyncio.to_thread(rt.delete, c.id, force=True)
        if unmount and c.state.status not in ("running", "paused"):
            await asyncio.to_thread(setup.unmount, self, c)

    # Speculative spawn: `docker run` creates, then (a request or two later) starts. The
    # supervisor is forked and the container created meanwhile; start then only starts
    # it. Unused for PRESPAWN_TTL seconds, or invalidated (update, rm, daemon stop), it
    # is undone; a daemon killed meanwhile leaves it to recovery.collect_orphans.
    PRESPAWN_TTL = 5.0

    def prespawn(self, c: Container) -> None:
        if self.zygote is not None and not self.closing:
            task = asyncio.get_running_loop().create_task(self._prespawn(c, self.live(c.id)))
            self.prespawns.add(task)
            task.add_done_callback(self.prespawns.discard)

    async def _prespawn(self, c: Container, lv: _Live) -> None:
        from ketch.engine.supervisor import SupervisorClient

        async with lv.lock:
            try:
                current = self.store.get(c.id) is c
            except NotFound:
                current = False
            if (not current or c.state.status != "created" or lv.sup is not None
                    or lv.prespawned is not None or self.closing):
                return
            try:
                bundle, res = await self._spawn(c)
            except Exception as e:  # start will try again and report it
                log.debug("prespawn of %s failed: %s", c.short_id, e)
                await asyncio.to_thread(setup.unmount, self, c)
                return
            lv.prespawned = (bundle, res)
            log.debug("prespawned %s", c.short_id)
            lv.sup = SupervisorClient(bundle)
            lv.sup_ready.set()
            try:
                gone = self.store.get(c.id) is not c
            except NotFound:
                gone = True
            if gone or self.closing:  # removed, or the daemon stops, while it spawned
                await self._teardown_prespawn(c, lv)
                return
            lv.expire_task = asyncio.get_running_loop().create_task(
                self._expire_prespawn(c, lv))

    async def _expire_prespawn(self, c: Container, lv: _Live) -> None:
        await asyncio.sleep(self.PRESPAWN_TTL)
        async with lv.lock:
            lv.expire_task = None
            await self._teardown_prespawn(c, lv)

    async def drop_prespawn(self, c: Container) -> None:
        """Undo a speculative spawn (``update`` changes what the container was made with)."""
        lv = self.live(c.id)
        if c.state.status == "created":  # the lock: a spawn in flight lands first
            async with lv.lock:
                await self._teardown_prespawn(c, lv)

    async def _teardown_prespawn(self, c: Container, lv: _Live,
                                 pre: tuple[str, SpawnResult] | None = None) -> None:
        """Kill the created (never started) container, let its supervisor exit, delete
        the runtime state, unmount. Caller holds ``lv.lock``."""
        pre = pre or lv.prespawned
        if pre is None:
            return
        log.debug("undoing the prespawn of %s", c.short_id)
        lv.prespawned = None
        if lv.expire_task is not None and lv.expire_task is not asyncio.current_task():
            lv.expire_task.cancel()
        lv.expire_task = None
        sup, lv.sup = lv.sup, None
        lv.sup_ready.clear()
        rt = self.runtime(c.runtime)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(rt.kill, c.id, signal.SIGKILL)
        if sup is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sup.await_exit(), 5)
        if os.path.exists(os.path.join(pre[0], "sup.sock")):  # still there: no mercy
            recovery.kill_supervisor(os.path.join(pre[0], "sup.pid"))
        with contextlib.suppress(Exception):
            await asyncio.to_thread(rt.delete, c.id, force=True)
        await asyncio.to_thread(setup.unmount, self, c)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(pre[0], "exit.json"))

    def _start_failed(self, c: Container, lv: _Live, e: BaseException) -> None:
        """Record a failed start; release clients waiting on it (attach, wait), and
        remove an ``--rm`` container, as dockerd does."""
        c.state.error = str(e)
        c.state.exit_code = _exit_code_for(str(e))
        c.state.finished_at = now_rfc3339()
        self.save(c)
        lv.sup_ready.set()  # attach waiters see no supervisor and end
        lv.sup_ready.clear()
        result = {"StatusCode": c.state.exit_code, "Error": {"Message": c.state.error}}
        for fut in lv.exits:
            if not fut.done():
                fut.set_result(result)
        lv.exits.clear()
        if c.host_config.get("AutoRemove"):
            asyncio.get_running_loop().create_task(self._remove_quietly(c.id))

    async def _remove_quietly(self, cid: str) -> None:
        with contextlib.suppress(NotFound, Conflict):
            await self.remove(cid, force=True, volumes=True)

    # ---- exit, restart -----------------------------------------------------------

    async def monitor_exit(self, c: Container, lv: _Live, sup: SupervisorClient) -> None:
        try:
            ex = await sup.await_exit()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # supervisor vanished without a report
            got: dict[str, Any] | None = await asyncio.to_thread(sup.read_exit)
            ex = got or {
                "exit_code": 137, "finished_at": now_rfc3339(), "oom_killed": False,
                "error": f"supervisor lost: {e}"}
        await self.on_exit(c, lv, ex)

    async def on_exit(self, c: Container, lv: _Live, ex: Mapping[str, Any]) -> None:
        log.debug("container %s exited (%s)", c.short_id, ex.get("exit_code"))
        if lv.health_task is not None:
            lv.health_task.cancel()
            lv.health_task = None
        async with lv.lock:
            if self.store.get(c.id) is not c:
                return
            ran = time.time() - parse_rfc3339(c.state.started_at)
            c.state.status = "exited"
            c.state.pid = 0
            c.state.exit_code = int(ex.get("exit_code", 0))
            c.state.finished_at = ex.get("finished_at") or now_rfc3339()
            c.state.oom_killed = bool(ex.get("oom_killed"))
            c.state.error = ex.get("error") or ""
            if c.state.health is not None:
                c.state.health["Status"] = "unhealthy" if c.state.health.get("Status") == \
                    "unhealthy" else c.state.health.get("Status", "")
            lv.sup = None
            lv.sup_ready.clear()
            lv.monitor = None
            if not os.path.exists(os.path.join(self.bundle_dir(c), "sup.sock")):
                # The supervisor is gone; a holder (the C one) leaves the runtime's state
                # (cgroup, mounts) to us. A Python supervisor deleted it already.
                rt = self.runtime(c.runtime)
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(lambda: rt.delete(c.id, force=True))
            await asyncio.to_thread(setup.unmount, self, c)
            restart = not self.closing and not lv.stopping and should_restart(
                c.host_config.get("RestartPolicy") or {}, c.state.exit_code, c.restart_count,
                c.manually_stopped)
            if c.state.oom_killed:
                self._event(c, "oom")
            self._event(c, "die", exitCode=str(c.state.exit_code))
            if restart:
                c.state.status = "restarting"
            self.save(c)
            result = {"StatusCode": c.state.exit_code,
                      "Error": {"Message": c.state.error} if c.state.error else None}
            for fut in lv.exits:
                if not fut.done():
                    fut.set_result(result)
            lv.exits.clear()
        if restart:
            delay = lv.backoff.next(ran)
            lv.restart_task = asyncio.get_running_loop().create_task(
                self._restart_later(c, lv, delay))
        elif c.host_config.get("AutoRemove") and not self.closing:
            with contextlib.suppress(NotFound, Conflict):
                await self.remove(c.id, force=False, volumes=True)

    async def _restart_later(self, c: Container, lv: _Live, delay: float) -> None:
        await asyncio.sleep(delay)
        async with lv.lock:
            if self.store.get(c.id) is not c or c.state.status != "restarting" \
                    or c.manually_stopped:
                return
            c.restart_count += 1
            try:
                await self.start_locked(c, lv)
            except Exception as e:
                log.warning("restart of %s failed: %s", c.short_id, e)
                c.state.status = "exited"
                self.save(c)
                return

    # ---- stop, kill, wait ----------------------------------------------------------

    def _running(self, c: Container) -> None:
        if c.state.status not in ("running", "paused"):
            raise Conflict(f"container {c.id} is not running")

    async def kill(self, ref: str, sig: str | int | None = None) -> None:
        c = self.get(ref)
        signum = parse_signal(sig, signal.SIGKILL)
        if c.state.status == "restarting":
            await self._cancel_restart(c)
            return
        if c.state.status not in ("running", "paused"):
            raise Conflict(f"cannot kill container: {ref}: container {c.id} is not running")
        if signum in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            c.manually_stopped = True  # docker kill counts as a manual stop for restart
            self.save(c)
        await asyncio.to_thread(self.runtime(c.runtime).kill, c.id, signum)
        self._event(c, "kill", signal=str(signum))

    async def _cancel_restart(self, c: Container) -> None:
        lv = self.live(c.id)
        c.manually_stopped = True
        if lv.restart_task is not None:
            lv.restart_task.cancel()
            lv.restart_task = None
        async with lv.lock:
            if c.state.status == "restarting":
                c.state.status = "exited"
            self.save(c)

    async def stop(self, ref: str, sig: str | None = None, timeout: int | None = None) -> None:
        c = self.get(ref)
        if c.state.status == "restarting":
            await self._cancel_restart(c)
            return
        if c.state.status not in ("running", "paused"):
            raise NotModified("container already stopped")
        c.manually_stopped = True
        self.save(c)
        await self.stop_container(c, sig, timeout)
        self._event(c, "stop")

    async def stop_container(self, c: Container, sig: str | None, timeout: int | None) -> None:
        lv = self.live(c.id)
        signum = parse_signal(sig or c.config.get("StopSignal"), signal.SIGTERM)
        if timeout is None:
            timeout = c.config.get("StopTimeout")
        if timeout is None:
            timeout = 10
        rt = self.runtime(c.runtime)
        waiter = self._exit_future(c)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(rt.kill, c.id, signum)
            self._event(c, "kill", signal=str(signum))
        if c.state.status == "paused":
            with contextlib.suppress(Exception):
                await asyncio.to_thread(rt.resume, c.id)
        if timeout >= 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter), timeout)
                return
        if waiter.done():
            return
        with contextlib.suppress(Exception):
            await asyncio.to_thread(rt.kill, c.id, signal.SIGKILL)
            self._event(c, "kill", signal=str(int(signal.SIGKILL)))
        if lv.monitor is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter), 15)

    def _exit_future(self, c: Container) -> asyncio.Future[dict[str, Any]]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        lv = self.live(c.id)
        if lv.monitor is None and c.state.status not in ("running", "paused"):
            fut.set_result({"StatusCode": c.state.exit_code, "Error": None})
        else:
            lv.exits.append(fut)
        return fut

    async def wait(self, ref: str, condition: str = "not-running") -> dict[str, Any]:
        """Docker's wait: ``not-running`` (default), ``next-exit`` or ``removed``."""
        c = self.get(ref)
        lv = self.live(c.id)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]]
        if condition in ("", "not-running"):
            if c.state.status not in ("running", "paused", "restarting"):
                return {"StatusCode": c.state.exit_code, "Error": None}
            fut = loop.create_future()
            lv.exits.append(fut)
            return await fut
        if condition == "next-exit":
            fut = loop.create_future()
            lv.exits.append(fut)
            return await fut
        if condition == "removed":
            fut = loop.create_future()
            lv.removed.append(fut)
            return await fut
        raise InvalidArgument(f"invalid condition: {condition!r}")

    async def restart(self, ref: str, sig: str | None = None, timeout: int | None = None) -> None:
        c = self.get(ref)
        if c.state.status == "restarting":
            await self._cancel_restart(c)
        if c.state.status in ("running", "paused"):
            c.manually_stopped = True
            await self.stop_container(c, sig, timeout)
        lv = self.live(c.id)
        async with lv.lock:
            c.manually_stopped = False
            if c.state.status not in ("running", "paused"):
                await self.start_locked(c, lv)
        self._event(c, "restart")

    # ---- remove ------------------------------------------------------------------

    async def remove(self, ref: str, *, force: bool = False, volumes: bool = False) -> None:
        c = self.get(ref)
        lv = self.live(c.id)
        if c.state.status in ("running", "paused", "restarting"):
            if not force:
                state = "paused" if c.state.status == "paused" else "running"
                raise Conflict(f"cannot remove container \"{c.name}\": container is {state}: "
                               "stop the container before removing or force remove")
            if c.state.status == "restarting":
                await self._cancel_restart(c)
            else:
                c.manually_stopped = True
                waiter = self._exit_future(c)
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.runtime(c.runtime).kill, c.id, signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter, 15)
        async with lv.lock:
            if self.store.get(c.id) is not c:
                raise NotFound(f"No such container: {ref}")
            if c.state.status == "removing":
                raise Conflict(f"removal of container {c.id} is already in progress")
            await self._teardown_prespawn(c, lv)
            c.state.status = "removing"
            await asyncio.to_thread(self.remove_files, c, volumes, False)
            self.live_all.pop(c.id, None)
        self._event(c, "destroy")
        log.debug("container %s removed", c.short_id)
        for fut in lv.removed:
            if not fut.done():
                fut.set_result({"StatusCode": c.state.exit_code, "Error": None})
        # The writable layer and the directories go after the answer (docker run --rm
        # waits for it); a crash meanwhile leaves them to collect_orphans at the next start.
        await asyncio.to_thread(self.purge_files, c)

    def remove_files(self, c: Container, volumes: bool, purge: bool = True) -> None:
        """Everything that makes ``c`` exist: mounts, runtime state, record, volume holds
        (then, with ``purge``, its snapshot and directories too)."""
        setup.unmount(self, c)
        if not os.path.exists(os.path.join(self.bundle_dir(c), "sup.sock")):
            # The supervisor deletes the runtime's state; this only clears what a lost
            # supervisor left behind.
            with contextlib.suppress(Exception):
                self.runtime(c.runtime).delete(c.id, force=True)
        self.store.forget(c)
        self._release_volumes(c, volumes)
        if purge:
            self.purge_files(c)

    def purge_files(self, c: Container) -> None:
        with contextlib.suppress(NotFound, Conflict):
            self.snapshotter.remove(c.snapshot_key)
        shutil.rmtree(self.bundle_dir(c), ignore_errors=True)
        shutil.rmtree(self.store.dir(c.id), ignore_errors=True)

    async def restore(self) -> None:
        """See :func:`ketch.engine.containers.recovery.restore`."""
        await recovery.restore(self)

    async def shutdown(self) -> None:
        """See :func:`ketch.engine.containers.recovery.shutdown`."""
        await recovery.shutdown(self)


def has_healthcheck(c: Container) -> bool:
    hc = c.config.get("Healthcheck") or {}
    test = hc.get("Test") or []
    return bool(test) and test[0] != "NONE"


def _exit_code_for(message: str) -> int:
    """What ``docker run`` exits with for a start error (its CLI reads the same phrases)."""
    low = message.lower()
    if "executable file not found" in low or "no such file or directory" in low:
        return 127
    if "permission denied" in low:
        return 126
    return 128
