"""Healthchecks: run the image's or the container's HEALTHCHECK as an exec, keep the result.

Docker's semantics: the first check runs one interval after start (``StartInterval``
during the start period); a check passes on exit 0; ``Retries`` consecutive failures
make the container ``unhealthy``; failures during ``StartPeriod`` do not count; a
check running longer than ``Timeout`` is killed and fails. The last five results
are kept in ``State.Health.Log``; every status change is an event
``health_status: <status>``.

ketch's addition (Docker lacks it): the label ``ketch.health.on-failure`` set to
``restart``, ``stop`` or ``kill`` acts on a container that became unhealthy
(Podman's ``--health-on-failure``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from ketch.engine.containers.model import Container, now_rfc3339

if TYPE_CHECKING:
    from ketch.engine.containers.service import ContainerService, _Live

__all__ = ["ON_FAILURE_LABEL", "run_health"]

log = logging.getLogger(__name__)

ON_FAILURE_LABEL = "ketch.health.on-failure"
_NS = 1_000_000_000
_MAX_OUTPUT = 4096


def _seconds(v: Any, default: float) -> float:
    return v / _NS if isinstance(v, int) and v > 0 else default


def _command(test: list[str]) -> list[str] | None:
    if not test or test[0] == "NONE":
        return None
    if test[0] == "CMD":
        return test[1:]
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(test[1:])]
    return list(test)  # old clients send the command alone


async def _check(svc: ContainerService, c: Container, lv: _Live, cmd: list[str],
                 timeout: float, n: int) -> tuple[int, str]:
    import json

    sup = lv.sup
    if sup is None:
        return -1, "container is not running"
    with open(os.path.join(svc.bundle_dir(c), "config.json"), "rb") as f:
        proc = dict(json.load(f)["process"])
    proc["args"] = cmd
    proc["terminal"] = False
    exec_id = f"health-{c.id[:12]}-{n}"
    pid, sr, sw = await sup.open_exec(exec_id, proc, False, True, True, [], zygote=svc.zygote)
    out = bytearray()

    async def read_all() -> None:
        while chunk := await sr.read(65536):
            out.extend(chunk)

    try:
        await asyncio.wait_for(read_all(), timeout)
    except TimeoutError:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        sw.close()
        return -1, f"Health check exceeded timeout ({timeout:g}s)"
    sw.close()
    st = await asyncio.to_thread(sup.exec_state, exec_id)
    code = st.get("exit_code")
    from ketch.engine.supervisor.protocol import FrameDecoder

    text = b"".join(data for _, data in FrameDecoder().feed(bytes(out))).decode(
        "utf-8", "replace")
    return (code if isinstance(code, int) else -1), text[:_MAX_OUTPUT]


async def run_health(svc: ContainerService, c: Container, lv: _Live) -> None:
    hc = c.config.get("Healthcheck") or {}
    cmd = _command(list(hc.get("Test") or []))
    if cmd is None:
        return
    interval = _seconds(hc.get("Interval"), 30.0)
    timeout = _seconds(hc.get("Timeout"), 30.0)
    retries = hc.get("Retries") or 3
    start_period = _seconds(hc.get("StartPeriod"), 0.0)
    start_interval = _seconds(hc.get("StartInterval"), 5.0)
    started = time.monotonic()
    n = 0
    while True:
        in_start = time.monotonic() - started < start_period
        await asyncio.sleep(start_interval if in_start and hc.get("StartInterval")
                            else interval)
        if c.state.status != "running" or lv.sup is None:
            if c.state.status == "paused":
                continue
            return
        n += 1
        begin = now_rfc3339()
        try:
            code, output = await _check(svc, c, lv, cmd, timeout, n)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            code, output = -1, str(e)
        health = c.state.health or {"Status": "starting", "FailingStreak": 0, "Log": []}
        health.setdefault("Log", []).append({"Start": begin, "End": now_rfc3339(),
                                             "ExitCode": code, "Output": output})
        health["Log"] = health["Log"][-5:]
        old = health.get("Status")
        in_start = time.monotonic() - started < start_period
        if code == 0:
            health["Status"] = "healthy"
            health["FailingStreak"] = 0
        elif not in_start:
            health["FailingStreak"] = health.get("FailingStreak", 0) + 1
            if health["FailingStreak"] >= retries:
                health["Status"] = "unhealthy"
        c.state.health = health
        svc.store.save(c)
        if health["Status"] != old:
            svc._event(c, f"health_status: {health['Status']}")
            if health["Status"] == "unhealthy":
                action = (c.config.get("Labels") or {}).get(ON_FAILURE_LABEL, "none")
                if action in ("restart", "stop", "kill"):
                    log.info("container %s unhealthy: %s (label %s)", c.short_id, action,
                             ON_FAILURE_LABEL)
                    asyncio.get_running_loop().create_task(_act(svc, c, action))
                    if action != "restart":
                        return


async def _act(svc: ContainerService, c: Container, action: str) -> None:
    try:
        if action == "restart":
            await svc.restart(c.id)
        elif action == "stop":
            await svc.stop(c.id)
        else:
            await svc.kill(c.id, "KILL")
    except Exception as e:
        log.warning("health on-failure %s of %s failed: %s", action, c.short_id, e)
