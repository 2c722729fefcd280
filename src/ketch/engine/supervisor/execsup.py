"""Exec supervisors: one short-lived process per ``docker exec`` (or health check).

Forked from the zygote like a container's supervisor (no Python start-up), an
exec supervisor is a subreaper that runs ``runtime.exec(detach=True)`` in a helper
child, so the exec'd process ends up as its child; it serves one client stream on
``exec_socket_path(state_dir, exec_id)`` and exits once the process exited and its
output was delivered. The container's own supervisor (or holder) is not involved.

Lifecycle::

    main(req, report_fd)
      setup      subreaper, stdio → /dev/null and x-<h>.log, SIGTERM ignored
      launch     execs/<id>.json must not exist (Conflict); pipes or a pty; runtime.exec;
                 execs/<id>.json {"pid", "running": true}; listen on x-<h>.sock
      report     {"supervisor_pid", "pid"} to the daemon
      serve      output is held until the client attaches (at most CLIENT_WAIT);
                 requests: attach (one client), resize, exec-state
      finish     process reaped → drain (≤ 2 s) → execs/<id>.json with exit_code →
                 close the stream once flushed (≤ 5 s) → remove the socket → exit

Stream rules (framing, detach keys, stdin EOF closes the exec's stdin) are the
container attach's, see the package doc.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, NoReturn

from ketch.engine.supervisor.launch import (
    LaunchIO,
    listen_unix,
    reap_children,
    run_runtime,
    set_wakeup_fd,
    setup_process,
    unlink_quiet,
)
from ketch.engine.supervisor.loop import Conn, Exec, Loop, Sink
from ketch.engine.supervisor.protocol import (
    ExecRequest,
    error_to_wire,
    exec_socket_path,
    exit_code_of,
    validate_request,
)
from ketch.errors import Conflict, FailedPrecondition, InvalidArgument
from ketch.runtime.oci_runtime import OCIRuntime
from ketch.runtime.state import atomic_write

__all__ = ["CLIENT_WAIT", "ExecSupervisor", "main"]

DRAIN_CAP = 2.0      # seconds to read leftover output after the process exited
FLUSH_CAP = 5.0      # seconds to hand buffered output to the client before exiting
CLIENT_WAIT = 30.0   # seconds output is held for a client that has not attached yet


class ExecSupervisor(Loop):
    """One exec: its process, its stream, its record in ``execs/``."""

    def __init__(self, req: ExecRequest, runtime: OCIRuntime) -> None:
        super().__init__()
        self.req, self.runtime = req, runtime
        self.sock_path = exec_socket_path(req.state_dir, req.exec_id)
        self.base = self.sock_path[:-len(".sock")]
        self.ex = Exec(req.exec_id, bool(req.process.get("terminal")))
        self.ex.hold = True
        self.attached = False
        self.release_at = time.monotonic() + CLIENT_WAIT
        self.flush_until = 0.0
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)

    def launch(self) -> int:
        """Run the process and start listening; its host pid."""
        req, ex, rt = self.req, self.ex, self.runtime
        record = os.path.join(req.state_dir, "execs", f"{req.exec_id}.json")
        if os.path.exists(record):
            raise Conflict(f"exec {req.exec_id} already exists")
        io = LaunchIO(self.base.replace("/x-", "/xc-") + ".sock", ex.tty, req.stdin, req.stdout,
                      req.stderr, self.devnull)
        try:
            ex.pid = run_runtime(rt, lambda: rt.exec(req.id, req.process, detach=True,
                                                  console_socket=io.console, stdio=io.stdio))
            io.launched()
        except BaseException:
            io.abort()
            raise
        ex.master = io.master
        for fd, stream in io.sources:
            self.sources[fd] = (stream, ex)
        if io.sink >= 0:
            ex.sink = self.sinks[io.sink] = Sink(io.sink, io.tty)
        self._write_exec()
        self.listener = listen_unix(self.sock_path, 8)
        self.listener.setblocking(False)
        return ex.pid

    def _write_exec(self) -> None:
        d = os.path.join(self.req.state_dir, "execs")
        os.makedirs(d, 0o700, exist_ok=True)
        ex = self.ex
        doc = {"pid": ex.pid, "running": ex.exit_code is None, "exit_code": ex.exit_code}
        atomic_write(os.path.join(d, f"{ex.id}.json"), json.dumps(doc).encode(), 0o644)

    # ---- the loop -----------------------------------------------------------------------

    def serve(self) -> None:
        """Run until the process exited and its output is delivered."""
        set_wakeup_fd(self.wake_w)
        self.reap()
        while True:
            now = time.monotonic()
            ex = self.ex
            if ex.hold and now >= self.release_at:
                self._release()  # nobody came: read (and drop) what it writes
            if ex.exit_code is not None and not ex.done and not ex.hold and (
                    now >= ex.drain_until or not self.sources):
                self._done()
            self.tidy()
            if ex.done and (now >= self.flush_until or not any(c.out for c in
                                                               self.conns.values())):
                break
            self.poll(self._timeout(now))
        self.close_all(self.sock_path)

    def _timeout(self, now: float) -> float | None:
        ex = self.ex
        if ex.done:
            dl = self.flush_until
        elif ex.hold:
            dl = self.release_at
        elif ex.exit_code is not None:
            dl = ex.drain_until
        else:
            return None
        return max(0.0, dl - now)

    def _release(self) -> None:
        self.ex.hold = False
        self.ex.drain_until = time.monotonic() + DRAIN_CAP

    def reap(self) -> None:
        """Collect exited children: the exec'd process and orphans reparented to us."""
        for pid, status in reap_children():
            if pid == self.ex.pid and self.ex.exit_code is None:
                self.ex.exit_code = exit_code_of(status)
                self.ex.drain_until = time.monotonic() + DRAIN_CAP

    def _done(self) -> None:
        ex = self.ex
        ex.done = True
        for fd in list(self.sources):
            self._drop_source(fd)
        if ex.sink is not None:
            self._drop_sink(ex.sink)
        ex.master = -1
        self._write_exec()  # before the stream ends: the client reads the code next
        unlink_quiet(self.sock_path)  # likewise: once it has ended, the exec is gone
        self.flush_until = time.monotonic() + FLUSH_CAP
        if ex.conn is not None:
            ex.conn.closing = True
            ex.conn.exec = None
            ex.conn = None

    # ---- requests -------------------------------------------------------------------------

    def handle(self, c: Conn, line: bytes) -> None:
        try:
            try:
                obj = json.loads(line)
            except ValueError:
                raise InvalidArgument("request is not JSON") from None
            req = validate_request(obj)
            if req["op"] == "attach":
                self._attach(c, req)
            elif req["op"] == "resize":
                self._resize(c, req)
            elif req["op"] == "exec-state":
                ex = self.ex
                self._reply(c, {"ok": True, "running": ex.exit_code is None, "pid": ex.pid,
                                "exit_code": ex.exit_code})
            else:
                raise InvalidArgument(f"unknown op {req['op']!r}")
        except Exception as e:
            self._reply(c, error_to_wire(e))

    def _attach(self, c: Conn, req: dict[str, Any]) -> None:
        ex = self.ex
        if self.attached or ex.done:
            raise Conflict(f"exec {ex.id} already has a client")
        self.attached = True
        c.mode, c.exec, ex.conn = "exec", ex, c
        c.streams(req)
        if ex.hold:
            self._release()
        self._reply(c, {"ok": True, "pid": ex.pid}, done=False)

    def _resize(self, c: Conn, req: dict[str, Any]) -> None:
        from ketch.runtime.console import set_winsize

        if self.ex.master < 0:
            raise FailedPrecondition(f"exec {self.ex.id} has no terminal")
        set_winsize(self.ex.master, req["height"], req["width"])
        self._reply(c, {"ok": True})


def main(req: ExecRequest, report_fd: int) -> NoReturn:
    """Body of an exec supervisor; reports to ``report_fd``, never returns."""
    code = 1
    log = os.path.basename(exec_socket_path(req.state_dir, req.exec_id))[:-len(".sock")] + ".log"
    try:
        try:
            setup_process(req.state_dir, report_fd, comm=f"kexec-{req.exec_id[:9]}", log=log,
                          create=False)
            from ketch.engine.supervisor.zygote import make_runtime

            sup = ExecSupervisor(req, make_runtime(req.runtime))
            pid = sup.launch()
        except BaseException as e:
            unlink_quiet(os.path.join(req.state_dir, log))
            os.write(report_fd, json.dumps(error_to_wire(e)).encode() + b"\n")
            os._exit(1)
        os.write(report_fd, json.dumps({"supervisor_pid": os.getpid(), "pid": pid}).encode()
                 + b"\n")
        os.close(report_fd)
        sup.serve()
        code = 0
        if os.fstat(2).st_size == 0:
            unlink_quiet(os.path.join(req.state_dir, log))
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)
