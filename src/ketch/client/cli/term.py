"""The local terminal during ``run -it``/``exec -it``/``start -ai``, and progress displays.

* :func:`raw_terminal`: the TTY in raw mode, restored on every way out (return,
  exception, SIGTERM/SIGHUP — turned into SystemExit so ``finally`` runs).
* :func:`watch_resize`: the remote TTY follows the local one (at start and on
  SIGWINCH; the signal only wakes a thread, so no request runs inside a handler).
* :class:`DetachKeys`: spots the detach sequence (``ctrl-p,ctrl-q``) in typed input.
* :func:`pump`: stdin → the attached stream (half-closed at EOF) in a thread,
  the stream → stdout/stderr in the caller's thread, until the stream ends or
  the user detaches.
* :class:`Progress`: a spinner and byte counter on stderr when it is a TTY.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator
from types import FrameType
from typing import IO, BinaryIO, TextIO

from ketch.client.cli.base import UsageError
from ketch.client.cli.format import human_size
from ketch.client.engine import STDERR, STDOUT, SYSTEMERR, RawStream
from ketch.client.streams import frames

__all__ = [
    "DEFAULT_DETACH_KEYS",
    "DetachKeys",
    "Progress",
    "ProgressReader",
    "is_tty",
    "pump",
    "raw_terminal",
    "terminal_size",
    "watch_resize",
]

DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"
_CTRL_EXTRA = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


def is_tty(stream: IO[str] | IO[bytes]) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False


def _fileno(stream: IO[str] | IO[bytes]) -> int | None:
    try:
        return stream.fileno()
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return None


def terminal_size(stream: IO[str] | IO[bytes]) -> tuple[int, int] | None:
    """``(rows, columns)`` of the terminal behind ``stream``, None if it is none."""
    fd = _fileno(stream)
    if fd is None or not os.isatty(fd):
        return None
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    return size.lines, size.columns


def _exit_on(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def raw_terminal(stream: IO[str] | IO[bytes]) -> Iterator[None]:
    """Raw mode on the TTY behind ``stream`` (nothing if it is not a TTY)."""
    fd = _fileno(stream)
    if fd is None or not os.isatty(fd):
        yield
        return
    old = termios.tcgetattr(fd)
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            handlers[sig] = signal.signal(sig, _exit_on)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def watch_resize(stream: IO[str] | IO[bytes], resize: Callable[[int, int], None]
                 ) -> Iterator[None]:
    """Call ``resize(rows, cols)`` now and whenever the local terminal changes size."""
    if terminal_size(stream) is None:
        yield
        return
    wake = threading.Event()
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            size = terminal_size(stream)
            if size is not None:
                with contextlib.suppress(Exception):  # a resize is best effort
                    resize(*size)
            wake.wait()
            wake.clear()

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGWINCH, lambda s, f: wake.set())
    worker = threading.Thread(target=loop, name="ketch-resize", daemon=True)
    worker.start()
    try:
        yield
    finally:
        done.set()
        wake.set()
        if previous is not None:
            signal.signal(signal.SIGWINCH, previous)


class DetachKeys:
    """Finds a key sequence in input (docker's ``--detach-keys``: ``ctrl-p,ctrl-q``, ``a,b``).

    ``feed`` returns the bytes to pass on and whether the sequence completed; a
    partial match is held back until it completes (detach) or breaks (passed on).
    """

    def __init__(self, spec: str = DEFAULT_DETACH_KEYS) -> None:
        self.sequence = self.parse(spec)
        self._held = b""

    @staticmethod
    def parse(spec: str) -> bytes:
        out = bytearray()
        for key in spec.split(","):
            k = key.strip().lower() if key.strip().lower().startswith("ctrl-") else key.strip()
            if k.startswith("ctrl-") and len(k) == 6:
                c = k[5]
                if "a" <= c <= "z":
                    out.append(ord(c) - ord("a") + 1)
                elif c in _CTRL_EXTRA:
                    out.append(_CTRL_EXTRA[c])
                else:
                    raise UsageError(f"Invalid detach keys ({spec}) provided")
            elif len(k) == 1:
                out += k.encode()
            else:
                raise UsageError(f"Invalid detach keys ({spec}) provided")
        return bytes(out)

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        out = bytearray()
        seq = self.sequence
        for b in data:
            candidate = self._held + bytes([b])
            if seq.startswith(candidate):
                self._held = candidate
                if candidate == seq:
                    self._held = b""
                    return bytes(out), True
                continue
            out += self._held
            self._held = b""
            if seq[:1] == bytes([b]):
                self._held = bytes([b])
            else:
                out.append(b)
        return bytes(out), False


def _stdin_loop(src: BinaryIO, stream: RawStream, keys: DetachKeys | None,
                detached: threading.Event) -> None:
    fd = _fileno(src)
    try:
        while True:
            data = os.read(fd, 4096) if fd is not None else src.read(4096)
            if not data:
                stream.close_write()
                return
            if keys is not None:
                data, hit = keys.feed(data)
                if hit:
                    if data:
                        stream.write(data)
                    detached.set()
                    stream.close()
                    return
            if data:
                stream.write(data)
    except Exception:  # the stream went away; the reading side reports how it ended
        return


def pump(stream: RawStream, *, stdin: BinaryIO | None, out: BinaryIO, err: BinaryIO,
         detach_keys: str | None = None) -> bool:
    """Copy until the stream ends; True if the user detached with the detach keys.

    ``stdin`` None: nothing is sent. Detach keys are looked for only when stdin is
    a terminal (piped input may hold those bytes legitimately).
    """
    detached = threading.Event()
    if stdin is not None:
        keys = DetachKeys(detach_keys or DEFAULT_DETACH_KEYS) if is_tty(stdin) else None
        threading.Thread(target=_stdin_loop, args=(stdin, stream, keys, detached),
                         name="ketch-stdin", daemon=True).start()
    try:
        for number, data in frames(stream):
            if detached.is_set():
                break
            if number in (STDERR, SYSTEMERR):
                err.write(data)
                err.flush()
            elif number == STDOUT:
                out.write(data)
                out.flush()
    except Exception:
        if not detached.is_set():  # a cut-off stream after a detach is expected
            raise
    finally:
        stream.close()
    return detached.is_set()


class Progress:
    """``⠋ Loading 12.3MB`` redrawn on stderr at most 10 times a second, if it is a TTY."""

    _FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, label: str, out: TextIO | None = None, *,
                 total: int | None = None) -> None:
        self.out = out if out is not None else sys.stderr
        self.enabled = is_tty(self.out)
        self.label = label
        self.total = total
        self.done = 0
        self._tick = 0
        self._last = 0.0

    def phase(self, label: str, total: int | None = None) -> None:
        self.label, self.total, self.done = label, total, 0
        self._draw(force=True)

    def add(self, n: int) -> None:
        self.done += n
        self._draw()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        self._tick += 1
        spin = self._FRAMES[self._tick % len(self._FRAMES)]
        amount = human_size(self.done) if self.done else ""
        if self.total:
            amount = f"{human_size(self.done)}/{human_size(self.total)}"
        self.out.write(f"\r\x1b[2K{spin} {self.label} {amount}")
        self.out.flush()

    def finish(self, message: str | None = None) -> None:
        """Clear the line (and print ``message`` on it, if given)."""
        if self.enabled:
            self.out.write("\r\x1b[2K")
        if message:
            self.out.write(message + "\n")
        self.out.flush()


class ProgressReader:
    """A binary file whose reads are counted on a :class:`Progress`."""

    def __init__(self, f: BinaryIO, progress: Progress) -> None:
        self.f = f
        self.progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.progress.add(len(data))
        return data
