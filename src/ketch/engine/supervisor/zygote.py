"""The zygote: a pre-warmed, single-threaded fork server for supervisors.

ketchd calls :func:`start_zygote` first thing, before it has threads or an event
loop. The zygote imports everything a supervisor (and the runtime it drives) will
need, calls ``gc.freeze()`` so forked children leave those objects' pages shared,
and then serves spawn requests on a SOCK_SEQPACKET pair::

    ketchd ──SpawnRequest──▶ zygote ──request + report pipe──▶ spare ═▶ supervisor
           ◀─{"ok"}+report fd─┘  └──fork──▶ the next spare (blocks in recvmsg)

A *spare* is a child forked ahead of need: it has called setsid and waits on a
socketpair for one request. Handing a request to it instead of forking then takes
a fork (≈2 ms of a Python process's page tables and copy-on-write faults) off every
container start and exec of a burst: the next spare is forked right after each
reply. Spares serve bursts, so an idle zygote keeps none: there is none before the
first request, and one left waiting ``spare_idle`` seconds is retired (it sees EOF
and exits), giving back the ≈1.2 MiB its copy-on-write pages cost. Without a spare
(idle, or killed) the zygote forks for the request itself.

The supervisor reports on the *report pipe* whose read end the zygote passes back
to ketchd: first ``{"supervisor_pid": n}``, then ``{"supervisor_pid": n,
"init_pid": n}`` once the container is created and its ``sup.sock`` listens, or an
error object. The zygote never waits on a supervisor, so spawns overlap; it reaps
them (SIGCHLD). It exits on EOF from ketchd, and with ketchd (PR_SET_PDEATHSIG); a
spare exits when the zygote's end of its socketpair closes. Supervisors outlive both.
"""

from __future__ import annotations

import array
import json
import logging
import os
import signal
import socket
import threading
from collections.abc import Mapping
from typing import Any, NoReturn

from ketch.engine.supervisor.protocol import (
    ExecRequest,
    ExecResult,
    SpawnRequest,
    SpawnResult,
    error_from_wire,
    error_to_wire,
    read_report,
)
from ketch.errors import InvalidArgument, Unavailable
from ketch.runtime.oci_runtime import OCIRuntime

__all__ = ["SPAWN_TIMEOUT", "ZygoteHandle", "make_runtime", "preload", "start_zygote"]

log = logging.getLogger(__name__)

SPAWN_TIMEOUT = 120.0  # a create that takes longer than this is hung (hooks included)
SPARE_IDLE = 5.0  # seconds a spare waits for a request before the zygote retires it
_MAX_MSG = 1 << 20

# What a supervisor and the runtime it drives import; loaded once, shared by all.
PRELOAD = (
    "json", "selectors", "signal", "socket", "errno", "gzip", "shutil", "subprocess",
    "tempfile", "traceback", "fcntl", "termios", "struct", "array", "select",
    "ketch.engine.logs.jsonfile", "ketch.engine.supervisor.shim",
    "ketch.engine.supervisor.execsup", "ketch.engine.supervisor.handover", "hashlib",
    "ketch.runtime.container", "ketch.runtime.cli_runtime", "ketch.runtime.init",
    "ketch.runtime.validate", "ketch.runtime.launch", "ketch.runtime.console",
    "ketch.runtime.hooks", "ketch.runtime.rootfs", "ketch.runtime.process",
    "ketch.runtime.seccomp", "ketch.runtime.cgroups", "ketch.runtime.cgroups.manager",
    "ketch.runtime.cgroups.v1", "ketch.runtime.cgroups.v2", "ketch.runtime.cgroups.convert",
    "ketch.runtime.cgroups.stats", "ketch.runtime.cgroups.devices_bpf",
    "ketch.sys.prctl", "ketch.sys.seccomp", "ketch.sys.mount", "ketch.sys.ns",
)


def make_runtime(desc: Mapping[str, Any]) -> OCIRuntime:
    """The runtime a spawn request names.

    ``{"name": "ketch", "root": dir}`` → ketch's in-process ``Runtime(root)``;
    ``{"name": n, "path": binary, "root": dir[, "global_args": [...]]}`` →
    ``CliRuntime(binary, root, name=n)``. InvalidArgument otherwise.
    """
    name, root = desc.get("name"), desc.get("root")
    if not isinstance(name, str) or not isinstance(root, str):
        raise InvalidArgument("runtime: name and root are required")
    if name == "ketch":
        from ketch.runtime.container import Runtime

        return Runtime(root)
    path = desc.get("path")
    if not isinstance(path, str):
        raise InvalidArgument(f"runtime {name}: path of the binary is required")
    from ketch.runtime.cli_runtime import CliRuntime

    return CliRuntime(path, root, name=name, global_args=tuple(desc.get("global_args") or ()))


class ZygoteHandle:
    """ketchd's end of a running zygote. ``spawn`` is thread-safe."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self._sock: socket.socket | None = sock
        self._lock = threading.Lock()
        self.spawn_timeout = SPAWN_TIMEOUT

    def spawn(self, req: SpawnRequest) -> SpawnResult:
        """Start a supervisor for ``req`` and wait until its container is created.

        Raises the ``ketch.errors`` class the runtime raised (``Internal`` when
        unknown), ``Unavailable`` when the zygote is gone.
        """
        report = self._request(req.to_json())
        return SpawnResult(int(report["supervisor_pid"]), int(report["init_pid"]))

    def spawn_exec(self, req: ExecRequest) -> ExecResult:
        """Start an exec supervisor for ``req`` and wait until its process runs and its
        socket listens (``ketch.engine.supervisor.execsup``). Errors as for :meth:`spawn`;
        ``Conflict`` if the exec id was used in this container before."""
        report = self._request(req.to_json())
        return ExecResult(int(report["supervisor_pid"]), int(report["pid"]))

    async def aspawn_exec(self, req: ExecRequest) -> ExecResult:
        """:meth:`spawn_exec` on the event loop's default executor."""
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(None, self.spawn_exec, req)

    def _request(self, data: bytes) -> dict[str, Any]:
        with self._lock:
            if self._sock is None:
                raise Unavailable("supervisor zygote is closed")
            try:
                self._sock.send(data)
                msg, anc, _flags, _addr = self._sock.recvmsg(
                    65536, socket.CMSG_SPACE(4), socket.MSG_CMSG_CLOEXEC)
            except OSError as e:
                raise Unavailable(f"supervisor zygote is gone: {e}") from None
        fds = array.array("i")
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        if not msg:
            for fd in fds:
                os.close(fd)
            raise Unavailable("supervisor zygote is gone")
        try:
            reply = json.loads(msg)
        except ValueError:
            reply = {"error": f"garbled zygote reply {msg[:100]!r}", "kind": "Internal"}
        if "error" in reply or not fds:
            for fd in fds:
                os.close(fd)
            raise error_from_wire(reply if "error" in reply else {"error": "no report pipe"})
        try:
            report = read_report(fds[0], self.spawn_timeout)
        finally:
            for fd in fds:
                os.close(fd)
        if "error" in report:
            raise error_from_wire(report)
        return report

    async def aspawn(self, req: SpawnRequest) -> SpawnResult:
        """:meth:`spawn` on the event loop's default executor."""
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(None, self.spawn, req)

    def close(self) -> None:
        """Stop the zygote (its supervisors keep running) and reap it."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is None:
            return
        sock.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass

    def __enter__(self) -> ZygoteHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_zygote(spare_idle: float = SPARE_IDLE) -> ZygoteHandle:
    """Fork the zygote from this process; call it before starting threads.
    ``spare_idle``: how long a spare waits for a request before it is retired."""
    if threading.active_count() > 1:
        log.warning("starting the supervisor zygote with %d threads running; fork is only "
                    "safe before threads start", threading.active_count())
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        ours.close()
        _zygote_main(theirs, parent, spare_idle)
    theirs.close()
    return ZygoteHandle(pid, ours)


def _zygote_main(sock: socket.socket, parent: int, spare_idle: float) -> NoReturn:
    code = 0
    try:
        from ketch.sys.prctl import set_name, set_pdeathsig

        set_pdeathsig(signal.SIGKILL)
        if os.getppid() != parent:  # ketchd died before the line above
            os._exit(0)
        set_name("ketch-zygote")
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ketchd decides when we stop
        keep = sock.fileno()
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd != keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
        import gc

        preload()  # nothing to do when the parent called it before forking us
        gc.collect()
        gc.freeze()
        from ketch.sys.libc import malloc_trim

        malloc_trim()
        _serve(sock, spare_idle)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def preload() -> None:
    """Import what supervisors and the runtime run, and fill the caches each container
    create would otherwise fill again (see :func:`_warm_caches`). The zygote does it at
    start; a parent that calls it before :func:`start_zygote` shares the result with the
    zygote's pages instead of each holding its own. Cheap the second time."""
    import importlib

    for mod in PRELOAD:
        try:
            importlib.import_module(mod)
        except ImportError:
            pass
    _warm_caches()


def _warm_caches() -> None:
    """Fill, once, the caches every container create would fill again in each fresh
    supervisor: the compiled default seccomp program (Docker's profile for the default
    capabilities), the host's cgroup layout."""
    try:
        from ketch.engine.specconv import to_oci_spec
        from ketch.runtime.seccomp import compile_seccomp
        from ketch.sys.cgroupfs import UNIFIED, detect_host

        host = detect_host()
        spec = to_oci_spec({"Image": "warm", "Cmd": ["true"]}, {}, container_id="0" * 64,
                           rootfs="/nonexistent", cgroup_v2=host.mode == UNIFIED).spec
        if spec["linux"].get("seccomp"):
            compile_seccomp(spec["linux"]["seccomp"])
    except Exception:  # only a cache: a failure costs time, not correctness
        pass


def _serve(sock: socket.socket, spare_idle: float) -> None:
    import select

    signal.signal(signal.SIGCHLD, _reap)
    spare: socket.socket | None = None
    while True:
        if spare is not None and not select.select([sock], [], [], spare_idle)[0]:
            spare.close()  # idle: retire it (it sees EOF and exits)
            spare = None
            continue
        try:
            data, _anc, flags, _addr = sock.recvmsg(_MAX_MSG)
        except InterruptedError:
            continue
        if not data:
            return  # ketchd closed its end; the spare sees EOF and exits
        try:
            if flags & socket.MSG_TRUNC:
                raise InvalidArgument("spawn request too large")
            req = _parse(data)
            report = _hand_to_spare(spare, data) if spare is not None else None
            spare = None
            if report is None:
                report = _fork_supervisor(req, sock)
        except Exception as e:
            sock.send(json.dumps(error_to_wire(e)).encode())
            continue
        try:
            sock.sendmsg([b'{"ok":true}'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                             array.array("i", [report]).tobytes())])
        finally:
            os.close(report)
        spare = _fork_spare(sock)


def _hand_to_spare(spare: socket.socket, data: bytes) -> int | None:
    """Give ``data`` and a report pipe's write end to the spare; returns the read end,
    or None if the spare is gone."""
    r, w = os.pipe()
    try:
        spare.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                array.array("i", [w]).tobytes())])
    except OSError:
        os.close(r)
        return None
    finally:
        os.close(w)
        spare.close()
    return r


def _fork_spare(sock: socket.socket) -> socket.socket | None:
    """Fork the next spare; returns the zygote's end of its socketpair (None if the
    fork failed: requests then fork on demand)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = os.fork()
    except OSError:
        ours.close()
        theirs.close()
        return None
    if pid == 0:
        try:
            ours.close()
            sock.close()
            os.setsid()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            from ketch.sys.prctl import set_name

            set_name("ketch-spare")
            while True:
                try:
                    data, anc, _flags, _addr = theirs.recvmsg(
                        _MAX_MSG, socket.CMSG_SPACE(4), socket.MSG_CMSG_CLOEXEC)
                    break
                except InterruptedError:
                    continue
            fds = array.array("i")
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            theirs.close()
            if data and fds:
                _supervise(_parse(data), fds[0])
        finally:
            os._exit(1)
    theirs.close()
    return ours


def _supervise(req: SpawnRequest | ExecRequest, w: int) -> NoReturn:
    """Become ``req``'s supervisor (in a child of the zygote, after setsid)."""
    # First line of the report: who to watch (ketchd follows this pid's pidfd).
    os.write(w, json.dumps({"supervisor_pid": os.getpid()}).encode() + b"\n")
    if isinstance(req, ExecRequest):
        from ketch.engine.supervisor import execsup

        execsup.main(req, w)
    from ketch.engine.supervisor import shim

    shim.main(req, w)


def _parse(data: bytes) -> SpawnRequest | ExecRequest:
    """A spawn request, or an exec request (``{"exec": {...}}``)."""
    if data.startswith(b'{"exec":'):
        try:
            return ExecRequest(**json.loads(data)["exec"])
        except (ValueError, TypeError) as e:
            raise InvalidArgument(f"exec: bad request: {e}") from None
    return SpawnRequest.from_json(data)


def _fork_supervisor(req: SpawnRequest | ExecRequest, sock: socket.socket) -> int:
    """Fork a supervisor for ``req`` in a session of its own; returns the report pipe's
    read end. The zygote reaps it when it exits (SIGCHLD); if the zygote goes first,
    supervisors are reparented and carry on."""
    r, w = os.pipe()
    try:
        sup = os.fork()
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    if sup == 0:
        try:
            os.close(r)
            sock.close()
            os.setsid()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _supervise(req, w)
        finally:
            os._exit(1)
    os.close(w)
    return r


def _reap(_sig: int = 0, _frame: object = None) -> None:
    """Collect exited supervisors (the zygote's only children)."""
    from ketch.engine.supervisor.launch import reap_children

    for _ in reap_children():
        pass
