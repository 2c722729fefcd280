"""The supervisor's I/O: one epoll loop over the container's stdio and the clients.

:class:`Loop` is transport only: it moves bytes between *sources* (output fds of
the container or of an exec), *sinks* (their stdin: a pipe or a pty master) and
client *connections* on sup.sock, with back-pressure, and hands each complete
request line to :meth:`Loop.handle`. What the bytes and requests mean, and when
the process ends, is :class:`ketch.engine.supervisor.shim.Supervisor`'s business.

Back-pressure: a client more than ``HIGH_WATER`` bytes behind pauses the reading
of what it is fed (the container's output, or its exec's), as a blocking write
would in dockerd; a stdin buffer that full pauses the clients writing to it.
"""

from __future__ import annotations

# _socket, not socket: socket.py's wrappers (enums, accept) cost each supervisor ~90 KiB
import _socket as socket
import json
import os
import select
from typing import Any

from ketch.engine.supervisor.launch import accept_fd, close_quiet, unlink_quiet
from ketch.engine.supervisor.protocol import (
    STDERR,
    STDOUT,
    DetachScanner,
    error_to_wire,
    frame,
)
from ketch.errors import InvalidArgument

__all__ = ["CHUNK", "HIGH_WATER", "Conn", "Exec", "Loop", "Sink"]

CHUNK = 65536
HIGH_WATER = 1 << 20     # bytes buffered for one peer before its producer is paused
MAX_REQUEST = 1 << 20
_R, _W = select.EPOLLIN, select.EPOLLOUT
_RX, _WX = _R | select.EPOLLHUP | select.EPOLLERR, _W | select.EPOLLHUP | select.EPOLLERR


class Sink:
    """Where client stdin goes: a container's or exec's stdin pipe, or a pty master."""

    __slots__ = ("buf", "eof", "fd", "tty")

    def __init__(self, fd: int, tty: bool) -> None:
        self.fd, self.tty, self.buf, self.eof = fd, tty, bytearray(), False


class Exec:
    """An exec'd process. ``hold``: its output is not read yet (no client so far)."""

    __slots__ = ("conn", "done", "drain_until", "exit_code", "hold", "id", "master", "pid",
                 "sink", "tty")

    def __init__(self, exec_id: str, tty: bool) -> None:
        self.id, self.tty, self.pid, self.done, self.hold = exec_id, tty, 0, False, False
        self.conn: Conn | None = None
        self.master = -1
        self.sink: Sink | None = None
        self.exit_code: int | None = None
        self.drain_until = 0.0


class Conn:
    """A client of sup.sock. mode: request → attach | exec | wait | reply."""

    __slots__ = ("closing", "exec", "fd", "inbuf", "mode", "out", "read_eof", "scanner", "sock",
                 "stderr", "stdin", "stdout")

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.fd = sock, sock.fileno()
        self.inbuf, self.out = bytearray(), bytearray()
        self.mode = "request"
        self.stdin = self.stdout = self.stderr = False
        self.scanner: DetachScanner | None = None
        self.exec: Exec | None = None
        self.read_eof = self.closing = False

    def streams(self, req: dict[str, Any]) -> None:
        self.stdin, self.stdout, self.stderr = req["stdin"], req["stdout"], req["stderr"]
        if self.stdin and req["detach_keys"]:
            self.scanner = DetachScanner(req["detach_keys"])

    def wants(self, stream: str) -> bool:
        return self.stdout if stream == "stdout" else self.stderr


class Loop:
    """Buffers, descriptors and the epoll set of one supervisor."""

    def __init__(self) -> None:
        self.tty = False          # the container's process has a terminal (raw streams)
        self.stdin_once = False   # close the container's stdin when its client ends it
        self.log: Any = None      # LogDriver for the container's output, or None
        self.master = -1          # the container's pty master
        self.sources: dict[int, tuple[str, Exec | None]] = {}  # fd -> (stream, exec|None)
        self.sinks: dict[int, Sink] = {}
        self.stdin_sink: Sink | None = None
        self.conns: dict[int, Conn] = {}
        self.listener: socket.socket | None = None
        self.ep = select.epoll()
        self.masks: dict[int, int] = {}
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # ---- hooks --------------------------------------------------------------------------

    def handle(self, c: Conn, line: bytes) -> None:
        """A complete request line arrived on ``c``."""
        raise NotImplementedError

    def reap(self) -> None:
        """A signal (SIGCHLD) woke the loop."""
        raise NotImplementedError

    # ---- housekeeping (both supervisors, each turn of their loop and at the end) ----------

    def tidy(self) -> None:
        """Drop sinks whose source ended and whose bytes are written; close connections
        that are done and have nothing left to send."""
        for sink in list(self.sinks.values()):
            if sink.eof and not sink.buf and not sink.tty:
                self._drop_sink(sink)
        for c in list(self.conns.values()):
            if c.closing and not c.out:
                self._close_conn(c)

    def close_all(self, sock_path: str) -> None:
        """The end: remove the socket path, stop listening, close every connection."""
        unlink_quiet(sock_path)
        if self.listener is not None:
            self.listener.close()
        for c in list(self.conns.values()):
            self._close_conn(c)

    # ---- epoll ----------------------------------------------------------------------------

    def poll(self, timeout: float | None) -> None:
        """Wait for events (at most ``timeout`` seconds) and dispatch them."""
        self._refresh()
        for fd, ev in self.ep.poll(-1 if timeout is None else timeout):
            if ev & _RX and self.masks.get(fd, 0) & _R:
                if fd == self.wake_r:
                    _drain_pipe(fd)
                    self.reap()
                elif self.listener is not None and fd == self.listener.fileno():
                    self._accept()
                elif fd in self.sources:
                    self._on_source(fd)
                elif fd in self.conns:
                    self._on_conn(self.conns[fd])
            if ev & _WX and self.masks.get(fd, 0) & _W:
                if fd in self.conns:
                    self._flush_conn(self.conns[fd])
                elif fd in self.sinks:
                    self._flush_sink(self.sinks[fd])

    def _refresh(self) -> None:
        """Bring epoll's interest set in line with the buffers' state."""
        want: dict[int, int] = {self.wake_r: _R}
        if self.listener is not None:
            want[self.listener.fileno()] = _R
        stalled = any(c.mode == "attach" and len(c.out) > HIGH_WATER for c in self.conns.values())
        for fd, (_stream, ex) in self.sources.items():
            if ex is not None and ex.hold:
                continue
            c = ex.conn if ex is not None else None
            if not (stalled if ex is None else c is not None and len(c.out) > HIGH_WATER):
                want[fd] = _R
        for fd, sink in self.sinks.items():
            if sink.buf:
                want[fd] = want.get(fd, 0) | _W
        for fd, c in self.conns.items():
            m = _W if c.out else 0
            target = self._sink_for(c)
            if not c.read_eof and not (target is not None and len(target.buf) > HIGH_WATER):
                m |= _R
            if m:
                want[fd] = m
        for fd in [fd for fd in self.masks if fd not in want]:
            self._forget(fd)
        for fd, m in want.items():
            old = self.masks.get(fd)
            if old != m:
                if old is None:
                    self.ep.register(fd, m)
                else:
                    self.ep.modify(fd, m)
                self.masks[fd] = m

    def _forget(self, fd: int) -> None:
        if self.masks.pop(fd, None) is not None:
            self.ep.unregister(fd)

    # ---- data paths -----------------------------------------------------------------------

    def _on_source(self, fd: int) -> None:
        stream, ex = self.sources[fd]
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: the last holder of the pty's slave side is gone
            data = b""
        if not data:
            self._drop_source(fd)
            return
        if ex is None:
            if self.log is not None:
                self.log.write(stream, data)
            out = data if self.tty else frame(STDOUT if stream == "stdout" else STDERR, data)
            for c in self.conns.values():
                if c.mode == "attach" and not c.closing and c.wants(stream):
                    c.out += out
        elif ex.conn is not None and ex.conn.wants(stream):
            ex.conn.out += data if ex.tty else frame(STDOUT if stream == "stdout" else STDERR,
                                                     data)

    def _drop_source(self, fd: int) -> None:
        _stream, ex = self.sources.pop(fd, ("", None))
        sink = self.sinks.get(fd)
        if sink is not None:  # a pty master: reading and writing end together
            self._drop_sink(sink)
        else:
            self._forget(fd)
            close_quiet(fd)
        if fd == self.master:  # no resize on a closed (or reused) descriptor
            self.master = -1
        if ex is not None and fd == ex.master:
            ex.master = -1

    def _drop_sink(self, sink: Sink) -> None:
        sink.buf.clear()
        sink.eof = True
        if self.sinks.pop(sink.fd, None) is None:
            return
        if self.stdin_sink is sink:
            self.stdin_sink = None
        if sink.fd not in self.sources:
            self._forget(sink.fd)
            close_quiet(sink.fd)

    def _flush_sink(self, sink: Sink) -> None:
        try:
            n = os.write(sink.fd, sink.buf)
        except BlockingIOError:
            return
        except OSError:  # EPIPE: the reader closed its stdin
            self._drop_sink(sink)
            return
        del sink.buf[:n]

    def _sink_for(self, c: Conn) -> Sink | None:
        if not c.stdin:
            return None
        if c.mode == "attach":
            return self.stdin_sink
        return c.exec.sink if c.exec is not None else None

    # ---- clients --------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            fd = accept_fd(self.listener)
        except OSError:
            return
        s = socket.socket(fileno=fd)
        s.setblocking(False)
        self.conns[fd] = Conn(s)

    def _close_conn(self, c: Conn) -> None:
        if self.conns.pop(c.fd, None) is None:
            return
        self._forget(c.fd)
        c.sock.close()
        if c.exec is not None:
            c.exec.conn = None  # the exec runs on; its output has nowhere to go

    def _reply(self, c: Conn, obj: dict[str, Any], *, done: bool = True) -> None:
        c.out += json.dumps(obj).encode() + b"\n"
        if done:
            c.mode = "reply"
            c.closing = True

    def _flush_conn(self, c: Conn) -> None:
        try:
            n = c.sock.send(c.out)
        except BlockingIOError:
            return
        except OSError:
            self._close_conn(c)
            return
        del c.out[:n]
        if c.closing and not c.out:
            self._close_conn(c)

    def _on_conn(self, c: Conn) -> None:
        try:
            data = c.sock.recv(CHUNK)
        except BlockingIOError:
            return
        except OSError:
            self._close_conn(c)
            return
        if not data:
            self._conn_eof(c)
        elif c.mode == "request":
            c.inbuf += data
            nl = c.inbuf.find(b"\n")
            if nl < 0:
                if len(c.inbuf) > MAX_REQUEST:
                    self._reply(c, error_to_wire(InvalidArgument("request line too long")))
                return
            line, rest = bytes(c.inbuf[:nl]), bytes(c.inbuf[nl + 1:])
            c.inbuf.clear()
            self.handle(c, line)
            if rest and c.mode in ("attach", "exec"):
                self._stdin(c, rest)
        elif c.mode in ("attach", "exec"):
            self._stdin(c, data)

    def _stdin(self, c: Conn, data: bytes) -> None:
        detached = False
        if c.scanner is not None:
            data, detached = c.scanner.feed(data)
        sink = self._sink_for(c)
        if data and sink is not None and not sink.eof:
            sink.buf += data
        if detached:
            self._close_conn(c)

    def _conn_eof(self, c: Conn) -> None:
        """A client ended its side: Docker's rules for the end of an attached stdin."""
        c.read_eof = True
        if c.mode not in ("attach", "exec"):
            if c.mode != "reply":
                self._close_conn(c)
            return
        if c.stdin:
            tty = self.tty if c.mode == "attach" else c.exec is not None and c.exec.tty
            if tty or not (c.mode == "exec" or self.stdin_once):
                self._close_conn(c)  # the attach ends; the process's stdin stays open
                return
            sink = self._sink_for(c)
            if sink is not None:
                sink.eof = True  # closed once what is buffered is written
        if not (c.stdout or c.stderr):
            self._close_conn(c)

def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
