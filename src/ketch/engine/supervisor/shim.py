"""The supervisor: one per container, forked from the zygote, single-threaded.

Lifecycle (the package doc has the wire protocol)::

    main(req, report_fd)
      setup      subreaper, stdio → /dev/null and sup.log, SIGTERM ignored
      create     runtime.create in a helper child; pipes, or a pty via a console socket
      report     sup.pid, init.pid, sup.sock listening; {"init_pid": n} to the daemon
      serve      the epoll loop (ketch.engine.supervisor.loop): output → log + attach
                 clients; requests; reaping
      handover   once started: exec the C holder (ketch.engine.supervisor.handover),
                 which does the rest; without one, Python carries on:
      finish     init reaped → drain output (≤ 2 s) → close log → oom? → runtime.delete
                 → exit.json → answer waits, close connections → remove sup.sock → exit

Execs do not run here: each has its own exec supervisor (``execsup``).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, NoReturn

from ketch.engine.supervisor.launch import (
    LaunchIO,
    cleanup_failed,
    listen_unix,
    reap_children,
    run_runtime,
    set_wakeup_fd,
    setup_process,
    unlink_quiet,
)
from ketch.engine.supervisor.loop import Conn, Loop, Sink
from ketch.engine.supervisor.protocol import (
    SpawnRequest,
    error_to_wire,
    exit_code_of,
    validate_request,
)
from ketch.errors import FailedPrecondition, InvalidArgument, NotFound
from ketch.runtime.oci_runtime import OCIRuntime
from ketch.runtime.state import atomic_write

__all__ = ["Supervisor", "main"]

DRAIN_CAP = 2.0          # seconds to read leftover output after a process exited
FLUSH_CAP = 5.0          # seconds to hand buffered output to clients before exiting


class Supervisor(Loop):
    """One container's supervisor: its lifecycle and the control requests."""

    def __init__(self, req: SpawnRequest, runtime: OCIRuntime) -> None:
        super().__init__()
        self.req, self.runtime, self.dir = req, runtime, req.state_dir
        self.stdin_once = req.stdin_once
        self.status = "created"
        self.init_pid = 0
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.exit_status: int | None = None
        self.exit: dict[str, Any] | None = None
        self.drain_until = self.flush_until = 0.0
        self.finished = False
        self.handover_due = False

    def _adopt(self, io: LaunchIO) -> Sink | None:
        for fd, stream in io.sources:
            self.sources[fd] = (stream, None)
        if io.sink < 0:
            return None
        sink = self.sinks[io.sink] = Sink(io.sink, io.tty)
        return sink

    # ---- create -------------------------------------------------------------------------

    def create(self) -> int:
        """Open the log and create the container; returns the init's pid."""
        req, rt = self.req, self.runtime
        with open(os.path.join(req.bundle, "config.json"), "rb") as f:
            self.tty = bool((json.load(f).get("process") or {}).get("terminal"))
        if req.log.get("driver") == "json-file":
            from ketch.engine.logs.jsonfile import JSONFileLogDriver, JSONFileOptions

            self.log = JSONFileLogDriver(req.log["path"],
                                         JSONFileOptions.from_log_opts(req.log.get("opts") or {}))
        io = LaunchIO(os.path.join(self.dir, "con1.sock"), self.tty, req.open_stdin, True, True,
                      self.devnull)
        try:
            self.init_pid = run_runtime(rt, lambda: rt.create(
                req.id, req.bundle, console_socket=io.console, stdio=io.stdio))
        except BaseException:
            io.abort()
            raise
        try:
            io.launched()
        except BaseException:
            io.abort()
            try:
                rt.delete(req.id, force=True)
            except Exception:
                pass
            raise
        self.master = io.master
        self.stdin_sink = self._adopt(io)
        return self.init_pid

    def publish(self) -> None:
        """Write spawn.json, sup.pid and init.pid and start listening on sup.sock.

        Exec records of an earlier run of the container are dropped: exec ids are
        unique per run (a health check's count starts again)."""
        import shutil

        shutil.rmtree(os.path.join(self.dir, "execs"), ignore_errors=True)
        # Per-boot facts under the exec root (tmpfs in production): atomic, not fsync'd.
        # exit.json, which outlives a reboot's worth of interest, is fsync'd.
        atomic_write(os.path.join(self.dir, "spawn.json"), self.req.to_json(), 0o644,
                     sync=False)
        atomic_write(os.path.join(self.dir, "sup.pid"), str(os.getpid()).encode(), 0o644,
                     sync=False)
        atomic_write(os.path.join(self.dir, "init.pid"), str(self.init_pid).encode(), 0o644,
                     sync=False)
        self.listener = listen_unix(os.path.join(self.dir, "sup.sock"), 64)
        self.listener.setblocking(False)

    # ---- the loop -----------------------------------------------------------------------

    def serve(self) -> None:
        """Run until the container exited and everything is handed over."""
        set_wakeup_fd(self.wake_w)
        self.reap()
        while True:
            self._progress()
            if self.handover_due:
                self.handover_due = False
                from ketch.engine.supervisor.handover import handover

                handover(self)  # execs the holder; returns if there is none
            if self.finished and (time.monotonic() >= self.flush_until
                                  or not any(c.out for c in self.conns.values())):
                break
            self.poll(self._timeout())
        self._shutdown()

    def _timeout(self) -> float | None:
        dl = [self.flush_until] if self.finished else []
        if self.exit_status is not None and not self.finished:
            dl.append(self.drain_until)
        return max(0.0, min(dl) - time.monotonic()) if dl else None

    def _progress(self) -> None:
        now = time.monotonic()
        if self.exit_status is not None and not self.finished and (
                now >= self.drain_until or not any(ex is None for _, ex in self.sources.values())):
            self._finish()
        self.tidy()

    # ---- reaping and the end ------------------------------------------------------------

    def reap(self) -> None:
        """Collect every exited child: the init, and orphans reparented to us."""
        for pid, status in reap_children():
            if pid == self.init_pid and self.exit_status is None:
                self.exit_status = status
                self.drain_until = time.monotonic() + DRAIN_CAP

    def _finish(self) -> None:
        assert self.exit_status is not None
        self.finished = True
        for fd in [fd for fd, (_, ex) in self.sources.items() if ex is None]:
            self._drop_source(fd)
        if self.stdin_sink is not None:
            self._drop_sink(self.stdin_sink)
        error: str | None = None
        if self.log is not None:
            try:
                self.log.close()
            except OSError as e:
                error = f"closing the log: {e}"
        oom = False
        oom_kills = getattr(self.runtime, "oom_kills", None)
        if callable(oom_kills):
            try:
                oom = int(oom_kills(self.req.id)) > 0
            except Exception:
                pass
        try:
            self.runtime.delete(self.req.id, force=True)
        except NotFound:
            pass
        except Exception as e:
            error = f"runtime delete: {e}"
        from ketch.engine.logs.jsonfile import format_time

        self.exit = {"exit_code": exit_code_of(self.exit_status),
                     "finished_at": format_time(time.time_ns()),
                     "oom_killed": oom, "error": error}
        atomic_write(os.path.join(self.dir, "exit.json"), json.dumps(self.exit).encode(), 0o644)
        self.status = "exited"
        self.flush_until = time.monotonic() + FLUSH_CAP
        for c in self.conns.values():
            if c.mode == "wait":
                self._reply(c, {"ok": True, "exit": self.exit})
            elif c.mode == "attach":
                c.closing = True

    def _shutdown(self) -> None:
        self.close_all(os.path.join(self.dir, "sup.sock"))

    # ---- requests ---------------------------------------------------------------------------

    def handle(self, c: Conn, line: bytes) -> None:
        try:
            try:
                obj = json.loads(line)
            except ValueError:
                raise InvalidArgument("request is not JSON") from None
            req = validate_request(obj)
            if req["op"] in ("exec", "exec-state"):  # SupervisorClient.open_exec: execsup
                raise InvalidArgument(f"unknown op {req['op']!r}")
            getattr(self, "_op_" + req["op"].replace("-", "_"))(c, req)
        except Exception as e:
            self._reply(c, error_to_wire(e))

    def _running(self, started: bool = False) -> None:
        if self.exit_status is not None or (started and self.status != "running"):
            raise FailedPrecondition(f"container {self.req.id} is not running")

    def _op_attach(self, c: Conn, req: dict[str, Any]) -> None:
        self._running()
        c.mode = "attach"
        c.streams(req)
        self._reply(c, {"ok": True}, done=False)

    def _op_start(self, c: Conn, _req: dict[str, Any]) -> None:
        self._running()
        if self.status != "created":
            raise FailedPrecondition(f"container {self.req.id} is already started")
        # In this process, not a helper child: start runs no process of its own (ketch's
        # runtime writes the exec fifo; runc/crun are subprocesses anyway), and it is on
        # every `docker run`'s path.
        self.runtime.start(self.req.id)
        self.status = "running"
        self._reply(c, {"ok": True})
        self.handover_due = True

    def _op_resize(self, c: Conn, req: dict[str, Any]) -> None:
        from ketch.runtime.console import set_winsize

        if "exec_id" in req:  # an exec's terminal is its own supervisor's
            raise NotFound(f"No such exec instance: {req['exec_id']}")
        if self.master < 0:
            raise FailedPrecondition(f"container {self.req.id} has no terminal")
        set_winsize(self.master, req["height"], req["width"])
        self._reply(c, {"ok": True})

    def _op_wait(self, c: Conn, _req: dict[str, Any]) -> None:
        if self.exit is not None:
            self._reply(c, {"ok": True, "exit": self.exit})
        else:
            c.mode = "wait"

    def _op_state(self, c: Conn, _req: dict[str, Any]) -> None:
        self._reply(c, {"ok": True, "status": self.status, "pid": self.init_pid,
                        "exit": self.exit})


def main(req: SpawnRequest, report_fd: int) -> NoReturn:
    """Body of the supervisor process; reports to ``report_fd``, never returns."""
    code = 1
    made = log_existed = False
    try:
        try:
            made = setup_process(req.state_dir, report_fd, comm=f"ksup-{req.id[:10]}")
            log_existed = req.log.get("driver") == "json-file" and os.path.exists(
                req.log["path"])
            from ketch.engine.supervisor.zygote import make_runtime

            sup = Supervisor(req, make_runtime(req.runtime))
            sup.create()
            try:
                sup.publish()
            except BaseException:
                try:
                    sup.runtime.delete(req.id, force=True)
                except Exception:
                    pass
                raise
        except BaseException as e:
            cleanup_failed(req, made, log_existed)  # first: the caller may look right away
            os.write(report_fd, json.dumps(error_to_wire(e)).encode() + b"\n")
            os._exit(1)
        try:
            os.write(report_fd, json.dumps({"supervisor_pid": os.getpid(),
                                            "init_pid": sup.init_pid}).encode() + b"\n")
        except OSError:  # the daemon died before it learned of the container: undo
            try:
                sup.runtime.delete(req.id, force=True)
            except Exception:
                pass
            cleanup_failed(req, made, log_existed)
            os._exit(1)
        os.close(report_fd)
        sup.serve()
        code = 0
        if os.fstat(2).st_size == 0:
            unlink_quiet(os.path.join(req.state_dir, "sup.log"))
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)
