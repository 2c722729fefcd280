"""Supervisors and their zygote, driving real busybox containers (root).

Each test gets a private runtime root, bundles and state dirs under its tmp dir;
the ``box`` fixture force-deletes every container it made and waits for (or, as
a last resort, kills) every supervisor it started. The ``zygote`` fixture runs
every test twice: with the C holder taking over after ``start`` (built into a tmp
dir when ``.venv/libexec/ketch-holder`` is missing or stale), and with
``KETCH_HOLDER=none`` (the Python supervisor throughout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ketch.engine.logs.jsonfile import JSONFileLogDriver, JSONFileOptions, JSONFileReader
from ketch.engine.supervisor import (
    FrameDecoder,
    SpawnRequest,
    SpawnResult,
    SupervisorClient,
    ZygoteHandle,
    exec_socket_path,
    make_runtime,
    start_zygote,
    supervisor_pss_kib,
)
from ketch.errors import FailedPrecondition, InvalidArgument, KetchError, NotFound
from ketch.runtime.busybox import make_bundle, make_rootfs
from ketch.runtime.state import proc_start_time

RUNC = "/usr/sbin/runc"
REPO = Path(__file__).resolve().parents[2]
HOLDER_C = REPO / "src/ketch/engine/supervisor/holder.c"


@pytest.fixture(scope="module")
def holder_bin(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The holder binary: bootstrap's, or compiled here when that is missing or stale."""
    built = Path(sys.prefix, "libexec", "ketch-holder")
    if built.exists() and built.stat().st_mtime >= HOLDER_C.stat().st_mtime:
        return str(built)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no ketch-holder built and no C compiler to build one")
    out = tmp_path_factory.mktemp("holder") / "ketch-holder"
    subprocess.run([cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out),
                    str(HOLDER_C)], check=True)
    return str(out)


@pytest.fixture(scope="module", params=["holder", "python"])
def zygote(request: pytest.FixtureRequest) -> Iterator[ZygoteHandle]:
    """A zygote whose supervisors exec the C holder at start, or stay Python."""
    holder = request.getfixturevalue("holder_bin") if request.param == "holder" else "none"
    old = os.environ.get("KETCH_HOLDER")
    os.environ["KETCH_HOLDER"] = holder  # the zygote's environment is fixed at its fork
    try:
        z = start_zygote()
    finally:
        if old is None:
            del os.environ["KETCH_HOLDER"]
        else:
            os.environ["KETCH_HOLDER"] = old
    z.holder = None if holder == "none" else holder  # type: ignore[attr-defined]
    try:
        yield z
    finally:
        z.close()


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc_start_time(pid) is None:
            return True
        time.sleep(0.02)
    return False


class Box:
    """Builds spawn requests under one tmp dir and cleans up after them."""

    def __init__(self, tmp: Path, zygote: ZygoteHandle, runtime: str = "ketch") -> None:
        self.tmp, self.zygote = tmp, zygote
        if runtime == "ketch":
            self.runtime: dict[str, Any] = {"name": "ketch", "root": str(tmp / "rt")}
        else:
            self.runtime = {"name": runtime, "path": RUNC, "root": str(tmp / "rt")}
        self.rt = make_runtime(self.runtime)
        self.holder: str | None = getattr(zygote, "holder", None)
        self.ids: list[str] = []
        self.sups: list[int] = []
        self.n = 0

    def request(self, args: list[str], *, tty: bool = False, open_stdin: bool = False,
                stdin_once: bool = False, rootfs: str | None = None,
                log_opts: dict[str, str] | None = None) -> SpawnRequest:
        self.n += 1
        cid = f"t-{uuid.uuid4().hex[:10]}"
        bundle = make_bundle(str(self.tmp / f"b{self.n}"), args, terminal=tty, rootfs=rootfs)
        self.ids.append(cid)
        return SpawnRequest(id=cid, bundle=bundle, state_dir=str(self.tmp / f"s{self.n}"),
                            runtime=self.runtime, open_stdin=open_stdin, stdin_once=stdin_once,
                            log={"driver": "json-file", "path": str(self.tmp / f"l{self.n}.log"),
                                 "opts": log_opts or {}})

    def spawn(self, req: SpawnRequest) -> tuple[SpawnResult, SupervisorClient]:
        res = self.zygote.spawn(req)
        self.sups.append(res.supervisor_pid)
        return res, SupervisorClient(req.state_dir)

    def deleted_by_daemon(self, cid: str) -> None:
        """What ketchd's ``on_exit`` does once the supervisor is gone: a holder leaves
        the runtime's state to it, the Python supervisor deletes it itself."""
        if self.holder is not None:
            assert box_state(self, cid) == "stopped"
            self.rt.delete(cid, force=True)
        with pytest.raises(NotFound):
            self.rt.state(cid)

    def cleanup(self) -> None:
        # Kill, and let each supervisor delete its container (a concurrent delete of
        # the same container from here would race with it); delete what is left.
        for cid in self.ids:
            try:
                self.rt.kill(cid, signal.SIGKILL)
            except (KetchError, OSError):
                pass
        stuck = [pid for pid in self.sups if not _gone(pid, 10)]
        for pid in stuck:
            os.kill(pid, signal.SIGKILL)
        for cid in self.ids:
            try:
                self.rt.delete(cid, force=True)
            except (KetchError, OSError):
                pass
        assert not stuck, f"supervisors outlived their containers: {stuck}"


@pytest.fixture(params=["ketch"])
def box(request: pytest.FixtureRequest, tmp_path: Path, zygote: ZygoteHandle) -> Iterator[Box]:
    b = Box(tmp_path, zygote, request.param)
    try:
        yield b
    finally:
        b.cleanup()


def box_state(box: Box, cid: str) -> str:
    status: str = box.rt.state(cid)["status"]
    return status


def _process(req: SpawnRequest, args: list[str], terminal: bool = False) -> dict[str, Any]:
    """An OCI process object for exec: the container's own, with other args."""
    cfg = json.loads(Path(req.bundle, "config.json").read_text())
    return dict(cfg["process"], args=args, terminal=terminal)


async def _read_all(reader: asyncio.StreamReader, timeout: float = 15) -> bytes:
    return await asyncio.wait_for(reader.read(), timeout)


async def _read_until(reader: asyncio.StreamReader, marker: bytes, timeout: float = 15) -> bytes:
    buf = b""
    while marker not in buf:
        chunk = await asyncio.wait_for(reader.read(4096), timeout)
        if not chunk:
            raise AssertionError(f"stream ended before {marker!r}: {buf!r}")
        buf += chunk
    return buf


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, BrokenPipeError):
        pass


def _streams(data: bytes) -> dict[int, bytes]:
    dec = FrameDecoder()
    out: dict[int, bytes] = {1: b"", 2: b""}
    for stream, payload in dec.feed(data):
        out[stream] += payload
    assert dec.pending == 0
    return out


# ---- tests --------------------------------------------------------------------------------

@pytest.mark.parametrize("box", ["ketch", "runc"], indirect=True)
def test_attach_frames_log_and_exit_code(box: Box) -> None:
    if box.runtime["name"] == "runc" and not os.path.exists(RUNC):
        pytest.skip("runc not installed")
    req = box.request(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
    res, client = box.spawn(req)
    assert client.state() == {"status": "created", "pid": res.init_pid, "exit": None}
    assert int(Path(req.state_dir, "init.pid").read_text()) == res.init_pid
    assert int(Path(req.state_dir, "sup.pid").read_text()) == res.supervisor_pid
    assert Path(req.state_dir, "sup.sock").stat().st_mode & 0o777 == 0o600

    async def run() -> bytes:
        reader, writer = await client.open_attach(False, True, True, [])
        await asyncio.to_thread(client.start)
        data = await _read_all(reader)
        await _close(writer)
        return data

    assert _streams(asyncio.run(run())) == {1: b"out\n", 2: b"err\n"}
    exited = client.wait(timeout=15)
    assert exited["exit_code"] == 3 and exited["oom_killed"] is False
    assert exited["error"] is None and exited["finished_at"].endswith("Z")
    assert json.loads(Path(req.state_dir, "exit.json").read_text()) == exited
    assert _gone(res.supervisor_pid, 10)
    assert not Path(req.state_dir, "sup.sock").exists()
    # after the supervisor: answers come from exit.json
    assert client.state()["status"] == "exited" and client.wait() == exited
    with pytest.raises(KetchError, match="exited"):
        client.start()
    entries = [json.loads(line) for line in Path(req.log["path"]).read_text().splitlines()]
    assert [(e["stream"], e["log"]) for e in entries] == [("stdout", "out\n"), ("stderr", "err\n")]
    read = [(e.stream, e.data) for e in JSONFileReader(req.log["path"]).read()]
    assert read == [("stdout", b"out\n"), ("stderr", b"err\n")]
    box.deleted_by_daemon(req.id)


def test_tty_attach_stdin_resize_and_exit(box: Box) -> None:
    req = box.request(["/bin/sh"], tty=True, open_stdin=True)
    _res, client = box.spawn(req)

    async def run() -> tuple[bytes, bytes, bytes]:
        reader, writer = await client.open_attach(True, True, True, [16, 17])
        await asyncio.to_thread(client.start)
        writer.write(b"stty size; echo m-$((40+1))\n")
        before = await _read_until(reader, b"m-41")
        await asyncio.to_thread(client.resize, 33, 101)
        writer.write(b"stty size; echo m-$((40+2))\n")
        after = await _read_until(reader, b"m-42")
        writer.write(b"echo hi; exit 5\n")
        rest = await _read_all(reader)
        await _close(writer)
        return before, after, rest

    before, after, rest = asyncio.run(run())
    assert b"33 101" not in before and b"33 101\r\n" in after
    assert b"\r\nhi\r\n" in rest  # raw terminal output, no frames
    assert client.wait(timeout=15)["exit_code"] == 5
    logged = [json.loads(line) for line in Path(req.log["path"]).read_text().splitlines()]
    assert {e["stream"] for e in logged} == {"stdout"}
    assert "hi\r\n" in [e["log"] for e in logged]


def test_detach_keys_close_attach_but_not_container(box: Box) -> None:
    req = box.request(["/bin/cat"], open_stdin=True)
    _res, client = box.spawn(req)

    async def run() -> tuple[bytes, bytes, bytes]:
        reader, writer = await client.open_attach(True, True, False, [16, 17])
        await asyncio.to_thread(client.start)
        writer.write(b"hello\n")
        first = await _read_until(reader, b"hello\n")
        writer.write(b"a\x10b\n")  # a broken-off sequence is forwarded
        second = await _read_until(reader, b"b\n")
        writer.write(b"\x10\x11never\n")  # detach: swallowed, and the stream ends
        tail = await _read_all(reader)
        await _close(writer)
        return first, second, tail

    first, second, tail = asyncio.run(run())
    assert _streams(first)[1] == b"hello\n" and _streams(second)[1] == b"a\x10b\n"
    assert tail == b""
    assert client.state()["status"] == "running"

    async def again() -> bytes:
        reader, writer = await client.open_attach(True, True, False, [16, 17])
        writer.write(b"again\n")
        data = await _read_until(reader, b"again\n")
        await _close(writer)
        return data

    assert _streams(asyncio.run(again()))[1] == b"again\n"
    box.rt.kill(req.id, signal.SIGKILL)
    assert client.wait(timeout=15)["exit_code"] == 137
    log = Path(req.log["path"]).read_text()
    assert "never" not in log and "again" in log


def test_stdin_once_closes_container_stdin_on_eof(box: Box) -> None:
    req = box.request(["/bin/sh", "-c", "cat; echo done"], open_stdin=True, stdin_once=True)
    _res, client = box.spawn(req)

    async def run() -> bytes:
        reader, writer = await client.open_attach(True, True, True, [])
        await asyncio.to_thread(client.start)
        writer.write(b"abc\n")
        await writer.drain()
        writer.write_eof()
        data = await _read_all(reader)
        await _close(writer)
        return data

    assert _streams(asyncio.run(run()))[1] == b"abc\ndone\n"
    assert client.wait(timeout=15)["exit_code"] == 0


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_supervisor_survives_daemon_and_zygote(box: Box, how: str) -> None:
    req = box.request(["/bin/sleep", "1000"])
    script = (
        "import json, sys\n"
        "from ketch.engine.supervisor import SpawnRequest, start_zygote\n"
        "z = start_zygote()\n"
        "r = z.spawn(SpawnRequest.from_json(sys.argv[1]))\n"
        "print(json.dumps([r.supervisor_pid, r.init_pid, z.pid]), flush=True)\n"
        "if sys.argv[2] == 'exit':\n"
        "    z.close()\n"
        "    sys.exit(0)\n"
        "sys.stdin.read()\n")
    env = dict(os.environ, KETCH_HOLDER=box.holder or "none")
    with subprocess.Popen([sys.executable, "-c", script, req.to_json().decode(), how],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO,
                          env=env) as daemon:
        try:
            sup, init, zpid = json.loads(daemon.stdout.readline())  # type: ignore[union-attr]
            box.sups.append(sup)
            if how == "sigkill":
                daemon.kill()
            daemon.wait(timeout=15)
        finally:
            if daemon.poll() is None:
                daemon.kill()
    assert _gone(zpid, 10), "the zygote outlived its daemon"
    assert proc_start_time(sup) is not None and proc_start_time(init) is not None
    os.kill(sup, signal.SIGTERM)  # ignored: containers are stopped through the runtime
    time.sleep(0.1)
    assert proc_start_time(sup) is not None

    client = SupervisorClient(req.state_dir)  # as a restarted daemon would
    assert client.state()["status"] == "created"
    client.start()
    assert client.state() == {"status": "running", "pid": init, "exit": None}
    with pytest.raises(FailedPrecondition, match="already started"):
        client.start()
    assert _exe(sup) == (box.holder or os.path.realpath(sys.executable))
    box.rt.kill(req.id, signal.SIGKILL)
    assert client.wait(timeout=15)["exit_code"] == 137
    assert _gone(sup, 10)


@pytest.mark.parametrize("box", ["ketch", "runc"], indirect=True)
def test_exec_output_and_exit_code(box: Box) -> None:
    if box.runtime["name"] == "runc" and not os.path.exists(RUNC):
        pytest.skip("runc not installed")
    req = box.request(["/bin/sleep", "1000"])
    _res, client = box.spawn(req)
    proc = _process(req, ["/bin/sh", "-c", "echo x; echo y >&2; exit 4"])

    async def early() -> None:
        _pid, _reader, writer = await client.open_exec("e0", proc, False, True, True, [],
                                                    zygote=box.zygote)
        await _close(writer)

    with pytest.raises(FailedPrecondition):  # not started yet
        asyncio.run(early())
    client.start()

    async def run() -> tuple[int, bytes]:
        pid, reader, writer = await client.open_exec("e1", proc, False, True, True, [],
                                                    zygote=box.zygote)
        data = await _read_all(reader)
        await _close(writer)
        return pid, data

    pid, data = asyncio.run(run())
    assert _streams(data) == {1: b"x\n", 2: b"y\n"}
    assert not Path(exec_socket_path(req.state_dir, "e1")).exists()
    assert client.exec_state("e1") == {"running": False, "pid": pid, "exit_code": 4}
    assert json.loads(Path(req.state_dir, "execs", "e1.json").read_text()) == {
        "pid": pid, "running": False, "exit_code": 4}
    with pytest.raises(NotFound):
        client.exec_state("nope")

    async def dup() -> None:
        _pid, _reader, writer = await client.open_exec("e1", proc, False, True, True, [],
                                                    zygote=box.zygote)
        await _close(writer)

    with pytest.raises(KetchError, match="already exists"):
        asyncio.run(dup())
    assert Path(req.log["path"]).read_text() == ""  # exec output is not logged
    box.rt.kill(req.id, signal.SIGKILL)
    assert client.wait(timeout=15)["exit_code"] == 137


def test_exec_with_terminal(box: Box) -> None:
    req = box.request(["/bin/sleep", "1000"])
    _res, client = box.spawn(req)
    client.start()
    proc = _process(req, ["/bin/sh"], terminal=True)

    async def run() -> bytes:
        pid, reader, writer = await client.open_exec("t1", proc, True, True, False, [],
                                                   zygote=box.zygote)
        assert _comm(_ppid(pid)) == "kexec-t1"  # its own exec supervisor reaps it
        assert client.exec_state("t1") == {"running": True, "pid": pid, "exit_code": None}
        await asyncio.to_thread(client.resize, 21, 61, "t1")
        writer.write(b"tty; stty size; exit 2\n")
        data = await _read_all(reader)
        await _close(writer)
        return data

    out = asyncio.run(run())
    assert b"/dev/pts/" in out and b"21 61\r\n" in out
    assert client.exec_state("t1")["exit_code"] == 2
    with pytest.raises(FailedPrecondition, match="no terminal"):
        client.resize(10, 10)  # the container itself has none
    box.rt.kill(req.id, signal.SIGKILL)
    client.wait(timeout=15)


def test_killed_by_signal_and_runtime_cleanup(box: Box) -> None:
    req = box.request(["/bin/sh", "-c", "trap 'exit 9' USR1; while :; do sleep 0.05; done"])
    res, client = box.spawn(req)
    client.start()
    box.rt.kill(req.id, signal.SIGTERM)  # pid 1 without a TERM handler: ignored
    time.sleep(0.2)
    assert client.state()["status"] == "running"
    box.rt.kill(req.id, signal.SIGUSR1)
    assert client.wait(timeout=15)["exit_code"] == 9

    req2 = box.request(["/bin/sleep", "1000"])
    res2, client2 = box.spawn(req2)
    client2.start()
    box.rt.kill(req2.id, signal.SIGKILL)
    assert client2.wait(timeout=15)["exit_code"] == 137
    for r in (res, res2):
        assert _gone(r.supervisor_pid, 10)
    for r2 in (req, req2):
        box.deleted_by_daemon(r2.id)
    assert box.rt.list() == []


def _spares(zygote: ZygoteHandle, wait: float = 5) -> list[int]:
    """The zygote's waiting spares (waiting up to ``wait`` s for one: after start-up
    or a spawn the zygote forks it a moment later)."""
    deadline = time.monotonic() + wait
    while True:
        kids = Path(f"/proc/{zygote.pid}/task/{zygote.pid}/children").read_text().split()
        found = []
        for p in kids:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{p}/comm").read_text().strip() == "ketch-spare":
                    found.append(int(p))
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def test_spares_serve_bursts_and_retire_when_idle(tmp_path: Path) -> None:
    z = start_zygote(spare_idle=0.5)
    box = Box(tmp_path, z)
    try:
        assert _spares(z, wait=0.3) == []  # none before the first request
        _res, client = box.spawn(box.request(["/bin/sleep", "1000"]))
        spares = _spares(z)
        assert len(spares) == 1  # forked after the reply, for the next of a burst
        res2, _ = box.spawn(box.request(["/bin/sleep", "1000"]))
        assert res2.supervisor_pid == spares[0]  # it took the request
        after = _spares(z)
        assert len(after) == 1 and after != spares  # and the next one is waiting
        os.kill(after[0], signal.SIGKILL)
        assert _gone(after[0], 5)
        # no spare to hand to: the zygote forks for the request, and a new spare follows
        req3 = box.request(["/bin/sleep", "1000"])
        res3, client3 = box.spawn(req3)
        client3.start()
        assert client3.state()["status"] == "running"
        assert res3.supervisor_pid != after[0]
        last = _spares(z)
        assert len(last) == 1
        # left waiting past spare_idle, it is retired; a request still gets a supervisor
        assert _gone(last[0], 5)
        assert _spares(z, wait=0.3) == []
        res4, client4 = box.spawn(box.request(["/bin/sleep", "1000"]))
        assert res4.supervisor_pid not in (*spares, *after, *last)
        assert client4.state()["status"] == "created"
        assert client.state()["status"] == "created"
    finally:
        box.cleanup()
        z.close()


def test_create_failure_leaves_nothing(box: Box) -> None:
    req = box.request(["/no/such/program"])
    with pytest.raises(KetchError, match="/no/such/program") as err:
        box.spawn(req)
    assert isinstance(err.value, (InvalidArgument, NotFound, FailedPrecondition))
    assert not Path(req.state_dir).exists()
    assert not Path(req.log["path"]).exists()
    assert box.rt.list() == []
    comm = f"ksup-{req.id[:10]}"
    deadline = time.monotonic() + 10
    while [p for p in os.listdir("/proc") if p.isdigit() and _comm(int(p)) == comm]:
        assert time.monotonic() < deadline, "a supervisor outlived a failed create"
        time.sleep(0.02)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_bad_requests(box: Box, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        SpawnRequest(id="bad/id", bundle="/x", state_dir="/y", runtime=box.runtime)
    with pytest.raises(InvalidArgument, match="log opt"):
        SpawnRequest(id="x", bundle="/x", state_dir="/y", runtime=box.runtime,
                     log={"driver": "json-file", "path": "/l", "opts": {"nope": "1"}})
    with pytest.raises(NotFound, match="no supervisor"):
        SupervisorClient(str(tmp_path / "nothing-here")).state()


def test_memory_of_idle_supervisors(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    """Prints the PSS of one and of ten idle supervisors (no assertion on the figure)."""
    rootfs = str(box.tmp / "rootfs")
    make_rootfs(rootfs)
    sups: list[int] = []
    figures: dict[int, list[int]] = {}
    for _ in range(10):
        req = box.request(["/bin/sleep", "1000"], rootfs=rootfs)
        res, client = box.spawn(req)
        client.start()
        sups.append(res.supervisor_pid)
        if len(sups) in (1, 10):
            time.sleep(0.3)
            figures[len(sups)] = [supervisor_pss_kib(p) for p in sups]
    assert all(v > 0 for vs in figures.values() for v in vs)
    with capsys.disabled():
        for n, vs in figures.items():
            print(f"\nsupervisor PSS with {n} idle: mean {sum(vs) / len(vs):.0f} KiB "
                  f"(min {min(vs)}, max {max(vs)}); "
                  f"zygote {supervisor_pss_kib(box.zygote.pid)} KiB")


# ---- the holder ---------------------------------------------------------------------------

def _exe(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/exe")


def _ppid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def test_holder_takes_over_keeps_init_and_clients(box: Box) -> None:
    req = box.request(["/bin/sh", "-c", "read x; echo got-$x; exit 7"], open_stdin=True)
    res, client = box.spawn(req)
    sup = res.supervisor_pid
    python_exe = _exe(sup)
    assert _ppid(res.init_pid) == sup

    async def run() -> tuple[bytes, dict[str, Any]]:
        # an attach and a wait connected before start travel through the handover
        waiter = asyncio.create_task(asyncio.to_thread(client.wait, 15))
        reader, writer = await client.open_attach(True, True, True, [16, 17])
        await asyncio.sleep(0.1)
        await asyncio.to_thread(client.start)
        deadline = time.monotonic() + 5
        while box.holder is not None and _exe(sup) != box.holder:
            assert time.monotonic() < deadline, "the supervisor did not exec the holder"
            await asyncio.sleep(0.01)
        assert _ppid(res.init_pid) == sup  # same pid, still the init's parent
        assert _comm(sup) == f"ksup-{req.id[:10]}"
        leaked = [os.readlink(f"/proc/{sup}/fd/{n}") for n in os.listdir(f"/proc/{sup}/fd")]
        assert not [x for x in leaked if "memfd" in x]
        assert client.state() == {"status": "running", "pid": res.init_pid, "exit": None}
        writer.write(b"abc\n")
        data = await _read_all(reader)
        await _close(writer)
        return data, await waiter

    data, exited = asyncio.run(run())
    assert _streams(data) == {1: b"got-abc\n", 2: b""}
    assert exited["exit_code"] == 7 and client.wait() == exited
    assert _gone(sup, 10)
    assert python_exe == os.path.realpath(sys.executable)
    assert not Path(req.state_dir, "sup.sock").exists()
    assert not Path(req.state_dir, "sup.log").exists()  # nothing went wrong
    box.deleted_by_daemon(req.id)


@pytest.mark.parametrize("compress", [False, True])
def test_log_rotation_read_back(box: Box, compress: bool) -> None:
    opts = {"max-size": "1k", "max-file": "3", **({"compress": "true"} if compress else {})}
    req = box.request(["/bin/sh", "-c", "i=0; while [ $i -lt 300 ]; do echo line-$i; "
                       "i=$((i+1)); done"], log_opts=opts)
    _res, client = box.spawn(req)
    client.start()
    assert client.wait(timeout=15)["exit_code"] == 0
    path = req.log["path"]
    rotated = [f"{path}.{i}{'.gz' if compress else ''}" for i in (1, 2)]
    assert all(os.path.exists(p) for p in rotated) and not os.path.exists(f"{path}.3")
    if compress:
        assert all(Path(p).read_bytes()[:2] == b"\x1f\x8b" for p in rotated)
    assert all(os.path.getsize(p) <= 1024 for p in (path, *([] if compress else rotated)))
    got = [e.data for e in JSONFileReader(path, max_files=3).read()]
    assert 20 < len(got) < 300
    assert got == [f"line-{i}\n".encode() for i in range(300 - len(got), 300)]


def test_log_bytes_identical_to_python_writer(box: Box) -> None:
    """Control characters, HTML characters, U+2028/9, invalid UTF-8, a line over 16 KiB
    and an unterminated last line: the same bytes as ketch.engine.logs.jsonfile writes."""
    payload = (bytes(range(32)) + b'"\\<>&\x7f/' + "é€😀\u2028\u2029\n".encode()
               + b"\xff\xfe\xc3\x28\xe2\x82\x28\xed\xa0\x80\xf0\x9f\x98\xc0\xaf\xf4\x90\x80\x80\n"
               + b"".join(b"%05d," % i for i in range(7000)) + b"\xe2\x82\xac\n"
               + b"no newline at the end \xe2\x82")
    rootfs = box.tmp / "rootfs"
    make_rootfs(str(rootfs))
    (rootfs / "payload").write_bytes(payload)
    req = box.request(["/bin/cat", "/payload"], rootfs=str(rootfs))
    _res, client = box.spawn(req)
    client.start()
    assert client.wait(timeout=15)["exit_code"] == 0
    ref = box.tmp / "ref.log"
    w = JSONFileLogDriver(ref, JSONFileOptions(), clock=lambda: 1)
    w.write("stdout", payload)
    w.close()

    def untimed(p: Path) -> list[bytes]:
        return [line.rsplit(b',"time":', 1)[0] for line in p.read_bytes().splitlines()]

    assert untimed(Path(req.log["path"])) == untimed(ref)
    assert len(untimed(ref)) >= 6
    back = [e.data for e in JSONFileReader(req.log["path"]).read()]
    assert back == [e.data for e in JSONFileReader(ref).read()]
    assert b"".join(back).startswith(payload[:payload.index(b"\xff")])
