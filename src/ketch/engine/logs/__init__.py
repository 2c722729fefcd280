"""Container log drivers: what a container's supervisor writes, and what ``/logs`` reads.

Lifecycle. The supervisor of a running container owns one :class:`LogDriver`. It
hands every chunk it reads from the container's stdout or stderr to ``write`` as it
arrives (chunks need not be lines: the driver splits and buffers), and calls
``close`` once both streams reached EOF. ``close`` flushes a last unterminated line.

The API's ``GET /containers/{id}/logs`` uses a :class:`LogReader` over the same
storage; readers never talk to the writer, they only look at what it stored, so
they work after the container (or the daemon) is gone, and while it still writes
(``follow``).

Terms:

- *entry*: one stored record: a stream name, a timestamp, and at most 16 KiB of
  bytes. A line longer than that is stored as several entries; all but the last
  lack the trailing newline (*partial* entries), as in Docker.
- *timestamp*: nanoseconds since the Unix epoch, UTC (``time.time_ns()``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Literal, NamedTuple, Protocol

__all__ = ["LogDriver", "LogEntry", "LogReader", "Stream", "Tail"]

Stream = Literal["stdout", "stderr"]
# "all" (or None, or a negative count) means every entry; 0 means none.
Tail = int | Literal["all"] | None


class LogEntry(NamedTuple):
    """One entry as read back: its stream, its timestamp (ns since the epoch), its bytes."""

    stream: str
    ts: int
    data: bytes


class LogDriver(Protocol):
    """Where a supervisor sends a container's output. Safe to call from several threads."""

    def write(self, stream: Stream, data: bytes, ts: int | None = None) -> None:
        """Store ``data`` read from ``stream`` at ``ts`` (default: now).

        Complete lines are stored at once; an unterminated rest waits for the next
        chunk of the same stream, up to 16 KiB.
        """
        ...

    def close(self) -> None:
        """Flush unterminated lines as partial entries and release the storage."""
        ...


class LogReader(Protocol):
    """Reads what a :class:`LogDriver` stored, oldest first."""

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
        """Yield stored entries, then (``follow``) new ones until ``stop`` is set.

        ``tail`` keeps the last N entries of all streams before the stream and time
        filters apply (Docker's order). ``since``/``until`` are inclusive bounds in
        ns. ``timestamps`` prefixes each entry's data with its RFC 3339 time and a
        space, as ``docker logs -t`` shows it.
        """
        ...
