"""What every ``ketch`` command shares: its context, how it is declared, its errors.

A command is a :class:`Command` — name, help, ``setup`` (adds its flags to an
argparse parser) and ``run(ctx, args) -> exit status``. Modules list their
commands in ``COMMANDS``; ``ketch.client.cli`` mounts them, some twice (``ps``
and ``container ls``), like docker's management commands.

Exit statuses follow the docker CLI: 0 ok, 1 an error (the engine's message on
stderr as ``Error response from daemon: ...``), 125 ``run``/``create`` could not
get the container going, 126/127 its command could not be executed / was not
found, otherwise the container's own status.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO, TextIO

from ketch.client.engine import ConnectionFailed, EngineClient
from ketch.errors import KetchError

__all__ = [
    "Command",
    "Context",
    "UsageError",
    "error_text",
    "go_duration",
    "parse_filters",
    "parse_kv",
    "parse_timestamp",
]

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
       "m": 60_000_000_000, "h": 3_600_000_000_000}


class UsageError(Exception):
    """Bad flags or arguments: reported as ``ketch: <message>`` with status 125 or 1."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Context:
    """The client and the standard streams a command uses (tests swap the streams)."""

    client: EngineClient
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    stdin: TextIO = field(default_factory=lambda: sys.stdin)

    @property
    def out_bytes(self) -> BinaryIO:
        """stdout for raw bytes (flushes the text layer first)."""
        self.out.flush()
        return self.out.buffer

    @property
    def in_bytes(self) -> BinaryIO:
        return self.stdin.buffer

    def error(self, message: str) -> None:
        self.err.write(message.rstrip("\n") + "\n")
        self.err.flush()


Runner = Callable[[Context, argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One verb: ``setup`` declares its flags, ``run`` does it."""

    name: str
    help: str
    setup: Callable[[argparse.ArgumentParser], None]
    run: Runner
    aliases: Sequence[str] = ()
    usage: str | None = None
    #: False for commands with a ``-h`` flag of their own (run/create: --hostname)
    add_help: bool = True


def error_text(e: BaseException) -> str:
    """How an error reads on stderr (docker's prefix for what the engine said)."""
    if isinstance(e, ConnectionFailed):
        return str(e)
    if isinstance(e, KetchError):
        return f"Error response from daemon: {e}"
    return f"Error: {e}"


def parse_kv(items: Sequence[str] | None, what: str, *, require_eq: bool = False,
             status: int = 1) -> dict[str, str]:
    """``["a=b", "c"]`` → ``{"a": "b", "c": ""}`` (UsageError for ``c`` if ``require_eq``)."""
    out: dict[str, str] = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        if not key or (require_eq and not eq):
            raise UsageError(f"invalid {what} {item!r}: expected key=value", status)
        out[key] = value
    return out


def parse_filters(items: Sequence[str] | None) -> dict[str, list[str]]:
    """``--filter a=b --filter a=c`` → ``{"a": ["b", "c"]}``."""
    out: dict[str, list[str]] = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"bad format of filter (expected name=value): {item}")
        out.setdefault(key.strip().lower(), []).append(value)
    return out


def go_duration(text: str) -> int | None:
    """Go's ``time.ParseDuration`` (``1m30s``, ``500ms``, ``0``) → nanoseconds; None if
    ``text`` is not a duration."""
    s = text.strip()
    sign = -1 if s.startswith("-") else 1
    s = s.lstrip("+-")
    if s == "0":
        return 0
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _NS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        return None
    return sign * int(total)


def parse_timestamp(value: str, now: float | None = None) -> str:
    """``--since``/``--until`` as the engine wants them: Unix seconds (``"1700000000.5"``).

    Takes what docker takes: Unix seconds, a duration back from now (``10m``,
    ``1h30m``), or an RFC 3339 date/time (``2024-05-01``, ``2024-05-01T10:00:00Z``;
    local time without a zone).
    """
    v = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", v):
        return v
    ns = go_duration(v)
    if ns is not None:
        return f"{(time.time() if now is None else now) - ns / 1e9:.9f}"
    try:
        t = datetime.fromisoformat(v.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"invalid value for time {value!r}: expected a Unix time, "
                         "a duration (10m) or an RFC 3339 date") from None
    return f"{t.timestamp():.9f}"
