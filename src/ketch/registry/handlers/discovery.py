"""Content discovery: tags list, ``_catalog`` and the referrers API.

Tags and the catalog paginate the same way: results sorted lexically, ``n`` caps
the count, ``last`` starts after that entry, and a ``Link: <…?n=&last=>; rel="next"``
header is sent when more remain. The referrers API answers an OCI image index of the
manifests whose ``subject`` is the digest, filtered by ``artifactType`` when asked (and
then says so in ``OCI-Filters-Applied``); an unknown subject is an empty index, never
a 404.
"""

from __future__ import annotations

import bisect
from urllib.parse import quote

from ketch.httpserver import Request, Response
from ketch.oci import mediatypes as mt
from ketch.registry.errors import PaginationNumberInvalid
from ketch.registry.handlers import Context, json_response
from ketch.registry.names import check_name, parse_digest

__all__ = ["catalog", "paginate", "referrers", "tags_list"]

MAX_PAGE = 10_000


def paginate(items: list[str], req: Request, base: str) -> tuple[list[str], str | None]:
    """The page of sorted ``items`` that ``n``/``last`` ask for, and the Link value
    for the next page (None when this is the last)."""
    n_arg = req.arg("n")
    last = req.arg("last")
    start = bisect.bisect_right(items, last) if last else 0
    if n_arg is None or n_arg == "":
        return items[start:], None
    if not n_arg.isdigit() or int(n_arg) > MAX_PAGE:
        raise PaginationNumberInvalid(detail={"n": n_arg[:20], "max": MAX_PAGE})
    n = int(n_arg)
    page = items[start:start + n]
    if n == 0 or start + n >= len(items):
        return page, None
    link = f'<{base}?n={n}&last={quote(page[-1], safe="")}>; rel="next"'
    return page, link


async def tags_list(ctx: Context, req: Request, name: str) -> Response:
    check_name(name)
    tags = await ctx.run(ctx.registry.tags, name)
    page, link = paginate(tags, req, f"/v2/{name}/tags/list")
    return json_response(200, {"name": name, "tags": page},
                         [("Link", link)] if link else None)


async def catalog(ctx: Context, req: Request) -> Response:
    repos = await ctx.run(ctx.registry.catalog)
    page, link = paginate(repos, req, "/v2/_catalog")
    return json_response(200, {"repositories": page}, [("Link", link)] if link else None)


async def referrers(ctx: Context, req: Request, name: str, digest: str) -> Response:
    check_name(name)
    d = parse_digest(digest)
    artifact_type = req.arg("artifactType")
    found = await ctx.run(ctx.registry.referrers, name, d, artifact_type or None)
    headers = [("OCI-Filters-Applied", "artifactType")] if artifact_type else []
    return json_response(200, {"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                               "manifests": found}, headers, content_type=mt.OCI_INDEX)
