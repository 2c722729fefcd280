"""``/v2/<name>/manifests/<reference>``: manifests by tag or digest.

GET/HEAD answer with the stored bytes and their media type, ``Docker-Content-Digest``
and ``Content-Length``. The ``Accept`` header is honoured the way Distribution does it:
when a client lists media types and none of them (nor a ``*/*`` or ``application/*``
wildcard) is the stored manifest's type, the answer is 404 ``MANIFEST_UNKNOWN`` saying
which type was found — the registry never converts a manifest, and a client that cannot
read an index must not be handed one. No ``Accept`` header accepts everything.

PUT reads at most ``max_manifest_bytes`` (413 ``SIZE_INVALID`` beyond), and
``Registry.put_manifest`` checks the rest (media type, JSON, digest, referenced blobs);
a manifest with a ``subject`` is answered with ``OCI-Subject``. A PUT by digest may
carry ``?tag=a&tag=b`` (distribution-spec, after 1.1): each tag is applied and echoed in
an ``OCI-Tag`` header. DELETE by digest removes the manifest (and its tags); DELETE by
tag removes only the tag — which Distribution cannot do.

Successful pushes and deletes are sent to the notification endpoints (``ctx.emit``).
"""

from __future__ import annotations

from ketch.httpserver import BadRequest, Request, Response
from ketch.oci.digest import Digest
from ketch.registry.errors import ManifestInvalid, ManifestUnknown, SizeInvalid
from ketch.registry.handlers import Context
from ketch.registry.names import check_name, is_tag, parse_reference

__all__ = ["accepts", "delete_manifest", "get_manifest", "put_manifest"]


def accepts(header_values: list[str], media_type: str) -> bool:
    """Whether the ``Accept`` header values admit ``media_type`` (no header: yes)."""
    listed: set[str] = set()
    for value in header_values:
        for item in value.split(","):
            kind = item.split(";", 1)[0].strip().lower()
            if kind:
                listed.add(kind)
    if not listed:
        return True
    major = media_type.split("/", 1)[0]
    return bool(listed & {media_type, "*/*", f"{major}/*"})


async def get_manifest(ctx: Context, req: Request, name: str, reference: str) -> Response:
    check_name(name)
    ref = parse_reference(reference)
    if req.method == "HEAD":
        desc = await ctx.run(ctx.registry.resolve, name, ref)
        body = b""
    else:
        desc, body = await ctx.run(ctx.registry.get_manifest, name, ref)
    if not accepts(req.headers.get_all("accept"), desc.media_type):
        raise ManifestUnknown(
            f"manifest of type {desc.media_type} found, but the Accept header does not "
            "include it", detail={"name": name, "reference": reference,
                                  "mediaType": desc.media_type})
    headers = [("Content-Type", desc.media_type), ("Docker-Content-Digest", str(desc.digest)),
               ("ETag", f'"{desc.digest}"'), ("Content-Length", str(desc.size))]
    return Response(200, headers, body)


async def put_manifest(ctx: Context, req: Request, name: str, reference: str) -> Response:
    check_name(name)
    ref = parse_reference(reference)
    extra_tags = tuple(req.query.get("tag", []))
    for tag in extra_tags:
        if not is_tag(tag):
            raise ManifestInvalid(f"invalid tag {tag[:140]!r}", detail={"tag": tag[:140]})
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
                           req.headers.get("content-type"), body, extra_tags)
    ctx.metrics.count("manifest_pushed")
    headers = [("Location", f"/v2/{name}/manifests/{result.digest}"),
               ("Docker-Content-Digest", str(result.digest)), ("Content-Length", "0")]
    if result.subject is not None:
        headers.append(("OCI-Subject", str(result.subject)))
    if isinstance(ref, Digest):
        headers += [("OCI-Tag", tag) for tag in result.tags]
    target = {"digest": str(result.digest), "media_type": result.media_type,
              "size": result.size, "url": f"/v2/{name}/manifests/{result.digest}"}
    pushed_tags: tuple[str | None, ...] = result.tags or (None,)
    for pushed in pushed_tags:
        ctx.emit(req, "push", name, tag=pushed, **target)
    return Response(201, headers)


async def delete_manifest(ctx: Context, req: Request, name: str, reference: str) -> Response:
    check_name(name)
    ref = parse_reference(reference)
    if isinstance(ref, Digest):
        await ctx.run(ctx.registry.delete_manifest, name, ref)
        ctx.metrics.count("manifest_deleted")
        ctx.emit(req, "delete", name, digest=str(ref))
    else:
        await ctx.run(ctx.registry.delete_tag, name, ref)
        ctx.metrics.count("tag_deleted")
        ctx.emit(req, "delete", name, tag=ref)
    return Response(202, [("Content-Length", "0")])
