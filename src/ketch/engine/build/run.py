"""RUN: a command in a real container, through the engine's container service.

Lifecycle of one RUN step (dockerd's classic builder does the same)::

    create   a container of the step's parent image: the RUN argv as its command (no
             ENTRYPOINT), the stage's Env (+ ARG values), WorkingDir, User; the
             build's network mode; json-file log; healthcheck off
    follow   its log from before start, so every line reaches the build output
    start, wait for the exit
    diff     the container's writable layer as a plain tar → a layer blob
    remove   the container and its anonymous volumes (``rm``), also after a failure

A non-zero exit is :class:`RunFailed` in docker's words (``The command '/bin/sh -c
false' returned a non-zero code: 1``); the layer is not kept.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from ketch.errors import InvalidArgument, KetchError
from ketch.image import blobs

if TYPE_CHECKING:
    from ketch.engine.containers.service import ContainerService

__all__ = ["RunFailed", "RunSpec", "run_step"]

log = logging.getLogger(__name__)


class RunFailed(InvalidArgument):
    """A RUN command exited non-zero; ``code`` is its exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What one RUN runs: ``argv`` in a container of ``image``, with the stage's config."""

    image: str
    argv: tuple[str, ...]
    env: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    network_mode: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)


def _demux(buf: bytearray) -> list[bytes]:
    """Whole frames of Docker's multiplexed log format taken off the front of ``buf``."""
    out: list[bytes] = []
    while len(buf) >= 8:
        size = struct.unpack(">I", bytes(buf[4:8]))[0]
        if len(buf) < 8 + size:
            break
        out.append(bytes(buf[8:8 + size]))
        del buf[:8 + size]
    return out


async def run_step(svc: ContainerService, spec: RunSpec, say: Callable[[str], None], *,
                   remove: bool = True) -> tuple[str, blobs.LayerBlob]:
    """Run ``spec``; return (container ID, the layer blob of what it changed).

    ``say`` gets the build output: ``" ---> Running in <id>"`` and the command's
    output as it comes. Raises :class:`RunFailed` for a non-zero exit, other
    ``KetchError``s for a container that cannot be created or started.
    """
    from ketch.engine.containers import streams
    from ketch.engine.diff import diff_tar

    body: dict[str, Any] = {
        "Image": spec.image, "Cmd": list(spec.argv), "Entrypoint": [], "Env": list(spec.env),
        "WorkingDir": spec.workdir, "User": spec.user, "Tty": False,
        "AttachStdout": True, "AttachStderr": True, "Healthcheck": {"Test": ["NONE"]},
        "Labels": dict(spec.labels),
        "HostConfig": {"NetworkMode": spec.network_mode or "default",
                       "LogConfig": {"Type": "json-file", "Config": {}}},
    }
    created = await svc.create(None, body)
    cid: str = created["Id"]
    ok = False
    try:
        say(f" ---> Running in {cid[:12]}\n")
        await svc.start(cid)  # the log exists from here on; following it replays it all
        _, chunks = streams.logs(svc, cid, follow=True, stdout=True, stderr=True, since=None,
                                 until=None, timestamps=False, tail="all")
        buf = bytearray()
        async for chunk in chunks:
            buf += chunk
            for data in _demux(buf):
                say(data.decode("utf-8", "replace"))
        status = await svc.wait(cid)
        code = int(status.get("StatusCode", -1))
        if code != 0:
            shown = " ".join(spec.argv)
            raise RunFailed(f"The command '{shown}' returned a non-zero code: {code}", code)
        c = svc.get(cid)
        layer = await asyncio.to_thread(_diff_layer, svc, c.snapshot_key, diff_tar)
        ok = True
        return cid, layer
    finally:
        if remove or not ok:
            try:
                await svc.remove(cid, force=True, volumes=True)
                if ok:
                    say(f"Removing intermediate container {cid[:12]}\n")
            except KetchError as e:
                log.warning("build: removing container %s: %s", cid[:12], e)


#: files the runtime creates as mount points in a RUN container: not the command's work
_MOUNT_POINTS = frozenset({"etc/hosts", "etc/hostname", "etc/resolv.conf"})


def _diff_layer(svc: ContainerService, key: str,
                diff_tar: Callable[[Any, str, Any], None]) -> blobs.LayerBlob:
    with tempfile.TemporaryFile() as f:
        diff_tar(svc.snapshotter, key, f)
        f.seek(0)
        with tempfile.TemporaryFile() as clean:
            if _without_mount_points(f, clean):
                clean.seek(0)
                return blobs.ingest_layer(svc.content, clean, ref="build")
        f.seek(0)
        return blobs.ingest_layer(svc.content, f, ref="build")


def _without_mount_points(src: IO[bytes], out: IO[bytes]) -> bool:
    """Copy the layer tar ``src`` to ``out`` without the empty ``/etc/hosts``,
    ``/etc/hostname`` and ``/etc/resolv.conf`` the runtime made as mount points (and
    ``etc`` itself if nothing else of it changed); False, writing nothing, if there
    are none. Members are copied byte for byte."""
    with tarfile.open(fileobj=src, mode="r:") as tf:
        members = tf.getmembers()
        end = tf.offset
    drop = {m.name for m in members
            if m.name.lstrip("./") in _MOUNT_POINTS and m.isreg() and m.size == 0}
    if not drop:
        return False
    keep = [i for i, m in enumerate(members) if m.name not in drop]
    if not any(members[i].name.lstrip("./").startswith("etc/") for i in keep):
        keep = [i for i in keep if members[i].name.lstrip("./").rstrip("/") != "etc"]
    bounds = [m.offset for m in members] + [end]
    for i in keep:
        src.seek(bounds[i])
        left = bounds[i + 1] - bounds[i]
        while left:
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                raise InvalidArgument("build: the container's diff ends early")
            out.write(chunk)
            left -= len(chunk)
    out.write(bytes(1024))
    return True
