"""Docker's ``json-file`` log driver: the on-disk format, rotation, and a reader.

Layout for a container whose log is ``<id>-json.log`` (``max-file`` N, newest last)::

    <id>-json.log.(N-1)[.gz]   oldest rotated file
    ...
    <id>-json.log.1[.gz]       newest rotated file
    <id>-json.log              current file, append-only

Each line is one entry, byte-for-byte what dockerd writes::

    {"log":"hello\\n","stream":"stdout","time":"2026-11-22T08:40:56.123456789Z"}

``log`` is escaped like dockerd does (``<``, ``>``, ``&``, control characters but
``\\n``/``\\r`` and U+2028/9 as ``\\uXXXX``; each byte of invalid UTF-8 as
``\\ufffd``); ``time`` is Go's RFC3339Nano in UTC (trailing zeros of the fraction
dropped). An optional ``attrs`` object sits between ``stream`` and ``time``.

Writing: one ``write(2)`` per entry on an ``O_APPEND`` descriptor, so a reader sees
whole lines or nothing; no fsync. Before an entry would push the current file past
``max-size`` the files shift up (``.1`` → ``.2`` …, the oldest is dropped), the
current file becomes ``.1`` (same inode, so a follower keeps reading it) and a new
current file is created; with ``compress`` ``.1`` is then gzipped to ``.1.gz``.
"""

from __future__ import annotations

import calendar
import collections
import gzip
import io
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import BinaryIO

from ketch.engine.logs import LogEntry, Stream, Tail
from ketch.errors import InvalidArgument

__all__ = [
    "MAX_ENTRY",
    "JSONFileLogDriver",
    "JSONFileOptions",
    "JSONFileReader",
    "format_entry",
    "format_time",
    "parse_size",
    "parse_time",
    "read_logs",
]

log = logging.getLogger(__name__)

MAX_ENTRY = 16 * 1024  # dockerd's copier buffer: longer lines become several entries
_BLOCK = 64 * 1024
_POLL = 0.05

# --- format -------------------------------------------------------------------------

_ESCAPES: dict[str, str] = {chr(c): f"\\u{c:04x}" for c in range(0x20)}
_ESCAPES.update({"\n": "\\n", "\r": "\\r", '"': '\\"', "\\": "\\\\"})
_ESCAPES.update({c: f"\\u{ord(c):04x}" for c in "<>&\u2028\u2029"})
# bytes that are not UTF-8 arrive as lone surrogates (surrogateescape), one per byte
_ESCAPES.update({chr(c): "\\ufffd" for c in range(0xDC80, 0xDD00)})
_NEEDS_ESCAPE = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029\udc80-\udcff]')


def _escape_sub(m: re.Match[str]) -> str:
    return _ESCAPES[m.group()]


def _escape(data: bytes) -> str:
    """The JSON string body dockerd writes for ``data`` (without the quotes)."""
    if data.endswith(b"\n"):
        text, nl = data[:-1].decode("utf-8", "surrogateescape"), "\\n"
    else:
        text, nl = data.decode("utf-8", "surrogateescape"), ""
    if _NEEDS_ESCAPE.search(text) is not None:
        text = _NEEDS_ESCAPE.sub(_escape_sub, text)
    return text + nl


_last_second: tuple[int, str] = (-1, "")


def format_time(ns: int) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: ``2026-11-22T08:40:56.1234Z``."""
    global _last_second
    secs, frac = divmod(ns, 1_000_000_000)
    cached_secs, base = _last_second
    if cached_secs != secs:
        t = time.gmtime(secs)
        base = "%04d-%02d-%02dT%02d:%02d:%02d" % t[:6]  # noqa: UP031 - fastest here
        _last_second = (secs, base)
    if frac:
        return f"{base}.{frac:09d}".rstrip("0") + "Z"
    return base + "Z"


def format_time_fixed(ns: int) -> str:
    """The 9-digit form ``docker logs -t`` prints."""
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


_TIME_REST = re.compile(r"(?:\.(\d{1,9}))?(?:(Z)|([+-])(\d\d):(\d\d))\Z")
_seconds_cache: dict[str, int] = {}


def parse_time(s: str) -> int:
    """Parse an RFC 3339 time (any fraction, ``Z`` or an offset) to ns since the epoch."""
    head = s[:19]
    secs = _seconds_cache.get(head)
    if secs is None:
        try:
            if len(head) != 19 or head[4] != "-" or head[10] not in "Tt":
                raise ValueError(s)
            secs = calendar.timegm(
                (
                    int(head[0:4]),
                    int(head[5:7]),
                    int(head[8:10]),
                    int(head[11:13]),
                    int(head[14:16]),
                    int(head[17:19]),
                    0,
                    0,
                    0,
                )
            )
        except ValueError:
            raise InvalidArgument(f"invalid timestamp {s!r}") from None
        if len(_seconds_cache) > 4096:
            _seconds_cache.clear()
        _seconds_cache[head] = secs
    if s[19:] == "Z":
        return secs * 1_000_000_000
    m = _TIME_REST.match(s, 19)
    if m is None:
        raise InvalidArgument(f"invalid timestamp {s!r}")
    frac, _z, sign, hh, mm = m.groups()
    ns = secs * 1_000_000_000 + (int(frac.ljust(9, "0")) if frac else 0)
    if sign:
        offset = (int(hh) * 3600 + int(mm) * 60) * 1_000_000_000
        ns += -offset if sign == "+" else offset
    return ns


def format_entry(
    stream: str, data: bytes, ts: int, attrs: Mapping[str, str] | None = None
) -> bytes:
    """One line of a json-file log, newline included."""
    mid = ""
    if attrs:
        mid = (
            ',"attrs":{'
            + ",".join(
                f'"{_escape(k.encode())}":"{_escape(v.encode())}"' for k, v in sorted(attrs.items())
            )
            + "}"
        )
    return (
        f'{{"log":"{_escape(data)}","stream":"{stream}"{mid},"time":"{format_time(ts)}"}}\n'
    ).encode()


def _parse_entry(line: bytes) -> LogEntry:
    try:
        d = json.loads(line)
        return LogEntry(
            d.get("stream", ""), parse_time(d["time"]), d.get("log", "").encode("utf-8", "replace")
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InvalidArgument(f"corrupt json-file log entry {line[:80]!r}: {e}") from None


# --- options ------------------------------------------------------------------------

_SIZE = re.compile(r"^(\d+(?:\.\d+)?) ?([kmgtp])?i?b?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(s: str) -> int:
    """``max-size`` as dockerd reads it: binary units (``1k`` = 1024); ``-1`` = unlimited."""
    if s.strip() == "-1":
        return -1
    m = _SIZE.match(s.strip())
    if m is None:
        raise InvalidArgument(f"invalid size: '{s}'")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


class JSONFileOptions:
    """The json-file ``log-opts`` that shape storage (labels/env/tag become ``attrs``)."""

    __slots__ = ("compress", "max_file", "max_size")

    def __init__(self, *, max_size: int = -1, max_file: int = 1, compress: bool = False):
        if max_file < 1:
            raise InvalidArgument("max-file cannot be less than 1")
        if max_size == 0 or max_size < -1:
            raise InvalidArgument(f"invalid max-size {max_size}")
        self.max_size, self.max_file, self.compress = max_size, max_file, compress

    @classmethod
    def from_log_opts(cls, opts: Mapping[str, str]) -> JSONFileOptions:
        known = {"max-size", "max-file", "compress", "labels", "labels-regex", "env",
                 "env-regex", "tag"}  # fmt: skip
        for key in opts:
            if key not in known:
                raise InvalidArgument(f"unknown log opt '{key}' for json-file log driver")
        max_size = parse_size(opts["max-size"]) if "max-size" in opts else -1
        try:
            max_file = int(opts.get("max-file", "1"))
        except ValueError:
            raise InvalidArgument(f"invalid max-file: '{opts['max-file']}'") from None
        compress_s = opts.get("compress", "false").lower()
        if compress_s not in ("true", "false", "1", "0", "t", "f"):
            raise InvalidArgument(f"invalid compress: '{opts['compress']}'")
        return cls(max_size=max_size, max_file=max_file, compress=compress_s in ("true", "1", "t"))


# --- writer -------------------------------------------------------------------------


def _rotated(path: str, i: int, compressed: bool) -> str:
    return f"{path}.{i}.gz" if compressed else f"{path}.{i}"


def _unlink(p: str) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass


class JSONFileLogDriver:
    """A :class:`~ketch.engine.logs.LogDriver` writing Docker's json-file format."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        options: JSONFileOptions | None = None,
        *,
        attrs: Mapping[str, str] | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.path = os.fspath(path)
        self.options = options or JSONFileOptions()
        self._attrs = dict(attrs) if attrs else None
        self._clock = clock
        self._lock = threading.Lock()
        # per stream: unterminated bytes and the time their first byte arrived
        self._pending: dict[str, tuple[bytearray, int]] = {}
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write(self, stream: Stream, data: bytes, ts: int | None = None) -> None:
        if ts is None:
            ts = self._clock()
        with self._lock:
            if self._fd < 0:
                raise ValueError("write to a closed log driver")
            pend = self._pending.get(stream)
            start = 0
            if pend is not None:
                buf, first_ts = pend
                nl = data.find(b"\n")
                if nl < 0:
                    buf += data
                    self._flush_full(stream, buf, first_ts)
                    return
                buf += data[: nl + 1]
                del self._pending[stream]
                self._emit_line(stream, bytes(buf), first_ts)
                start = nl + 1
            while True:
                nl = data.find(b"\n", start)
                if nl < 0:
                    break
                self._emit_line(stream, data[start : nl + 1], ts)
                start = nl + 1
            if start < len(data):
                buf = bytearray(data[start:])
                self._flush_full(stream, buf, ts)

    def _flush_full(self, stream: str, buf: bytearray, ts: int) -> None:
        # dockerd's copier emits a full 16 KiB buffer without waiting for its newline
        while len(buf) >= MAX_ENTRY:
            self._append(format_entry(stream, bytes(buf[:MAX_ENTRY]), ts, self._attrs))
            del buf[:MAX_ENTRY]
        if buf:
            self._pending[stream] = (buf, ts)
        else:
            self._pending.pop(stream, None)

    def _emit_line(self, stream: str, line: bytes, ts: int) -> None:
        while len(line) > MAX_ENTRY:
            self._append(format_entry(stream, line[:MAX_ENTRY], ts, self._attrs))
            line = line[MAX_ENTRY:]
        self._append(format_entry(stream, line, ts, self._attrs))

    def _append(self, entry: bytes) -> None:
        max_size = self.options.max_size
        if max_size > 0 and self._size > 0 and self._size + len(entry) > max_size:
            self._rotate()
        n = os.write(self._fd, entry)
        if n != len(entry):  # only on a full disk; finish the line rather than tear it
            view = memoryview(entry)
            while n < len(entry):
                n += os.write(self._fd, view[n:])
        self._size += len(entry)

    def _rotate(self) -> None:
        path, n, gz = self.path, self.options.max_file, self.options.compress
        os.close(self._fd)
        self._fd = -1
        if n < 2:
            _unlink(path)  # a follower notices the new inode
        else:
            _unlink(_rotated(path, n - 1, gz))
            for i in range(n - 2, 0, -1):
                try:
                    os.rename(_rotated(path, i, gz), _rotated(path, i + 1, gz))
                except FileNotFoundError:
                    pass
            os.rename(path, _rotated(path, 1, False))
        self._fd = self._open()
        self._size = 0
        if n >= 2 and gz:
            self._compress(_rotated(path, 1, False))

    @staticmethod
    def _compress(src: str) -> None:
        # XXX(sync): dockerd compresses in the background; we block this writer for one
        # file's worth of gzip. Fine for max-size in the MiB range.
        tmp = src + ".gz.tmp"
        with open(src, "rb") as fin, gzip.open(tmp, "wb", compresslevel=6) as fout:
            shutil.copyfileobj(fin, fout, _BLOCK)
        os.rename(tmp, src + ".gz")
        os.unlink(src)

    def close(self) -> None:
        with self._lock:
            if self._fd < 0:
                return
            for stream, (buf, ts) in list(self._pending.items()):
                self._append(format_entry(stream, bytes(buf), ts, self._attrs))
            self._pending.clear()
            os.close(self._fd)
            self._fd = -1


# --- reader -------------------------------------------------------------------------


def _history(path: str, max_files: int, skip_ino: int) -> list[str]:
    """Rotated files, oldest first, leaving out the one we already hold open."""
    out: list[str] = []
    for i in range(max_files - 1, 0, -1):
        for p in (_rotated(path, i, True), _rotated(path, i, False)):
            try:
                st = os.stat(p)
            except FileNotFoundError:
                continue
            if st.st_ino != skip_ino:
                out.append(p)
            break
    return out


def _open_any(p: str) -> io.BufferedIOBase:
    return gzip.open(p, "rb") if p.endswith(".gz") else open(p, "rb")


def _lines(
    f: io.BufferedIOBase | BinaryIO, start: int = 0, end: int | None = None
) -> Iterator[bytes]:
    """Complete lines of ``f`` between ``start`` and ``end`` (default: EOF)."""
    if start or f.seekable():
        f.seek(start)
    left = -1 if end is None else end - start
    rest = b""
    while left != 0:
        chunk = f.read(_BLOCK if left < 0 else min(_BLOCK, left))
        if not chunk:
            break
        if left > 0:
            left -= len(chunk)
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        yield from lines


def _last_complete(f: BinaryIO, size: int) -> int:
    """Offset just past the last newline before ``size`` (0 if none)."""
    pos = size
    while pos > 0:
        n = min(_BLOCK, pos)
        f.seek(pos - n)
        i = f.read(n).rfind(b"\n")
        if i >= 0:
            return pos - n + i + 1
        pos -= n
    return 0


def _tail_plain(f: BinaryIO, end: int, n: int) -> list[bytes]:
    """The last ``n`` lines before ``end`` (which follows a newline), reading backwards."""
    blocks: list[bytes] = []
    count, pos = 0, end
    while pos > 0 and count <= n:
        k = min(_BLOCK, pos)
        pos -= k
        f.seek(pos)
        b = f.read(k)
        blocks.append(b)
        count += b.count(b"\n")
    lines = b"".join(reversed(blocks)).split(b"\n")
    lines.pop()  # after the final newline
    return lines[-n:] if n else []


def _tail(current: BinaryIO, end: int, history: list[str], n: int) -> list[bytes]:
    out = _tail_plain(current, end, n)
    for p in reversed(history):
        need = n - len(out)
        if need <= 0:
            break
        try:
            if p.endswith(".gz"):
                with gzip.open(p, "rb") as g:
                    older = list(collections.deque(_lines(g), maxlen=need))
            else:
                with open(p, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    older = _tail_plain(f, _last_complete(f, size), need)
        except FileNotFoundError:  # rotated away meanwhile
            continue
        out = older + out
    return out


def _history_lines(history: list[str]) -> Iterator[bytes]:
    for p in history:
        try:
            f = _open_any(p)
        except FileNotFoundError:
            continue
        with f:
            yield from _lines(f)


def _first_line(path: str, k: int) -> bytes | None:
    for p in (_rotated(path, k, True), _rotated(path, k, False)):
        try:
            with _open_any(p) as f:
                return f.readline()
        except (FileNotFoundError, EOFError, gzip.BadGzipFile):
            continue
    return None


class _Follower:
    """Reads the current file past ``offset`` and across rotations."""

    def __init__(self, path: str, max_files: int, f: BinaryIO, offset: int) -> None:
        self.path, self.max_files = path, max_files
        self.f, self.offset = f, offset
        self.ino = os.fstat(f.fileno()).st_ino

    def _drain(self) -> list[bytes]:
        self.f.seek(self.offset)
        data = self.f.read()
        cut = data.rfind(b"\n") + 1
        self.offset += cut
        return data[:cut].split(b"\n")[:-1] if cut else []

    def poll(self) -> list[bytes] | None:
        """New complete lines, or None when nothing happened."""
        lines = self._drain()
        if lines:
            return lines
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None  # between rotation's rename and the new file's creation
        if st.st_ino == self.ino:
            return None
        # Rotated: what we hold is complete now. Files rotated past it since are
        # ``.k-1`` … ``.1``, where ``.k`` (maybe gzipped) starts with our first line.
        lines = self._drain()
        self.f.seek(0)
        first = self.f.readline()
        newer: list[str] = []
        for k in range(1, self.max_files):
            if _first_line(self.path, k) == first:
                newer = _history(self.path, k, self.ino)
                break
        lines.extend(_history_lines(newer))
        try:
            f = open(self.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            return lines
        self.f.close()
        self.f, self.offset, self.ino = f, 0, os.fstat(f.fileno()).st_ino
        return lines

    def close(self) -> None:
        self.f.close()


def read_logs(
    path: str | os.PathLike[str],
    *,
    stdout: bool = True,
    stderr: bool = True,
    since: int | None = None,
    until: int | None = None,
    tail: Tail = None,
    timestamps: bool = False,
    follow: bool = False,
    max_files: int = 1,
    stop: threading.Event | None = None,
    poll_interval: float = _POLL,
) -> Iterator[LogEntry]:
    """Entries of a json-file log, oldest first; see :meth:`LogReader.read`.

    ``max_files`` is the writer's ``max-file``. With ``follow`` the iterator ends when
    ``stop`` is set (checked every ``poll_interval`` while idle) or an entry newer
    than ``until`` appears.
    """
    p = os.fspath(path)
    streams = {s for s, on in (("stdout", stdout), ("stderr", stderr)) if on}
    try:
        current: BinaryIO = open(p, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise InvalidArgument(f"no log file at {p}") from None
    follower = None
    try:
        ino = os.fstat(current.fileno()).st_ino
        end = _last_complete(current, os.fstat(current.fileno()).st_size)
        history = _history(p, max_files, ino)
        raw: Iterable[bytes]
        if tail is None or tail == "all" or (isinstance(tail, int) and tail < 0):
            raw = _chain(_history_lines(history), _lines(current, 0, end))
        else:
            raw = _tail(current, end, history, int(tail))
        for entry in _filter(raw, streams, since, timestamps):
            if until is not None and entry.ts > until:
                return
            yield entry
        if not follow:
            return
        follower = _Follower(p, max_files, current, end)
        while stop is None or not stop.is_set():
            lines = follower.poll()
            if lines is None:
                if stop is not None:
                    stop.wait(poll_interval)
                else:
                    time.sleep(poll_interval)
                continue
            for entry in _filter(lines, streams, since, timestamps):
                if until is not None and entry.ts > until:
                    return
                yield entry
    finally:
        if follower is not None:
            follower.close()
        else:
            current.close()


def _chain(*its: Iterable[bytes]) -> Iterator[bytes]:
    for it in its:
        yield from it


def _filter(
    raw: Iterable[bytes], streams: set[str], since: int | None, timestamps: bool
) -> Iterator[LogEntry]:
    for line in raw:
        if not line:
            continue
        e = _parse_entry(line)
        if e.stream not in streams or (since is not None and e.ts < since):
            continue
        if timestamps:
            e = e._replace(data=format_time_fixed(e.ts).encode() + b" " + e.data)
        yield e


class JSONFileReader:
    """A :class:`~ketch.engine.logs.LogReader` over one container's json-file log."""

    def __init__(self, path: str | os.PathLike[str], max_files: int = 1) -> None:
        self.path, self.max_files = os.fspath(path), max_files

    def read(
        self,
        *,
        stdout: bool = True,
        stderr: bool = True,
        since: int | None = None,
        until: int | None = None,
        tail: Tail = None,
        timestamps: bool = False,
        follow: bool = False,
        stop: threading.Event | None = None,
    ) -> Iterator[LogEntry]:
        return read_logs(
            self.path,
            stdout=stdout,
            stderr=stderr,
            since=since,
            until=until,
            tail=tail,
            timestamps=timestamps,
            follow=follow,
            max_files=self.max_files,
            stop=stop,
        )
