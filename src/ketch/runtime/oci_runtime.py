"""The ``OCIRuntime`` seam: how the engine drives a runtime.

ketch's own runtime, runc and crun all fit it. Lifecycle of one container id::

    create(id, bundle)  ->  status "created": namespaces, mounts and cgroup exist,
                            the user process has not been exec'd yet
    start(id)           ->  "running": the user process runs
    pause/resume(id)    ->  "paused" <-> "running" (cgroup freezer)
    kill(id, sig)       ->  signal delivered; once the process exits, "stopped"
    delete(id)          ->  state, cgroup and mounts are gone; the id is free again

``exec`` runs an extra process in a running container. ``state`` returns the
OCI state document (``ociVersion``, ``id``, ``status``, ``pid``, ``bundle``,
``annotations``). Errors are ``ketch.errors`` classes: ``NotFound`` for an
unknown id, ``Conflict`` for an id in use, ``FailedPrecondition`` for a
container in the wrong state, ``InvalidArgument`` for a bad config.
"""

from __future__ import annotations

import builtins
from typing import IO, Any, Protocol, runtime_checkable

__all__ = ["OCIRuntime", "Stdio"]


class Stdio:
    """File descriptors handed to the container's process (None: inherit)."""

    __slots__ = ("stderr", "stdin", "stdout")

    def __init__(self, stdin: int | IO[Any] | None = None, stdout: int | IO[Any] | None = None,
                 stderr: int | IO[Any] | None = None) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr


@runtime_checkable
class OCIRuntime(Protocol):
    """An OCI runtime the engine can drive, in-process or through a runc-style CLI."""

    name: str

    def create(self, container_id: str, bundle: str, *, console_socket: str | None = None,
               pid_file: str | None = None, stdio: Stdio | None = None) -> int:
        """Create the container; on return its status is ``created``. Returns the init's
        host pid."""

    def start(self, container_id: str) -> None:
        """Exec the user process of a ``created`` container."""

    def state(self, container_id: str) -> dict[str, Any]:
        """The OCI state document."""

    def kill(self, container_id: str, signal: int = 15, *, all_processes: bool = False) -> None:
        """Send ``signal`` to the init process (or every process with ``all_processes``)."""

    def delete(self, container_id: str, *, force: bool = False) -> None:
        """Remove a stopped container (``force``: kill it first)."""

    def list(self) -> list[dict[str, Any]]:
        """State documents of every container under this runtime's root."""

    def pause(self, container_id: str) -> None:
        """Freeze every process of the container."""

    def resume(self, container_id: str) -> None:
        """Thaw a paused container."""

    def ps(self, container_id: str) -> builtins.list[int]:
        """Host pids of the container's processes."""

    def update(self, container_id: str, resources: dict[str, Any]) -> None:
        """Apply OCI ``linux.resources`` to a live container."""

    def exec(self, container_id: str, process: dict[str, Any], *, detach: bool = False,
             console_socket: str | None = None, pid_file: str | None = None,
             stdio: Stdio | None = None) -> int:
        """Run ``process`` (an OCI process object) in the container.

        Returns the exit status when not detached, the host pid when detached.
        """

    def stats(self, container_id: str) -> dict[str, Any]:
        """Resource usage in runc's ``events --stats`` shape (the ``data`` member)."""
