"""``GET/HEAD/DELETE /v2/<name>/blobs/<digest>``: blobs, with single byte ranges.

A GET answers with the file itself (``FileBody``: 1 MiB reads and writes on TCP). A
``Range: bytes=a-b`` / ``a-`` / ``-n`` request gets 206 and ``Content-Range``; a range
past the end gets 416 ``RANGE_INVALID`` with ``Content-Range: bytes */size``; several
ranges are answered with the whole blob (allowed by RFC 9110).
"""

from __future__ import annotations

from typing import BinaryIO

from ketch.httpserver import FileBody, Request, Response
from ketch.oci.digest import Digest
from ketch.registry.errors import RangeInvalid
from ketch.registry.handlers import Context
from ketch.registry.names import check_name, parse_digest
from ketch.registry.repository import Registry

__all__ = ["delete_blob", "get_blob", "parse_range"]


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive for a single satisfiable byte range; None for no, a
    malformed or a multi-range (the whole blob is sent); ``RangeInvalid`` (416) if
    unsatisfiable."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = (p.strip() for p in spec.strip().partition("-"))
    if not dash or not (first_s or last_s) or not all(p.isdigit() for p in (first_s, last_s)
                                                      if p):
        return None  # malformed: ignored, as RFC 9110 allows
    bad = RangeInvalid(f"range {header[:60]!r} not satisfiable for {size} bytes",
                       headers=[("Content-Range", f"bytes */{size}")])
    if not first_s:  # suffix: the last n bytes
        n = int(last_s)
        if n == 0 or size == 0:
            raise bad
        return max(0, size - n), size - 1
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if first >= size or last < first:
        raise bad
    return first, min(last, size - 1)


def _open(registry: Registry, name: str, d: Digest) -> tuple[int, BinaryIO]:
    size = registry.blob_size(name, d)
    return size, registry.open_blob(d)


async def get_blob(ctx: Context, req: Request, name: str, digest: str) -> Response:
    """HEAD: one storage round (the link and the size); GET: the same round also opens
    the file, which the server then sends with sendfile(2) and closes."""
    check_name(name)
    d = parse_digest(digest)
    headers = [("Docker-Content-Digest", str(d)), ("Content-Type", "application/octet-stream"),
               ("Accept-Ranges", "bytes"), ("ETag", f'"{d}"'),
               ("Cache-Control", "max-age=31536000")]
    if req.method == "HEAD":
        size = await ctx.run(ctx.registry.blob_size, name, d)
        return Response(200, [*headers, ("Content-Length", str(size))])
    size, f = await ctx.run(_open, ctx.registry, name, d)
    try:
        rng = parse_range(req.headers.get("range"), size)
    except BaseException:
        f.close()
        raise
    if rng is None:
        return Response(200, headers, FileBody(f, 0, size))
    first, last = rng
    headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
    return Response(206, headers, FileBody(f, first, last - first + 1))


async def delete_blob(ctx: Context, req: Request, name: str, digest: str) -> Response:
    check_name(name)
    d = parse_digest(digest)
    await ctx.run(ctx.registry.delete_blob, name, d)
    ctx.metrics.count("blob_deleted")
    ctx.emit(req, "delete", name, digest=str(d))
    return Response(202, [("Content-Length", "0")])
