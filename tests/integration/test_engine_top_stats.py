"""docker top and docker stats figures for a real busybox container (ketch's runtime library)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ketch.engine.stats import docker_stats, system_cpu_usage, top
from ketch.errors import KetchError
from ketch.runtime.container import Runtime
from ketch.runtime.oci_runtime import Stdio

Run = Callable[[list[str]], str]


@pytest.fixture
def run_container(tmp_path: Path, make_bundle: Callable[..., str]) -> Iterator[tuple[Runtime, Run]]:
    """run(args) -> id of a running container; every one is force-deleted afterwards."""
    rt = Runtime(str(tmp_path / "state"))
    ids: list[str] = []

    def run(args: list[str]) -> str:
        cid = f"ts-{uuid.uuid4().hex[:10]}"
        ids.append(cid)
        rt.create(cid, make_bundle(args),
                  stdio=Stdio(subprocess.DEVNULL, subprocess.DEVNULL, subprocess.DEVNULL))
        rt.start(cid)
        return cid

    try:
        yield rt, run
    finally:
        for cid in ids:
            try:
                rt.delete(cid, force=True)
            except KetchError:
                pass


def test_top_lists_the_containers_sleep(run_container: tuple[Runtime, Run]) -> None:
    rt, run = run_container
    cid = run(["/bin/sleep", "1000"])
    pids = rt.ps(cid)
    assert pids == [rt.state(cid)["pid"]]
    out = top(pids)
    titles = out["Titles"]
    assert titles[1] == "PID" and titles[-1] == "CMD"
    assert [(row[1], row[-1]) for row in out["Processes"]] == [(str(pids[0]), "/bin/sleep 1000")]
    # other ps arguments, as `docker top <c> -o pid,comm`
    custom = top(pids, "-o pid,comm")
    assert custom == {"Titles": ["PID", "COMMAND"], "Processes": [[str(pids[0]), "sleep"]]}
    # the daemon's own processes are not the container's
    assert str(os.getpid()) not in {row[1] for row in top(pids, "-ef")["Processes"]}


def test_stats_show_memory_pids_and_cpu(run_container: tuple[Runtime, Run]) -> None:
    rt, run = run_container
    cid = run(["/bin/sh", "-c", "sleep 1000 & while :; do :; done"])
    deadline = time.monotonic() + 10
    while len(rt.ps(cid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    common: dict[str, Any] = {"name": "/busy", "id": cid, "num_cpus": os.cpu_count() or 1}
    first = docker_stats(rt.stats(cid), None, read_time=time.time_ns(), **common)
    time.sleep(0.5)
    second = docker_stats(rt.stats(cid), first, read_time=time.time_ns(), **common)

    assert second["pids_stats"]["current"] >= 2  # sh and its sleep
    mem = second["memory_stats"]
    assert mem["usage"] > 0 and 0 < mem["limit"] <= os.sysconf("SC_PHYS_PAGES") * os.sysconf(
        "SC_PAGE_SIZE")
    assert mem["stats"]  # memory.stat passed through

    cpu, pre = second["cpu_stats"], second["precpu_stats"]
    assert pre == first["cpu_stats"]
    cpu_delta = cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
    system_delta = cpu["system_cpu_usage"] - pre["system_cpu_usage"]
    assert cpu_delta > 0 and system_delta > 0
    assert pre["system_cpu_usage"] <= system_cpu_usage()
    # the docker CLI's CPU %: a shell spinning on one core shows well above 0 and at most
    # one core's worth (with slack for the two clocks not being read at the same instant)
    percent = cpu_delta / system_delta * cpu["online_cpus"] * 100
    assert 20 < percent < 150, percent
