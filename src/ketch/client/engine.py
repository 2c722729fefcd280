"""``EngineClient``: the one interface every ketch tool drives an engine through.

The CLI, compose, the cluster agent, the web control plane and the security bench
all talk to an engine through this Protocol. :class:`ketch.client.remote.RemoteEngineClient`
implements it over the Docker Engine API; an in-process implementation (calling
``ketch.engine`` directly) can implement the same methods later, which is why nothing
here mentions HTTP: requests and results are the Engine API's JSON shapes as plain
dicts (``ContainerCreateRequest``, ``ContainerInspectResponse``, ``ImageSummary`` ...),
streams are iterators, and a hijacked attach/exec connection is a :class:`RawStream`.

Conventions shared by every method:

* Objects are named the way the Engine API names them: a container by ID, unique ID
  prefix or name; an image by reference or ID; a volume by name.
* Errors are :mod:`ketch.errors` classes with the engine's message (Docker's wording,
  e.g. ``No such container: x``): NotFound, Conflict (also "is not running"-style
  state errors), InvalidArgument, NotModified (start of a started container, stop of
  a stopped one), Unavailable (engine unreachable: :class:`ConnectionFailed`),
  Internal, ...
* A :data:`Stream` is a generator: iterate it to the end, or ``close()`` it to give
  up early; either way its connection is released. Streams that follow (logs with
  ``follow``, events without ``until``, stats) end when the engine ends them.
* ``filters`` are Docker's filters: ``{"status": ["running"], "label": ["a=b"]}``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeAlias, TypeVar, runtime_checkable

from ketch.errors import Unavailable

__all__ = [
    "STDERR",
    "STDIN",
    "STDOUT",
    "SYSTEMERR",
    "Body",
    "BuildAPI",
    "ConnectionFailed",
    "ContainerAPI",
    "EngineClient",
    "Filters",
    "ImageAPI",
    "RawStream",
    "Readable",
    "Stream",
    "SystemAPI",
    "VolumeAPI",
    "Waiter",
]

T = TypeVar("T")

#: A generator of results; exhaust or ``close()`` it (see the module doc).
Stream: TypeAlias = Generator[T, None, None]
#: Docker filters: name -> accepted values.
Filters: TypeAlias = Mapping[str, Sequence[str]]


@runtime_checkable
class Readable(Protocol):
    """Anything with a binary ``read(size)`` (files, sockets' makefile, progress wrappers)."""

    def read(self, size: int = -1, /) -> bytes:
        ...


#: An upload (tarballs for load, import, archive put): bytes, a binary file or chunks.
Body: TypeAlias = bytes | Readable | Iterable[bytes]

# Stream numbers of Docker's multiplexed stdout/stderr format (``container_logs``).
STDIN, STDOUT, STDERR, SYSTEMERR = 0, 1, 2, 3


class ConnectionFailed(Unavailable):
    """The engine could not be reached at all (no socket, refused, reset before a reply)."""


class RawStream(Protocol):
    """A bidirectional byte stream: a hijacked attach or exec connection.

    Lifecycle: ``write`` stdin bytes while ``read`` returns output; ``close_write``
    half-closes (the process sees EOF on stdin, output keeps coming); ``read``
    returns ``b""`` once the engine is done; ``close`` releases everything and is
    idempotent. ``multiplexed`` is True when output is in Docker's 8-byte-header
    frame format (no TTY) and False when it is the raw TTY byte stream — decode it
    with :func:`ketch.client.streams.frames`.
    """

    multiplexed: bool

    def read(self, size: int = 65536) -> bytes:
        """Up to ``size`` bytes, as soon as some are there; ``b""`` at end of stream."""
        ...

    def write(self, data: bytes) -> None:
        """Send all of ``data`` to the process's stdin."""
        ...

    def close_write(self) -> None:
        """Half-close: no more stdin; reading goes on."""
        ...

    def close(self) -> None:
        """Close both directions; safe to call more than once."""
        ...


class Waiter(Protocol):
    """A wait registered with the engine; ``result`` blocks until the condition is met."""

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """``{"StatusCode": int, "Error": {"Message": str} | None}``.

        TimeoutError if ``timeout`` seconds pass first (the wait stays registered
        and ``result`` may be called again); engine errors as usual.
        """
        ...

    def close(self) -> None:
        """Give up waiting and release the connection."""
        ...


class ContainerAPI(Protocol):
    """Containers and exec (``/containers/...``, ``/exec/...``)."""

    def container_create(self, config: Mapping[str, Any], *, name: str | None = None,
                         platform: str | None = None) -> dict[str, Any]:
        """Create a container from a ContainerCreateRequest body.

        Returns ``{"Id": ..., "Warnings": [...]}``. NotFound (``No such image: x``)
        when the image is not there (nothing is pulled); Conflict when ``name`` is taken.
        """
        ...

    def container_start(self, container: str) -> None:
        """Start a created or stopped container. NotModified if it is running."""
        ...

    def container_stop(self, container: str, *, timeout: int | None = None,
                       signal: str | None = None) -> None:
        """Send the stop signal, then SIGKILL after ``timeout`` seconds (the
        container's StopTimeout when None). NotModified if it is not running."""
        ...

    def container_kill(self, container: str, *, signal: str | None = None) -> None:
        """Send ``signal`` (name or number; SIGKILL when None). Conflict if not running."""
        ...

    def container_restart(self, container: str, *, timeout: int | None = None,
                          signal: str | None = None) -> None:
        """Stop (as ``container_stop``) and start again."""
        ...

    def container_remove(self, container: str, *, force: bool = False,
                         volumes: bool = False) -> None:
        """Remove; ``force`` kills a running one first, ``volumes`` removes its
        anonymous volumes. Conflict if it runs and ``force`` is False."""
        ...

    def container_inspect(self, container: str, *, size: bool = False) -> dict[str, Any]:
        """ContainerInspectResponse (with SizeRw/SizeRootFs when ``size``)."""
        ...

    def container_list(self, *, all: bool = False, limit: int | None = None,
                       size: bool = False, filters: Filters | None = None
                       ) -> list[dict[str, Any]]:
        """ContainerSummary list, newest first; running ones only unless ``all``."""
        ...

    def container_logs(self, container: str, *, stdout: bool = True, stderr: bool = True,
                       follow: bool = False, timestamps: bool = False,
                       since: str | None = None, until: str | None = None,
                       tail: str = "all") -> Stream[tuple[int, bytes]]:
        """``(stream, data)`` pieces: STDOUT or STDERR (always STDOUT for a TTY
        container, whose output is not multiplexed). ``since``/``until`` are Unix
        timestamps (``"1700000000.5"``); ``tail`` is a line count or ``"all"``."""
        ...

    def container_wait(self, container: str, *, condition: str = "not-running") -> Waiter:
        """Register a wait for ``condition`` (``not-running``, ``next-exit`` or
        ``removed``) and return at once; the request is on its way to the engine
        when this returns, so ``next-exit``/``removed`` before ``container_start``
        catch even a container that exits at once."""
        ...

    def container_attach(self, container: str, *, stdin: bool = False, stdout: bool = True,
                         stderr: bool = True, logs: bool = False, stream: bool = True,
                         detach_keys: str | None = None) -> RawStream:
        """Attach to the container's stdio. ``logs`` replays what was logged first."""
        ...

    def container_resize(self, container: str, height: int, width: int) -> None:
        """Set the TTY size of a TTY container."""
        ...

    def container_pause(self, container: str) -> None:
        """Freeze every process of the container (cgroup freezer)."""
        ...

    def container_unpause(self, container: str) -> None:
        """Thaw a paused container."""
        ...

    def container_rename(self, container: str, new_name: str) -> None:
        """Rename; Conflict if ``new_name`` is taken."""
        ...

    def container_top(self, container: str, ps_args: str | None = None) -> dict[str, Any]:
        """``{"Titles": [...], "Processes": [[...], ...]}`` of a running container."""
        ...

    def container_stats(self, container: str, *, stream: bool = True
                        ) -> Stream[dict[str, Any]]:
        """ContainerStatsResponse objects, one a second while ``stream``; one otherwise."""
        ...

    def container_changes(self, container: str) -> list[dict[str, Any]]:
        """Filesystem changes vs the image: ``[{"Path": ..., "Kind": 0|1|2}]``
        (0 modified, 1 added, 2 deleted)."""
        ...

    def container_archive_stat(self, container: str, path: str) -> dict[str, Any]:
        """ContainerPathStat of ``path`` (name, size, mode, mtime, linkTarget).
        NotFound if it does not exist."""
        ...

    def container_archive_get(self, container: str, path: str
                              ) -> tuple[dict[str, Any], Stream[bytes]]:
        """``path`` as a tar stream, with its ContainerPathStat."""
        ...

    def container_archive_put(self, container: str, path: str, tar: Body, *,
                              no_overwrite_dir_non_dir: bool = False,
                              copy_uid_gid: bool = False) -> None:
        """Extract the tar ``tar`` into the directory ``path`` of the container."""
        ...

    def container_export(self, container: str) -> Stream[bytes]:
        """The container's whole filesystem as a tar stream."""
        ...

    def exec_create(self, container: str, cmd: Sequence[str], *, stdin: bool = False,
                    stdout: bool = True, stderr: bool = True, tty: bool = False,
                    env: Sequence[str] | None = None, user: str | None = None,
                    workdir: str | None = None, privileged: bool = False,
                    detach_keys: str | None = None) -> str:
        """Create an exec instance in a running container; returns its ID.
        Conflict if the container is not running (or is paused)."""
        ...

    def exec_start(self, exec_id: str, *, detach: bool = False, tty: bool = False,
                   console_size: tuple[int, int] | None = None) -> RawStream | None:
        """Start it: None when ``detach``, else the attached stdio (see RawStream)."""
        ...

    def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        """ExecInspectResponse (Running, ExitCode, Pid, ProcessConfig, ...)."""
        ...

    def exec_resize(self, exec_id: str, height: int, width: int) -> None:
        """Set the TTY size of a TTY exec."""
        ...


class ImageAPI(Protocol):
    """Images (``/images/...``); pull, push and login go to a registry through the daemon."""

    def image_list(self, *, all: bool = False, digests: bool = False,
                   filters: Filters | None = None) -> list[dict[str, Any]]:
        """ImageSummary list."""
        ...

    def image_inspect(self, image: str) -> dict[str, Any]:
        """ImageInspect. NotFound ``No such image: x``."""
        ...

    def image_remove(self, image: str, *, force: bool = False,
                     noprune: bool = False) -> list[dict[str, Any]]:
        """Untag and/or delete; ``[{"Untagged": ...} | {"Deleted": ...}]``.
        Conflict while a container uses it (unless ``force``)."""
        ...

    def image_tag(self, image: str, repo: str, tag: str | None = None) -> None:
        """Name ``image`` ``repo:tag`` (``latest`` when ``tag`` is None)."""
        ...

    def image_load(self, tar: Body, *, quiet: bool = False) -> Stream[dict[str, Any]]:
        """Load a ``docker save`` (or OCI layout) tarball; progress messages
        (``{"stream": "Loaded image: x\\n"}``, ``{"errorDetail": ...}``) as they come.
        An ``error`` message in the stream is raised as Internal/InvalidArgument."""
        ...

    def image_save(self, images: Sequence[str]) -> Stream[bytes]:
        """The named images as one ``docker save`` tarball."""
        ...

    def image_import(self, tar: Body, *, repo: str | None = None, tag: str | None = None,
                     message: str | None = None, changes: Sequence[str] = ()
                     ) -> Stream[dict[str, Any]]:
        """A filesystem tarball → a one-layer image; ``changes`` are Dockerfile
        instructions (``CMD ["sh"]``, ``ENV A=b``). The last status is the image ID."""
        ...

    def image_history(self, image: str) -> list[dict[str, Any]]:
        """HistoryResponseItem list, newest first."""
        ...

    def image_prune(self, *, filters: Filters | None = None) -> dict[str, Any]:
        """Remove unused images (dangling only unless ``{"dangling": ["false"]}``);
        ``{"ImagesDeleted": [...], "SpaceReclaimed": n}``."""
        ...

    def image_pull(self, image: str, *, tag: str | None = None, platform: str | None = None,
                   auth: str = "") -> Stream[dict[str, Any]]:
        """Pull ``image`` (``tag`` may be a digest) from its registry; Docker's progress
        messages as they come. ``auth`` is the ``X-Registry-Auth`` value ("" anonymous).
        An error before any progress is raised at once (NotFound, Unauthorized...); one
        in the stream is raised when it arrives."""
        ...

    def image_push(self, image: str, *, tag: str | None = None,
                   auth: str = "") -> Stream[dict[str, Any]]:
        """Push ``image`` (every tag of the repository when neither it nor ``tag`` names
        one); progress messages as for ``image_pull``."""
        ...

    def registry_login(self, username: str, password: str, server: str = ""
                       ) -> dict[str, Any]:
        """Check credentials against a registry through the daemon;
        ``{"Status": "Login Succeeded", "IdentityToken": ...}``, Unauthorized if wrong."""
        ...


class VolumeAPI(Protocol):
    """Volumes (``/volumes/...``)."""

    def volume_create(self, name: str | None = None, *, driver: str | None = None,
                      driver_opts: Mapping[str, str] | None = None,
                      labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Create (or return the existing) volume; a generated name when None."""
        ...

    def volume_list(self, *, filters: Filters | None = None) -> dict[str, Any]:
        """``{"Volumes": [Volume, ...], "Warnings": [...]}``."""
        ...

    def volume_inspect(self, name: str) -> dict[str, Any]:
        """Volume. NotFound ``No such volume: x``."""
        ...

    def volume_remove(self, name: str, *, force: bool = False) -> None:
        """Remove; Conflict while a container uses it."""
        ...

    def volume_prune(self, *, filters: Filters | None = None) -> dict[str, Any]:
        """Remove unused volumes; ``{"VolumesDeleted": [...], "SpaceReclaimed": n}``."""
        ...


class SystemAPI(Protocol):
    """Engine-wide calls (``/_ping``, ``/version``, ``/info``, ``/events``, ``/system/df``)."""

    def ping(self) -> str:
        """Check the engine answers; returns the API version it speaks."""
        ...

    def version(self) -> dict[str, Any]:
        """SystemVersion of the engine."""
        ...

    def info(self) -> dict[str, Any]:
        """SystemInfo of the engine."""
        ...

    def events(self, *, since: str | None = None, until: str | None = None,
               filters: Filters | None = None) -> Stream[dict[str, Any]]:
        """EventMessage objects; follows until ``until`` (a Unix timestamp) if given,
        forever otherwise."""
        ...

    def df(self) -> dict[str, Any]:
        """Disk usage: ``{"LayersSize", "Images", "Containers", "Volumes", "BuildCache"}``."""
        ...


@runtime_checkable
class BuildAPI(Protocol):
    """Image builds (``POST /build``, dockerd's classic builder protocol).

    Part of :class:`EngineClient`; tools that only build can ask for this narrower
    Protocol.
    """

    def image_build(self, context: Body, *, tags: Sequence[str] = (),
                    dockerfile: str | None = None,
                    build_args: Mapping[str, str | None] | None = None,
                    target: str | None = None, no_cache: bool = False, pull: bool = False,
                    labels: Mapping[str, str] | None = None, quiet: bool = False,
                    network_mode: str | None = None, platform: str | None = None,
                    ketch_context: str | None = None) -> Stream[dict[str, Any]]:
        """Build from ``context`` (a tar: the Dockerfile and the files COPY takes).

        Yields docker's classic build messages (``{"stream": "Step 1/3 : ..."}``,
        ``{"aux": {"ID": ...}}``); a build error in the stream is raised when it
        arrives (InvalidArgument with the step's message). With ``ketch_context`` (a
        key, see :meth:`build_context_check`) ``context`` is a synced tar: its first
        member ``.ketch-context.json`` is the manifest, then come the files the engine
        asked for; Conflict (409) when the engine holds a file it was not sent no longer.
        """
        ...

    def build_context_check(self, key: str, entries: Sequence[Mapping[str, Any]]
                            ) -> list[str] | None:
        """Which files of a context manifest the engine lacks (a ketch extension).

        ``key`` names the context (16 to 64 lower-case hex digits); ``entries`` are
        records ``{"path", "type", "mode", "size", "mtime_ns", "token", "target"?}``
        (``docs/build.md``, "The context cache"). Returns the paths to send, or None
        when the engine keeps no contexts (a dockerd): send the whole tar then.
        """
        ...


class EngineClient(ContainerAPI, ImageAPI, VolumeAPI, SystemAPI, BuildAPI, Protocol):
    """Everything a ketch tool can ask of an engine. Consumers that need less should
    declare the narrower Protocol (``ContainerAPI``, ``ImageAPI`` ...)."""

    def close(self) -> None:
        """Release idle connections; open streams stay usable until closed."""
        ...
