"""Container state under the runtime root, shared by every ketch-runtime process.

Layout::

    <root>/                      default /run/ketch-runtime (runc: /run/runc)
      <id>/
        state.json               ketch's record: OCI state fields + what later verbs need
                                 (config, cgroupsPath, init start time); written atomically
        exec.fifo                exists while the container is "created"; start() writes
                                 one byte into it and removes it
        lock                     flock(2) held by any verb that changes this container

The status is never trusted from disk alone: it is derived from whether the init
process (pid plus its start time, against pid reuse) is alive, whether
exec.fifo exists and whether the cgroup is frozen.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator

from ketch.errors import InvalidArgument, NotFound

# typing costs ms to import on every container start; annotations are strings here
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "DEFAULT_ROOT",
    "ContainerDir",
    "Status",
    "atomic_write",
    "proc_start_time",
    "validate_id",
]

DEFAULT_ROOT = "/run/ketch-runtime"
_ID_RE = re.compile(r"^[\w+\-.]+$")


class Status:
    """OCI statuses (str values appear on the wire)."""

    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


def validate_id(container_id: str) -> None:
    """Container ids are path components: letters, digits, ``_+-.``, not ``.``/``..``."""
    if not container_id or container_id in (".", "..") or not _ID_RE.match(container_id):
        raise InvalidArgument(f"invalid container id format: {container_id!r}")


def atomic_write(path: str, data: bytes, mode: int = 0o600, *, sync: bool = True) -> None:
    """Write ``data`` to ``path`` by write-then-rename so readers never see half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def proc_start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of a live, non-zombie ``pid``; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: fields resume after the last ')'
    rest = data[data.rindex(b")") + 2 :].split()
    if rest[0] in (b"Z", b"X"):
        return None
    return int(rest[19])


class ContainerDir:
    """One container's directory under the root. Cheap to construct; touches no disk."""

    __slots__ = ("fifo", "id", "path", "root", "state_file")

    def __init__(self, root: str, container_id: str) -> None:
        validate_id(container_id)
        self.root = root
        self.id = container_id
        self.path = os.path.join(root, container_id)
        self.state_file = os.path.join(self.path, "state.json")
        self.fifo = os.path.join(self.path, "exec.fifo")

    def exists(self) -> bool:
        return os.path.exists(self.state_file)

    def load(self) -> dict[str, Any]:
        """The stored record; NotFound when the container does not exist."""
        try:
            with open(self.state_file, "rb") as f:
                data: dict[str, Any] = json.loads(f.read())
                return data
        except FileNotFoundError:
            raise NotFound(f"container {self.id} does not exist") from None
        except ValueError as e:
            raise NotFound(f"container {self.id} does not exist (corrupt state: {e})") from None

    def save(self, record: dict[str, Any]) -> None:
        # Atomic (rename) but not fsync'd: runtime state describes live processes and
        # lives on tmpfs (/run) by default; after a power loss there is nothing it
        # could describe, so durability would only cost time.
        atomic_write(self.state_file, json.dumps(record, separators=(",", ":")).encode(),
                     sync=False)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold this container's lock (exclusive flock) for the duration."""
        try:
            fd = os.open(os.path.join(self.path, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o600)
        except FileNotFoundError:
            raise NotFound(f"container {self.id} does not exist") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not os.path.exists(self.state_file):
                # A concurrent delete removed the container while we waited; our open
                # may have recreated the lock file in its directory: take it back.
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.path, "lock"))
                with contextlib.suppress(OSError):
                    os.rmdir(self.path)
                raise NotFound(f"container {self.id} does not exist")
            yield
        finally:
            os.close(fd)


def list_ids(root: str) -> list[str]:
    """Ids of every container directory under ``root`` (sorted)."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if os.path.exists(os.path.join(root, n, "state.json")))
