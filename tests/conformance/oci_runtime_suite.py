"""The conformance suite of the ``OCIRuntime`` seam.

Subclass ``OCIRuntimeSuite`` in a test module and provide two fixtures:

``runtime``
    an ``OCIRuntime`` with a private state root; the fixture removes every
    container left under that root afterwards (``delete(force=True)``), even when
    a test fails.
``bundle_factory``
    ``bundle_factory(args) -> path``: a fresh bundle whose process runs ``args``
    (no terminal, ``root.readonly`` false, busybox userland with ``/bin/sh``,
    ``sleep``, ``echo``, ``cat``, ``hostname``), ready for that runtime.

Every test uses its own container ids. The tests walk the lifecycle in the
Protocol's docstring; status changes that happen asynchronously (a process
exiting after a signal) are polled with a deadline, never timed.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ketch.errors import Conflict, FailedPrecondition, NotFound, NotImplementedYet
from ketch.runtime.oci_runtime import OCIRuntime, Stdio

__all__ = ["BundleFactory", "OCIRuntimeSuite", "Pipe", "new_id", "wait_status"]

BundleFactory = Callable[[list[str]], str]

DEADLINE = 10.0
SLEEPER = ["/bin/sleep", "1000"]
MiB = 1024 * 1024


def new_id() -> str:
    return f"conf-{uuid.uuid4().hex[:10]}"


def wait_status(runtime: OCIRuntime, cid: str, status: str, timeout: float = DEADLINE) -> None:
    """Poll ``state`` until ``status`` or fail with the last state seen."""
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = runtime.state(cid)
        if st["status"] == status:
            return
        time.sleep(0.02)
    raise AssertionError(f"{cid} never reached {status!r} in {timeout}s: {st}")


def quiet() -> Stdio:
    return Stdio(subprocess.DEVNULL, subprocess.DEVNULL, subprocess.DEVNULL)


def read_all(fd: int, timeout: float = DEADLINE) -> bytes:
    """Read ``fd`` to EOF, failing instead of hanging if the writer never closes it."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no EOF within {timeout}s; got {b''.join(chunks)!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            data = os.read(fd, 65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


class Pipe:
    """An os.pipe() whose ends are closed once each, whatever the test does."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()

    def close_write(self) -> None:
        # after handing ``w`` to the runtime: the container then holds the only
        # write end, so EOF on ``r`` means every container process closed it
        if self.w >= 0:
            os.close(self.w)
            self.w = -1

    def __enter__(self) -> Pipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_write()
        if self.r >= 0:
            os.close(self.r)
            self.r = -1


def process_for(bundle: str, args: list[str]) -> dict[str, Any]:
    """The bundle's own process object with other ``args`` (what ``docker exec`` builds)."""
    cfg = json.loads(Path(bundle, "config.json").read_text())
    proc: dict[str, Any] = dict(cfg["process"])
    proc["args"] = args
    proc["terminal"] = False
    return proc


def edit_config(bundle: str, change: Callable[[dict[str, Any]], None]) -> None:
    path = Path(bundle, "config.json")
    cfg = json.loads(path.read_text())
    change(cfg)
    path.write_text(json.dumps(cfg))


def memory_cgroup_file(pid: int) -> Path | None:
    """The host-side memory limit file of ``pid``'s cgroup (v1 or v2), if there is one."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            f = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.limit_in_bytes"
            if f.exists():
                return f
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        hier, _, path = line.split(":", 2)
        if hier == "0":
            f = Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.max"
            if f.exists():
                return f
    return None


class OCIRuntimeSuite:
    """What every ``OCIRuntime`` must do; subclass it with ``runtime`` and ``bundle_factory``."""

    # -- helpers --------------------------------------------------------------------

    def running(self, runtime: OCIRuntime, bundle_factory: BundleFactory,
                args: list[str] | None = None) -> tuple[str, str]:
        """Create and start a container running ``args`` (sleep); return (id, bundle)."""
        bundle = bundle_factory(args or SLEEPER)
        cid = new_id()
        runtime.create(cid, bundle, stdio=quiet())
        runtime.start(cid)
        return cid, bundle

    # -- lifecycle ------------------------------------------------------------------

    def test_create_start_kill_delete(self, runtime: OCIRuntime,
                                      bundle_factory: BundleFactory) -> None:
        bundle = bundle_factory(SLEEPER)
        cid = new_id()
        runtime.create(cid, bundle, stdio=quiet())
        st = runtime.state(cid)
        assert st["id"] == cid
        assert st["status"] == "created"
        assert st["pid"] > 0
        assert os.path.realpath(st["bundle"]) == os.path.realpath(bundle)
        assert os.path.exists(f"/proc/{st['pid']}")
        runtime.start(cid)
        assert runtime.state(cid)["status"] == "running"
        runtime.kill(cid, 9)
        wait_status(runtime, cid, "stopped")
        runtime.delete(cid)
        with pytest.raises(NotFound):
            runtime.state(cid)

    def test_create_pid_file_matches_state(self, runtime: OCIRuntime,
                                           bundle_factory: BundleFactory,
                                           tmp_path: Path) -> None:
        cid = new_id()
        runtime.create(cid, bundle_factory(SLEEPER), pid_file=str(tmp_path / "pid"),
                       stdio=quiet())
        assert int((tmp_path / "pid").read_text()) == runtime.state(cid)["pid"]

    def test_exit_stops_container(self, runtime: OCIRuntime,
                                  bundle_factory: BundleFactory) -> None:
        # the exit status itself is not part of the OCI state; only "stopped" is
        cid, _ = self.running(runtime, bundle_factory, ["/bin/sh", "-c", "exit 3"])
        wait_status(runtime, cid, "stopped")
        runtime.delete(cid)

    def test_init_is_pid1_and_sees_config_hostname(self, runtime: OCIRuntime,
                                                   bundle_factory: BundleFactory) -> None:
        bundle = bundle_factory(["/bin/sh", "-c", "echo $$; hostname"])
        edit_config(bundle, lambda c: c.update(hostname="conformance-box"))
        cid = new_id()
        with Pipe() as p:
            runtime.create(cid, bundle, stdio=Stdio(subprocess.DEVNULL, p.w, p.w))
            p.close_write()
            runtime.start(cid)
            out = read_all(p.r).decode()
        assert out.split() == ["1", "conformance-box"]
        wait_status(runtime, cid, "stopped")

    # -- errors ---------------------------------------------------------------------

    def test_create_with_id_in_use_conflicts(self, runtime: OCIRuntime,
                                             bundle_factory: BundleFactory) -> None:
        bundle = bundle_factory(SLEEPER)
        cid = new_id()
        runtime.create(cid, bundle, stdio=quiet())
        with pytest.raises(Conflict):
            runtime.create(cid, bundle_factory(SLEEPER), stdio=quiet())
        assert runtime.state(cid)["status"] == "created"

    @pytest.mark.parametrize("op", ["state", "kill", "delete", "start"])
    def test_unknown_id_is_not_found(self, runtime: OCIRuntime, op: str) -> None:
        call: dict[str, Callable[[str], object]] = {
            "state": runtime.state, "kill": lambda c: runtime.kill(c, 9),
            "delete": runtime.delete, "start": runtime.start}
        with pytest.raises(NotFound):
            call[op](new_id())

    def test_delete_running_needs_force(self, runtime: OCIRuntime,
                                        bundle_factory: BundleFactory) -> None:
        cid, _ = self.running(runtime, bundle_factory)
        with pytest.raises(FailedPrecondition):
            runtime.delete(cid)
        assert runtime.state(cid)["status"] == "running"
        runtime.delete(cid, force=True)
        with pytest.raises(NotFound):
            runtime.state(cid)

    # -- pause, ps, list ------------------------------------------------------------

    def test_pause_resume(self, runtime: OCIRuntime, bundle_factory: BundleFactory) -> None:
        cid, _ = self.running(runtime, bundle_factory)
        runtime.pause(cid)
        assert runtime.state(cid)["status"] == "paused"
        runtime.resume(cid)
        assert runtime.state(cid)["status"] == "running"

    def test_ps_includes_init(self, runtime: OCIRuntime, bundle_factory: BundleFactory) -> None:
        cid, _ = self.running(runtime, bundle_factory)
        assert runtime.state(cid)["pid"] in runtime.ps(cid)

    def test_list_contains_id(self, runtime: OCIRuntime, bundle_factory: BundleFactory) -> None:
        cid, _ = self.running(runtime, bundle_factory)
        listed = {c["id"]: c for c in runtime.list()}
        assert cid in listed
        assert listed[cid]["status"] == "running"

    # -- exec -----------------------------------------------------------------------

    def test_exec_output_and_status(self, runtime: OCIRuntime,
                                    bundle_factory: BundleFactory) -> None:
        cid, bundle = self.running(runtime, bundle_factory)
        with Pipe() as p:
            rc = runtime.exec(cid, process_for(bundle, ["/bin/echo", "hi"]),
                              stdio=Stdio(subprocess.DEVNULL, p.w, subprocess.DEVNULL))
            p.close_write()
            assert rc == 0
            assert read_all(p.r) == b"hi\n"

    def test_exec_failing_command_returns_its_status(self, runtime: OCIRuntime,
                                                     bundle_factory: BundleFactory) -> None:
        cid, bundle = self.running(runtime, bundle_factory)
        rc = runtime.exec(cid, process_for(bundle, ["/bin/sh", "-c", "exit 3"]), stdio=quiet())
        assert rc == 3

    def test_exec_detached_returns_live_pid(self, runtime: OCIRuntime,
                                            bundle_factory: BundleFactory) -> None:
        cid, bundle = self.running(runtime, bundle_factory)
        pid = runtime.exec(cid, process_for(bundle, SLEEPER), detach=True, stdio=quiet())
        assert pid > 0
        assert pid != runtime.state(cid)["pid"]
        # ketch's exec goes through a sealed trampoline that execs the program in turn:
        # right after the call, the pid may still show the trampoline's argv.
        deadline = time.monotonic() + 2
        while (Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] != b"/bin/sleep"
               and time.monotonic() < deadline):
            time.sleep(0.01)
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == b"/bin/sleep"
        assert pid in runtime.ps(cid)

    # -- resources ------------------------------------------------------------------

    def test_update_memory_limit(self, runtime: OCIRuntime, bundle_factory: BundleFactory) -> None:
        cid, bundle = self.running(runtime, bundle_factory)
        runtime.update(cid, {"memory": {"limit": 64 * MiB}})
        host_file = memory_cgroup_file(runtime.state(cid)["pid"])
        if host_file is not None:
            assert int(host_file.read_text()) == 64 * MiB
        # and from inside, when the container's cgroup filesystem shows the memory controller
        script = ("cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || "
                  "cat /sys/fs/cgroup/memory.max 2>/dev/null || echo none")
        with Pipe() as p:
            rc = runtime.exec(cid, process_for(bundle, ["/bin/sh", "-c", script]),
                              stdio=Stdio(subprocess.DEVNULL, p.w, subprocess.DEVNULL))
            p.close_write()
            inside = read_all(p.r).decode().strip()
        assert rc == 0
        if inside != "none":
            assert int(inside) == 64 * MiB

    def test_stats_has_memory_usage(self, runtime: OCIRuntime,
                                    bundle_factory: BundleFactory) -> None:
        cid, _ = self.running(runtime, bundle_factory)
        try:
            data = runtime.stats(cid)
        except NotImplementedYet as e:
            pytest.skip(f"{runtime.name} has no stats: {e}")
        assert data["memory"]["usage"]["usage"] > 0
