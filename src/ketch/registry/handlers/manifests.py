"""``/v2/<name>/manifests/<reference>``: manifests by tag or digest.

GET/HEAD answer with the stored bytes and their media type, ``Docker-Content-Digest``
and ``Content-Length``. PUT reads at most ``max_manifest_bytes`` (413 ``SIZE_INVALID``
beyond), and ``Registry.put_manifest`` checks the rest (media type, JSON, digest,
referenced blobs); a manifest with a ``subject`` is answered with ``OCI-Subject``.
DELETE by digest removes the manifest (and its tags); DELETE by tag removes only the
tag — which Distribution cannot do.
"""

from __future__ import annotations

from ketch.httpserver import BadRequest, Request, Response
from ketch.oci.digest import Digest
from ketch.registry.errors import SizeInvalid
from ketch.registry.handlers import Context
from ketch.registry.names import check_name, parse_reference

__all__ = ["delete_manifest", "get_manifest", "put_manifest"]


async def get_manifest(ctx: Context, req: Request, name: str, reference: str) -> Response:
    check_name(name)
    ref = parse_reference(reference)
    if req.method == "HEAD":
        desc = await ctx.run(ctx.registry.resolve, name, ref)
        body = b""
    else:
        desc, body = await ctx.run(ctx.registry.get_manifest, name, ref)
    headers = [("Content-Type", desc.media_type), ("Docker-Content-Digest", str(desc.digest)),
               ("ETag", f'"{desc.digest}"'), ("Content-Length", str(desc.size))]
    return Response(200, headers, body)


async def put_manifest(ctx: Context, req: Request, name: str, reference: str) -> Response:
    check_name(name)
    ref = parse_reference(reference)
    limit = ctx.registry.max_manifest_bytes
    if req.stream is not None:
        try:
            body = await req.stream.readall(limit=limit)
        except BadRequest as e:
            if e.status != 413:
                raise
            raise SizeInvalid(f"manifest larger than {limit} bytes", status=413) from None
    else:
        body = req.body
    result = await ctx.run(ctx.registry.put_manifest, name, ref,
                           req.headers.get("content-type"), body)
    ctx.metrics.count("manifest_pushed")
    headers = [("Location", f"/v2/{name}/manifests/{result.digest}"),
               ("Docker-Content-Digest", str(result.digest)), ("Content-Length", "0")]
    if result.subject is not None:
        headers.append(("OCI-Subject", str(result.subject)))
    return Response(201, headers)


async def delete_manifest(ctx: Context, req: Request, name: str, reference: str) -> Response:
    check_name(name)
    ref = parse_reference(reference)
    if isinstance(ref, Digest):
        await ctx.run(ctx.registry.delete_manifest, name, ref)
        ctx.metrics.count("manifest_deleted")
    else:
        await ctx.run(ctx.registry.delete_tag, name, ref)
        ctx.metrics.count("tag_deleted")
    return Response(202, [("Content-Length", "0")])
