"""Process plumbing of a supervisor: becoming one, helpers, and a process's stdio.

Kept apart from the event loop (:mod:`ketch.engine.supervisor.shim`): nothing here
holds state between calls.

*Helper*: every runtime call that does real work (create, start, exec) runs in a
child forked for that one call (:func:`run_isolated`). The container's processes
still end up as children of the supervisor (it is their subreaper), and whatever
the call allocated dies with the helper instead of staying in the supervisor.

Memory note: a supervisor's cost is the pages it writes after the fork (CPython
writes refcounts into every object it touches), so this module prefers the
cheapest calls: ``_signal`` over ``signal`` (whose wrappers build enums),
``/proc/self/comm`` over a ctypes prctl.
"""

from __future__ import annotations

# _socket, not socket: socket.py's wrappers (enums, accept) cost each supervisor ~90 KiB
import _socket as socket
import importlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

from ketch.engine.supervisor.protocol import (
    SpawnRequest,
    error_from_wire,
    error_to_wire,
    read_report,
)
from ketch.runtime.oci_runtime import Stdio

__all__ = [
    "HELPER_TIMEOUT",
    "LaunchIO",
    "accept_fd",
    "cleanup_failed",
    "close_quiet",
    "listen_unix",
    "reap_children",
    "run_isolated",
    "run_runtime",
    "set_wakeup_fd",
    "setup_process",
    "unlink_quiet",
]

HELPER_TIMEOUT = 120.0  # a runtime call that takes longer is hung

# signal.signal() returns enum members: importing and building them costs a supervisor
# ~100 KiB of private pages; the C module underneath takes and returns ints.
_signal: Any = importlib.import_module("_signal")


def close_quiet(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _noop(_sig: int, _frame: object) -> None:
    pass


def reap_children() -> Iterator[tuple[int, int]]:
    """(pid, wait status) of every child that has exited, without blocking."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def run_runtime(runtime: object, fn: Callable[[], int | None]) -> int:
    """Make one runtime call: in this process for ketch's own runtime (its init and exec
    children reset every signal disposition before the user's program runs, and the
    call is on every `docker run`'s path), in a helper child (:func:`run_isolated`) for
    runc-style binaries, which would inherit this process's ignored signals."""
    from ketch.runtime.container import Runtime

    if isinstance(runtime, Runtime):
        return int(fn() or 0)
    return run_isolated(fn)


def run_isolated(fn: Callable[[], int | None], timeout: float = HELPER_TIMEOUT) -> int:
    """Run ``fn`` in a helper child; its int result (None → 0), or its error re-raised
    as the same ``ketch.errors`` class. The helper has default signal dispositions,
    so processes it starts do not inherit the supervisor's ignored SIGTERM."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            _signal.set_wakeup_fd(-1)
            for s in (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP, _signal.SIGCHLD):
                _signal.signal(s, _signal.SIG_DFL)
            msg: dict[str, Any] = {"value": fn() or 0}
        except BaseException as e:
            msg = error_to_wire(e)
        try:
            os.write(w, json.dumps(msg).encode() + b"\n")
        finally:
            os._exit(0)
    os.close(w)
    try:
        msg = read_report(r, timeout, pid=pid, what="runtime helper")
    except BaseException:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        raise
    finally:
        os.close(r)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    if "error" in msg:
        raise error_from_wire(msg)
    return int(msg["value"])


def accept_fd(listener: socket.socket) -> int:
    """Accept a connection (close-on-exec) and return its descriptor."""
    fd: int = listener._accept()[0]  # type: ignore[attr-defined]  # missing from typeshed
    return fd


def listen_unix(path: str, backlog: int) -> socket.socket:
    """A unix stream listener at ``path``, mode 0600, put in place by rename."""
    tmp = path + ".tmp"
    for p in (tmp, path):
        unlink_quiet(p)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(tmp)
        os.chmod(tmp, 0o600)
        s.listen(backlog)
        os.rename(tmp, path)
    except BaseException:
        s.close()
        raise
    return s


class LaunchIO:
    """The stdio of one process the runtime is about to start (an init or an exec).

    Without a terminal: a pipe per requested stream (``/dev/null`` otherwise) and
    ``stdio`` to hand to the runtime. With one: a console socket at ``console``
    that receives the pty master. Lifecycle: construct → runtime call →
    :meth:`launched` (or :meth:`abort` on failure). Afterwards ``sources`` lists
    (fd, stream) to read, ``sink`` is the fd stdin goes to (-1: none), ``master`` the
    pty master (-1: none); all non-blocking and owned by the caller.
    """

    def __init__(self, console: str, tty: bool, stdin: bool, stdout: bool, stderr: bool,
                 devnull: int) -> None:
        self.tty, self._stdin = tty, stdin
        self.master = self.sink = -1
        self.sources: list[tuple[int, str]] = []
        self.console: str | None = None
        self.stdio: Stdio | None = None
        self._listener: socket.socket | None = None
        self._child: list[int] = []
        try:
            if tty:
                self._listener = listen_unix(console, 1)
                self.console = console
                return
            fds = [devnull] * 3
            if stdin:
                fds[0], self.sink = os.pipe()
                self._child.append(fds[0])
            for i, (name, want) in enumerate((("stdout", stdout), ("stderr", stderr)), 1):
                if want:
                    r, fds[i] = os.pipe()
                    self._child.append(fds[i])
                    self.sources.append((r, name))
            self.stdio = Stdio(fds[0], fds[1], fds[2])
        except BaseException:
            self.abort()
            raise

    def launched(self) -> None:
        """The runtime started the process: drop the child's ends, take the master."""
        for fd in self._child:
            close_quiet(fd)
        self._child.clear()
        if self._listener is not None:
            from ketch.runtime.console import recv_fd

            assert self.console is not None
            try:
                self._listener.settimeout(10)
                conn = socket.socket(fileno=accept_fd(self._listener))
                try:
                    conn.settimeout(10)
                    self.master = recv_fd(conn)
                finally:
                    conn.close()
            finally:
                self._listener.close()
                self._listener = None
                unlink_quiet(self.console)
            os.set_inheritable(self.master, False)
            self.sources = [(self.master, "stdout")]
            if self._stdin:
                self.sink = self.master
        for fd in self.fds():
            os.set_blocking(fd, False)

    def fds(self) -> set[int]:
        """Every descriptor the caller ends up owning."""
        out = {fd for fd, _ in self.sources}
        if self.sink >= 0:
            out.add(self.sink)
        return out

    def abort(self) -> None:
        """Close everything (the launch failed)."""
        for fd in (*self._child, *self.fds()):
            close_quiet(fd)
        self._child.clear()
        self.sources, self.sink, self.master = [], -1, -1
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self.console is not None:
            unlink_quiet(self.console)


def setup_process(state_dir: str, keep: int, *, comm: str, log: str = "sup.log",
                  create: bool = True) -> bool:
    """Turn this freshly forked process into a supervisor; True if it made ``state_dir``
    (``create``: make it if missing).

    Only ``keep`` (the report pipe) survives of the inherited descriptors; stdin and
    stdout become /dev/null, stderr ``<state_dir>/<log>``; the process is named
    ``comm``. Subreaper; SIGTERM, SIGINT and SIGHUP ignored; SIGCHLD handled (the
    loop's wakeup fd sees it).
    """
    made = False
    if create:
        try:
            os.mkdir(state_dir, 0o700)
            made = True
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(state_dir, 0o700)
            made = True
    os.chdir("/")
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != keep:
            close_quiet(fd)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    err = os.open(os.path.join(state_dir, log),
                  os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(err, 2)
    os.close(err)
    from ketch.sys.prctl import set_child_subreaper

    set_child_subreaper()
    fd = os.open("/proc/self/comm", os.O_WRONLY)
    try:
        os.write(fd, comm.encode()[:15])
    finally:
        os.close(fd)
    for s in (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP):
        _signal.signal(s, _signal.SIG_IGN)
    _signal.signal(_signal.SIGCHLD, _noop)
    return made


def set_wakeup_fd(fd: int) -> None:
    """Signals (SIGCHLD) write a byte to ``fd``, so the event loop wakes up."""
    _signal.set_wakeup_fd(fd, warn_on_full_buffer=False)


def cleanup_failed(req: SpawnRequest, made_dir: bool, log_existed: bool) -> None:
    """Remove what a supervisor whose container could not be created left behind."""
    d = req.state_dir
    for name in ("sup.sock", "sup.pid", "init.pid", "sup.log"):
        unlink_quiet(os.path.join(d, name))
    if req.log.get("driver") == "json-file" and not log_existed:
        try:
            if os.path.getsize(req.log["path"]) == 0:
                os.unlink(req.log["path"])
        except OSError:
            pass
    if made_dir:
        try:
            os.rmdir(d)
        except OSError:
            pass
