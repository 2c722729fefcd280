"""``/v2/<name>/blobs/uploads/…``: pushing blobs.

* ``POST …/uploads/`` starts an upload (202 + Location); with ``?digest=`` the body
  is the whole blob (monolithic, 201); with ``?mount=<digest>&from=<repo>`` the blob is
  linked from another repository (201), and with ``mount`` but no ``from`` from any
  repository that has it (automatic mount); when there is nothing to mount an upload
  starts instead, as the spec says.
* ``PATCH …/uploads/<id>`` appends a chunk; ``Content-Range: a-b`` must start where the
  upload stands, else 416 ``RANGE_INVALID`` (the ``Range`` header says where it stands).
  Without ``Content-Range`` the body is simply appended (streamed upload).
* ``PUT …/uploads/<id>?digest=`` appends an optional last chunk, checks the digest
  and makes the blob (201); ``GET`` reports the status (204 + ``Range``); ``DELETE``
  cancels (204).

A completed upload (monolithic or not) is notified as a ``push`` and a mount as a
``mount`` naming ``fromRepository`` (Distribution's events; an automatic mount, which
names no source, has none); the target is the blob: media type
``application/octet-stream``, digest, size, repository and URL.

Bodies go from the socket to storage in pieces of ``_PIECE`` bytes: the socket is read
straight into one of two preallocated buffers (``BodyStream.readinto``) while the other
is hashed and written in a worker thread — one thread hop per piece, no per-chunk copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any, cast

from ketch.httpserver import BodyStream, Request, Response
from ketch.oci.digest import Digest
from ketch.registry.errors import (
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    RangeInvalid,
)
from ketch.registry.handlers import Context
from ketch.registry.names import check_name, is_upload_id, parse_digest
from ketch.registry.notify import BLOB_MEDIA_TYPE
from ketch.registry.repository import UploadAppender

__all__ = ["cancel_upload", "finish_upload", "patch_upload", "start_upload", "upload_status"]

_PIECE = 4 << 20
_CONTENT_RANGE = re.compile(r"(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?")


def _location(name: str, upload_id: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload_id}"


def _range_value(size: int) -> str:
    return f"0-{max(size - 1, 0)}"


def _status_headers(name: str, upload_id: str, size: int) -> list[tuple[str, str]]:
    return [("Location", _location(name, upload_id)), ("Range", _range_value(size)),
            ("Docker-Upload-UUID", upload_id), ("Content-Length", "0")]


def _blob_target(name: str, digest: Digest, size: int) -> dict[str, Any]:
    """A blob as a notification's target (Distribution sends the stored blob's media
    type, which is always ``application/octet-stream``)."""
    return {"media_type": BLOB_MEDIA_TYPE, "digest": str(digest), "size": size,
            "url": f"/v2/{name}/blobs/{digest}"}


def _created(name: str, digest: Digest) -> Response:
    return Response(201, [("Location", f"/v2/{name}/blobs/{digest}"),
                          ("Docker-Content-Digest", str(digest)), ("Content-Length", "0")])


def _check_id(upload_id: str) -> str:
    if not is_upload_id(upload_id):
        raise BlobUploadUnknown(detail={"uuid": upload_id[:80]})
    return upload_id


def _write_piece(app: UploadAppender, buf: bytearray, n: int) -> None:
    with memoryview(buf) as view, view[:n] as piece:
        # UploadAppender.write hands the bytes to FileWriter.write and Digester.update,
        # both of which take any buffer; its annotation says bytes.
        app.write(cast(bytes, piece))


async def _pump(ctx: Context, stream: BodyStream, app: UploadAppender) -> None:
    """Copy the body into ``app``: fill one buffer from the socket while the worker
    hashes and writes the other. Bytes that arrived before a client hung up are
    written before its error is raised (``BodyStream`` hands them out first)."""
    loop = asyncio.get_running_loop()
    buffers = (bytearray(_PIECE), bytearray(_PIECE))
    pending: asyncio.Future[None] | None = None
    turn = 0
    try:
        while True:
            buf = buffers[turn]
            n = await stream.readinto(buf)
            if pending is not None:
                p, pending = pending, None
                await p
            if not n:
                break
            pending = loop.run_in_executor(ctx.executor, _write_piece, app, buf, n)
            turn ^= 1
    finally:
        if pending is not None:  # reading failed while a piece was being written:
            await pending  # let it finish; a write error wins over the read error


async def _receive(ctx: Context, req: Request, name: str, upload_id: str, *,
                   commit: bool) -> int:
    """Append the request body to the upload; the upload's size afterwards."""
    app = await ctx.run(ctx.registry.appender, name, upload_id)
    try:
        if req.stream is not None:
            await _pump(ctx, req.stream, app)
        elif req.body:
            await ctx.run(app.write, req.body)
    except (asyncio.IncompleteReadError, ConnectionError):
        # The client went away mid-body: every byte that arrived is written, so the
        # upload can be resumed from what its status reports.
        await asyncio.shield(ctx.run(app.close))
        raise
    except BaseException:
        await asyncio.shield(ctx.run(app.abort))
        raise
    await ctx.run(app.commit if commit else app.close)
    return app.size


def _check_content_range(req: Request, size: int, name: str, upload_id: str) -> None:
    header = req.headers.get("content-range")
    if header is None:
        return
    m = _CONTENT_RANGE.fullmatch(header.strip())
    if m is None:
        raise BlobUploadInvalid(f"malformed Content-Range {header[:60]!r}")
    first, last = int(m.group(1)), int(m.group(2))
    length = req.stream.length if req.stream is not None else len(req.body)
    if first != size or last < first or (length is not None and length != last - first + 1):
        raise RangeInvalid(f"chunk {first}-{last} does not continue the upload at {size}",
                           headers=_status_headers(name, upload_id, size)[:3])


async def start_upload(ctx: Context, req: Request, name: str) -> Response:
    check_name(name)
    reg = ctx.registry
    mount = req.arg("mount")
    if mount:
        d = parse_digest(mount)
        source = req.arg("from")
        if source is not None:
            check_name(source)
        if await ctx.run(reg.mount_blob, name, d, source or None):
            ctx.metrics.count("blob_mounted")
            if ctx.notifier is not None:
                with contextlib.suppress(BlobUnknown):  # deleted meanwhile: no event
                    size = await ctx.run(reg.blob_size, name, d)
                    ctx.emit(req, "mount", name, from_repository=source or "",
                             **_blob_target(name, d, size))
            return _created(name, d)
    digest_arg = req.arg("digest")
    expected = parse_digest(digest_arg) if digest_arg is not None else None
    upload_id = await ctx.run(reg.start_upload, name)
    if expected is None:
        return Response(202, _status_headers(name, upload_id, 0))
    async with ctx.upload_lock(upload_id):
        try:
            await _receive(ctx, req, name, upload_id, commit=True)
            size = await ctx.run(reg.finish_upload, name, upload_id, expected)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(ctx.run(reg.cancel_upload, name, upload_id))
            raise
        finally:
            ctx.forget_upload(upload_id)
    ctx.metrics.count("blob_pushed")
    ctx.emit(req, "push", name, **_blob_target(name, expected, size))
    return _created(name, expected)


async def patch_upload(ctx: Context, req: Request, name: str, upload_id: str) -> Response:
    check_name(name)
    _check_id(upload_id)
    async with ctx.upload_lock(upload_id):
        size = await ctx.run(ctx.registry.upload_size, name, upload_id)
        _check_content_range(req, size, name, upload_id)
        size = await _receive(ctx, req, name, upload_id, commit=False)
    return Response(202, _status_headers(name, upload_id, size))


async def finish_upload(ctx: Context, req: Request, name: str, upload_id: str) -> Response:
    check_name(name)
    _check_id(upload_id)
    digest_arg = req.arg("digest")
    if not digest_arg:
        raise DigestInvalid("the digest query parameter is required to finish an upload")
    expected = parse_digest(digest_arg)
    async with ctx.upload_lock(upload_id):
        size = await ctx.run(ctx.registry.upload_size, name, upload_id)
        _check_content_range(req, size, name, upload_id)
        await _receive(ctx, req, name, upload_id, commit=True)
        try:
            size = await ctx.run(ctx.registry.finish_upload, name, upload_id, expected)
        finally:
            ctx.forget_upload(upload_id)
    ctx.metrics.count("blob_pushed")
    ctx.emit(req, "push", name, **_blob_target(name, expected, size))
    return _created(name, expected)


async def upload_status(ctx: Context, req: Request, name: str, upload_id: str) -> Response:
    check_name(name)
    _check_id(upload_id)
    size = await ctx.run(ctx.registry.upload_size, name, upload_id)
    return Response(204, _status_headers(name, upload_id, size)[:3])


async def cancel_upload(ctx: Context, req: Request, name: str, upload_id: str) -> Response:
    check_name(name)
    _check_id(upload_id)
    async with ctx.upload_lock(upload_id):
        await ctx.run(ctx.registry.cancel_upload, name, upload_id)
    ctx.forget_upload(upload_id)
    return Response(204, [])
