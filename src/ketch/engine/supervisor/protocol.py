"""Wire shapes shared by ketchd, the zygote and the supervisors.

Three channels, all local:

- *spawn*: ketchd → zygote, one :class:`SpawnRequest` per SOCK_SEQPACKET message;
  the zygote answers with one message (``{"ok": true}`` plus the read end of a
  *report pipe* as SCM_RIGHTS, or an error object).
- *report*: supervisor → ketchd over that pipe, JSON lines: ``{"supervisor_pid": n}``
  (from the zygote's intermediate child) and then either
  ``{"supervisor_pid": n, "init_pid": n}`` or an error object.
- *control*: a client → ``<state_dir>/sup.sock``, one JSON request line, one JSON
  reply line; ``attach`` and ``exec`` connections then carry raw stdio.

An error object is ``{"error": "<message>", "kind": "<ketch.errors class name>"}``;
:func:`error_from_wire` turns it back into that class (``Internal`` when unknown).

Output framing for non-TTY streams is Docker's multiplexed format: an 8-byte header
(stream byte 1 = stdout, 2 = stderr; three zero bytes; big-endian uint32 payload
length) and the payload. TTY streams are raw bytes.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import ketch.errors as errors
from ketch.errors import InvalidArgument, KetchError

__all__ = [
    "DEFAULT_DETACH_KEYS",
    "OPS",
    "STDERR",
    "STDOUT",
    "DetachScanner",
    "ExecRequest",
    "ExecResult",
    "FrameDecoder",
    "SpawnRequest",
    "SpawnResult",
    "error_from_wire",
    "error_to_wire",
    "exec_socket_path",
    "exit_code_of",
    "frame",
    "parse_detach_keys",
    "read_report",
    "validate_request",
]

STDOUT = 1
STDERR = 2
_HEADER = struct.Struct(">BxxxI")

DEFAULT_DETACH_KEYS = [16, 17]  # ctrl-p, ctrl-q: Docker's default

# a unix socket path must fit sockaddr_un.sun_path (108 bytes with its NUL)
_MAX_SOCK_PATH = 107
_EXEC_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


# --- framing -----------------------------------------------------------------------

def frame(stream: int, data: bytes) -> bytes:
    """One multiplexed frame: header for ``stream`` (1 or 2) and ``data``."""
    return _HEADER.pack(stream, len(data)) + data


class FrameDecoder:
    """Splits a multiplexed byte stream back into ``(stream, payload)`` frames.

    Feed it bytes as they arrive in any chunking; it returns the frames completed.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        out: list[tuple[int, bytes]] = []
        while len(self._buf) >= _HEADER.size:
            stream, size = _HEADER.unpack_from(self._buf)
            end = _HEADER.size + size
            if len(self._buf) < end:
                break
            out.append((stream, bytes(self._buf[_HEADER.size:end])))
            del self._buf[:end]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still buffered."""
        return len(self._buf)


# --- detach keys -------------------------------------------------------------------

_CTRL = {**{chr(c): c - 0x60 for c in range(0x61, 0x7B)},
         "@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


def parse_detach_keys(spec: str) -> list[int]:
    """Docker's ``--detach-keys`` syntax: comma-separated ``ctrl-<x>`` or single characters.

    ``ctrl-p,ctrl-q`` → ``[16, 17]``; ``a,ctrl-@`` → ``[97, 0]``; ``""`` → ``[]`` (the
    caller picks the default). InvalidArgument for anything else.
    """
    if spec == "":
        return []
    out: list[int] = []
    for part in spec.split(","):
        low = part.lower()
        if len(part.encode()) == 1:  # one byte: an ASCII character
            out.append(ord(part))
        elif low.startswith("ctrl-") and len(low) == 6 and low[5] in _CTRL:
            out.append(_CTRL[low[5]])
        else:
            raise InvalidArgument(f"Invalid detach keys ({spec}) provided")
    return out


class DetachScanner:
    """Finds the detach sequence in a client's stdin, across chunk boundaries.

    :meth:`feed` returns ``(bytes to forward, detached)``. Bytes before the sequence
    are forwarded; the sequence itself and anything after it are swallowed. A
    partial match at the end of a chunk is held back until the next chunk decides:
    if the sequence then breaks off, the held bytes are forwarded after all.
    """

    __slots__ = ("_held", "_keys")

    def __init__(self, keys: bytes | list[int]) -> None:
        self._keys = bytes(keys)
        self._held = 0  # bytes of _keys matched so far

    @property
    def keys(self) -> bytes:
        """The detach sequence."""
        return self._keys

    @property
    def held(self) -> int:
        """How many bytes of the sequence the last chunks ended with (held back)."""
        return self._held

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        keys = self._keys
        if not keys:
            return data, False
        if not self._held and keys[0] not in data:
            return data, False
        out = bytearray()
        for b in data:
            if b == keys[self._held]:
                self._held += 1
            else:
                # the match broke: keep the longest tail that still starts the sequence
                seen = keys[:self._held] + bytes((b,))
                cut = next(i for i in range(1, len(seen) + 1) if keys.startswith(seen[i:]))
                out += seen[:cut]
                self._held = len(seen) - cut
            if self._held == len(keys):
                self._held = 0
                return bytes(out), True
        return bytes(out), False


# --- requests on sup.sock ------------------------------------------------------------

OPS = frozenset({"attach", "start", "resize", "wait", "state", "exec", "exec-state"})

_BOOL_FIELDS = ("stdin", "stdout", "stderr")


def _want(req: Mapping[str, Any], key: str, kind: type | tuple[type, ...],
          default: Any = None, required: bool = False) -> Any:
    if key not in req:
        if required:
            raise InvalidArgument(f"{req.get('op')}: missing {key!r}")
        return default
    value = req[key]
    # bool is an int: keep the two apart where it matters
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidArgument(f"{req.get('op')}: {key!r} has the wrong type")
    return value


def _keys(req: Mapping[str, Any]) -> list[int]:
    keys = _want(req, "detach_keys", list, [])
    if not all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= 255 for k in keys):
        raise InvalidArgument(f"{req.get('op')}: detach_keys must be bytes (0-255)")
    return list(keys)


def validate_request(req: object) -> dict[str, Any]:
    """Check one control request; returns it normalized (defaults filled in).

    InvalidArgument names the first bad field.
    """
    if not isinstance(req, dict):
        raise InvalidArgument("request must be a JSON object")
    op = req.get("op")
    if op not in OPS:
        raise InvalidArgument(f"unknown op {op!r}")
    out: dict[str, Any] = {"op": op}
    if op in ("attach", "exec"):
        for key in _BOOL_FIELDS:
            out[key] = _want(req, key, bool, False)
        out["detach_keys"] = _keys(req)
    if op in ("resize", "exec", "exec-state") and (op != "resize" or "exec_id" in req):
        exec_id = _want(req, "exec_id", str, required=True)
        if not _EXEC_ID.match(exec_id):
            raise InvalidArgument(f"{op}: invalid exec_id {exec_id!r}")
        out["exec_id"] = exec_id
    if op == "resize":
        for key in ("height", "width"):
            v = _want(req, key, int, required=True)
            if not 0 <= v <= 0xFFFF:
                raise InvalidArgument(f"resize: {key} out of range: {v}")
            out[key] = v
    if op == "exec":
        process = _want(req, "process", dict, required=True)
        args = process.get("args")
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            raise InvalidArgument("exec: process.args must be a non-empty list of strings")
        out["process"] = process
    return out


# --- errors and exit statuses ------------------------------------------------------------

def error_to_wire(exc: BaseException) -> dict[str, Any]:
    """``{"error", "kind"}`` for an exception; non-ketch errors travel as ``Internal``."""
    if isinstance(exc, KetchError):
        kind = type(exc).__name__
        for cls in type(exc).__mro__:  # a subclass travels as its ketch.errors base
            if getattr(errors, cls.__name__, None) is cls:
                kind = cls.__name__
                break
        return {"error": str(exc), "kind": kind}
    if isinstance(exc, OSError) and exc.strerror:
        return {"error": f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror,
                "kind": "Internal"}
    return {"error": f"{type(exc).__name__}: {exc}", "kind": "Internal"}


def error_from_wire(obj: Mapping[str, Any]) -> KetchError:
    """The ``ketch.errors`` instance an error object describes (``Internal`` if unknown)."""
    cls = getattr(errors, str(obj.get("kind", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, KetchError)):
        cls = errors.Internal
    return cls(str(obj.get("error", "unknown error")))


def exit_code_of(status: int) -> int:
    """A wait status as Docker reports it: the exit status, or 128+N when killed by N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 255


# --- spawning ----------------------------------------------------------------------

_LOG_DRIVERS = ("json-file", "none")


@dataclass(frozen=True)
class SpawnRequest:
    """What the zygote needs to start one supervisor (and through it, one container).

    ``bundle`` holds ``config.json`` (``process.terminal`` decides TTY mode) and the
    rootfs. ``state_dir`` is the supervisor's own directory (created if missing).
    ``runtime`` is ``{"name": "ketch", "root": dir}`` or ``{"name": "runc", "path":
    binary, "root": dir[, "global_args": [...]]}`` (see ``make_runtime``). ``log`` is
    ``{"driver": "json-file"|"none", "path": file, "opts": {log-opt: value}}``.
    """

    id: str
    bundle: str
    state_dir: str
    runtime: dict[str, Any]
    open_stdin: bool = False
    stdin_once: bool = False
    log: dict[str, Any] = field(default_factory=lambda: {"driver": "none"})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """InvalidArgument for a request no supervisor could carry out."""
        from ketch.runtime.state import validate_id

        validate_id(self.id)
        for name in ("bundle", "state_dir"):
            value = getattr(self, name)
            if not isinstance(value, str) or not os.path.isabs(value):
                raise InvalidArgument(f"spawn: {name} must be an absolute path")
        if len(os.path.join(self.state_dir, "sup.sock.tmp").encode()) > _MAX_SOCK_PATH:
            raise InvalidArgument(f"spawn: state_dir too long for a unix socket path: "
                                  f"{self.state_dir}")
        rt = self.runtime
        if not isinstance(rt, dict) or not isinstance(rt.get("name"), str) \
                or not isinstance(rt.get("root"), str):
            raise InvalidArgument("spawn: runtime needs a name and a root")
        if rt["name"] != "ketch" and not isinstance(rt.get("path"), str):
            raise InvalidArgument(f"spawn: runtime {rt['name']!r} needs the path of its binary")
        if not isinstance(self.open_stdin, bool) or not isinstance(self.stdin_once, bool):
            raise InvalidArgument("spawn: open_stdin and stdin_once are booleans")
        log = self.log
        if not isinstance(log, dict) or log.get("driver") not in _LOG_DRIVERS:
            raise InvalidArgument(f"spawn: log driver must be one of {', '.join(_LOG_DRIVERS)}")
        if log["driver"] == "json-file":
            if not isinstance(log.get("path"), str) or not os.path.isabs(log["path"]):
                raise InvalidArgument("spawn: json-file log needs an absolute path")
            opts = log.get("opts") or {}
            if not isinstance(opts, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in opts.items()):
                raise InvalidArgument("spawn: log opts are strings")
            from ketch.engine.logs.jsonfile import JSONFileOptions

            JSONFileOptions.from_log_opts(opts)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> SpawnRequest:
        """Parse and validate; InvalidArgument on anything malformed."""
        try:
            obj = json.loads(data)
        except ValueError as e:
            raise InvalidArgument(f"spawn: bad JSON: {e}") from None
        if not isinstance(obj, dict):
            raise InvalidArgument("spawn: request must be a JSON object")
        known = {"id", "bundle", "state_dir", "runtime", "open_stdin", "stdin_once", "log"}
        unknown = set(obj) - known
        if unknown:
            raise InvalidArgument(f"spawn: unknown fields {sorted(unknown)}")
        try:
            return cls(**obj)
        except TypeError as e:
            raise InvalidArgument(f"spawn: {e}") from None


@dataclass(frozen=True)
class SpawnResult:
    """A created container: its supervisor's pid and its init's host pid."""

    supervisor_pid: int
    init_pid: int


def exec_socket_path(state_dir: str, exec_id: str) -> str:
    """Where the exec supervisor of ``exec_id`` listens: short, whatever the id's length
    (a unix socket path has at most 107 bytes)."""
    import hashlib

    digest = hashlib.blake2s(exec_id.encode(), digest_size=8).hexdigest()
    return os.path.join(state_dir, f"x-{digest}.sock")


@dataclass(frozen=True)
class ExecRequest:
    """What the zygote needs to start one exec supervisor: run ``process`` (an OCI
    process object) in container ``id`` as ``exec_id``, with pipes for the streams
    asked for (or a terminal, per ``process.terminal``). ``state_dir`` is the
    container's supervisor directory; the exec supervisor listens on
    :func:`exec_socket_path` and writes ``execs/<exec_id>.json``.
    """

    id: str
    state_dir: str
    runtime: dict[str, Any]
    exec_id: str
    process: dict[str, Any]
    stdin: bool = False
    stdout: bool = False
    stderr: bool = False

    def __post_init__(self) -> None:
        from ketch.runtime.state import validate_id

        validate_id(self.id)
        if not isinstance(self.state_dir, str) or not os.path.isabs(self.state_dir):
            raise InvalidArgument("exec: state_dir must be an absolute path")
        if not isinstance(self.exec_id, str) or not _EXEC_ID.match(self.exec_id):
            raise InvalidArgument(f"exec: invalid exec_id {self.exec_id!r}")
        sock = exec_socket_path(self.state_dir, self.exec_id)
        if len((sock + ".tmp").encode()) > _MAX_SOCK_PATH:
            raise InvalidArgument(f"exec: state_dir too long for a unix socket path: "
                                  f"{self.state_dir}")
        if not isinstance(self.runtime, dict) or not isinstance(self.runtime.get("name"), str):
            raise InvalidArgument("exec: runtime needs a name")
        validate_request({"op": "exec", "exec_id": self.exec_id, "process": self.process})
        if not all(isinstance(v, bool) for v in (self.stdin, self.stdout, self.stderr)):
            raise InvalidArgument("exec: stdin, stdout and stderr are booleans")

    def to_json(self) -> bytes:
        return json.dumps({"exec": asdict(self)}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ExecResult:
    """A started exec: its supervisor's pid and the process's host pid."""

    supervisor_pid: int
    pid: int


# --- reports (zygote → daemon, helper → supervisor) ---------------------------------------

def read_report(fd: int, timeout: float, *, pid: int = 0, what: str = "supervisor"
                ) -> dict[str, Any]:
    """Read JSON lines from the pipe ``fd`` until a final one, and return it.

    Final: an error object, or one with more than a ``supervisor_pid`` member (the
    earlier pid-only lines are merged into it). The writer is ``pid``, or whoever a
    ``supervisor_pid`` line names: if it exits without a final line, or nothing final
    comes within ``timeout`` seconds, ``Internal``/``Unavailable`` is raised. EOF is
    not awaited (a created container's init may hold a copy of the write end until
    it execs), the writer's pidfd is.
    """
    import select
    import time

    deadline = time.monotonic() + timeout
    buf = b""
    merged: dict[str, Any] = {}
    pidfd = -1
    gone = False
    try:
        while True:
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    raise errors.Internal(f"{what}: garbled report {line[:100]!r}") from None
                if not isinstance(msg, dict):
                    raise errors.Internal(f"{what}: garbled report {line[:100]!r}")
                if "error" in msg:
                    return msg
                merged.update(msg)
                if set(msg) - {"supervisor_pid"}:
                    return merged
                pid = pid or int(msg["supervisor_pid"])
            if gone:
                raise errors.Internal(f"{what} exited before reporting"
                                      + (f" (pid {pid})" if pid else ""))
            if pid and pidfd < 0:
                try:
                    pidfd = os.pidfd_open(pid)
                except ProcessLookupError:
                    gone = True
            left = deadline - time.monotonic()
            if left <= 0:
                raise errors.Unavailable(f"{what}: no report within {timeout:.0f}s")
            ready = [fd] if gone else select.select([fd, *([pidfd] if pidfd >= 0 else [])],
                                                    [], [], left)[0]
            if pidfd in ready:
                gone = True  # whatever it wrote is in the pipe already: take it, then stop
            if fd in ready or gone:
                if gone:
                    os.set_blocking(fd, False)
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    data = b""
                if not data and not gone:
                    gone = True  # EOF: every writer is gone
                buf += data
                while gone and data:
                    try:
                        data = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    buf += data
    finally:
        if pidfd >= 0:
            os.close(pidfd)
