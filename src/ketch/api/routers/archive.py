"""A container's filesystem over HTTP: ``docker cp`` (archive HEAD/GET/PUT), ``docker
export``, ``docker diff`` and ``docker commit``.

The work is ``ketch.engine.archive`` / ``ketch.engine.diff`` on the container's
filesystem view (its rootfs, mounted for the duration if the container is not
running, plus its volume and bind mounts); this router only reads parameters and
streams tarballs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

from ketch.api.httpstatus import json_response
from ketch.api.params import bool_arg, json_body
from ketch.api.router import Route
from ketch.engine.containers import ops
from ketch.errors import InvalidArgument
from ketch.httpserver import Request, Response

if TYPE_CHECKING:
    from ketch.engine.archive import FsView
    from ketch.engine.containers.model import Container
    from ketch.engine.containers.service import ContainerService

__all__ = ["ArchiveRouter"]

_CHUNK = 1 << 20


async def _spooled(work: Callable[[IO[bytes]], Any]) -> AsyncIterator[bytes]:
    """Run ``work(out)`` in a thread into a temp file, then stream the file."""
    f = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    try:
        await asyncio.to_thread(work, f)
        f.seek(0)
        while chunk := await asyncio.to_thread(f.read, _CHUNK):
            yield chunk
    finally:
        f.close()


class ArchiveRouter:
    def __init__(self, containers: ContainerService, images: Any = None) -> None:
        self.c = containers
        self.images = images

    def routes(self) -> list[Route]:
        p = "/containers/{id}"
        return [
            Route("HEAD", p + "/archive", self.head),
            Route("GET", p + "/archive", self.get),
            Route("PUT", p + "/archive", self.put),
            Route("GET", p + "/export", self.export),
            Route("GET", p + "/changes", self.changes),
            Route("POST", "/commit", self.commit),
        ]

    @contextlib.contextmanager
    def _view(self, c: Container, name: str) -> Iterator[FsView]:
        from ketch.engine.archive import FsView
        from ketch.engine.containers import setup

        mounted = setup.ensure_mounted(self.c, c)
        try:
            mounts = [(m["Destination"], m["Source"], not m.get("RW", True)) for m in c.mounts]
            for dest, path in (("/etc/hosts", c.hosts_path), ("/etc/hostname", c.hostname_path),
                               ("/etc/resolv.conf", c.resolv_conf_path)):
                if path and os.path.exists(path):
                    mounts.append((dest, path, False))
            yield FsView(root=self.c.rootfs_dir(c), mounts=mounts,
                         read_only_root=bool(c.host_config.get("ReadonlyRootfs")), name=name)
        finally:
            if mounted and c.state.status not in ("running", "paused", "restarting"):
                setup.unmount(self.c, c)

    def _path(self, request: Request) -> str:
        path = request.arg("path")
        if not path:
            raise InvalidArgument("path must not be empty")
        return path

    async def head(self, request: Request) -> Response:
        from ketch.engine.archive import stat_header, stat_path

        ref, path = request.params["id"], self._path(request)
        c = self.c.get(ref)

        def work() -> str:
            with self._view(c, ref) as view:
                return stat_header(stat_path(view, path))
        header = await asyncio.to_thread(work)
        return Response(200, [("X-Docker-Container-Path-Stat", header),
                              ("Content-Type", "application/x-tar")])

    async def get(self, request: Request) -> Response:
        from ketch.engine.archive import get_archive, stat_header, stat_path

        ref, path = request.params["id"], self._path(request)
        c = self.c.get(ref)

        def check() -> str:
            with self._view(c, ref) as view:
                return stat_header(stat_path(view, path))
        header = await asyncio.to_thread(check)  # 404 before any byte of the tar

        def work(out: IO[bytes]) -> None:
            with self._view(c, ref) as view:
                get_archive(view, path, out)
        return Response(200, [("X-Docker-Container-Path-Stat", header),
                              ("Content-Type", "application/x-tar")], _spooled(work))

    async def put(self, request: Request) -> Response:
        from ketch.engine.archive import put_archive

        ref, path = request.params["id"], self._path(request)
        c = self.c.get(ref)
        no_overwrite = bool_arg(request, "noOverwriteDirNonDir")
        copy_ids = bool_arg(request, "copyUIDGID")
        body = request.body_io()

        def work() -> None:
            with self._view(c, ref) as view:
                put_archive(view, path, body, no_overwrite, copy_ids)
        await asyncio.to_thread(work)
        return Response(200)

    async def export(self, request: Request) -> Response:
        from ketch.engine.archive import export

        ref = request.params["id"]
        c = self.c.get(ref)

        def work(out: IO[bytes]) -> None:
            with self._view(c, ref) as view:
                export(view, out)
        self.c.events.publish("container", "export", c.id, {"name": c.name.lstrip("/")})
        return Response(200, [("Content-Type", "application/x-tar")], _spooled(work))

    async def changes(self, request: Request) -> Response:
        from ketch.engine.diff import changes

        c = self.c.get(request.params["id"])
        out = await asyncio.to_thread(changes, self.c.snapshotter, c.snapshot_key)
        return json_response(out or None)

    async def commit(self, request: Request) -> Response:
        from ketch.engine.diff import diff_tar

        if self.images is None:
            raise InvalidArgument("commit is not available: no image service")
        ref = request.arg("container") or ""
        c = self.c.get(ref)
        config = json_body(request) or {}
        if not isinstance(config, dict):
            raise InvalidArgument("commit config must be a JSON object")
        pause = bool_arg(request, "pause", True)
        paused = False
        if pause and c.state.status == "running":
            await ops.pause(self.c, c.id)
            paused = True
        try:
            f = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
            try:
                await asyncio.to_thread(diff_tar, self.c.snapshotter, c.snapshot_key, f)
                f.seek(0)
                merged = dict(c.config)
                merged.update({k: v for k, v in config.items() if v is not None})
                changes = request.query.get("changes", [])
                image_id = await asyncio.to_thread(
                    self.images.commit, f, c.image_id, merged, request.arg("repo") or "",
                    request.arg("tag") or "", request.arg("comment") or "",
                    request.arg("author") or "", changes)
            finally:
                f.close()
        finally:
            if paused:
                await ops.unpause(self.c, c.id)
        return json_response({"Id": image_id}, 201)
