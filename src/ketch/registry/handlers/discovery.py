"""Content discovery: tags list, ``_catalog`` and the referrers API.

Tags and the catalog paginate the same way: results sorted lexically, ``n`` caps
the count, ``last`` starts after that entry, and a ``Link: <…?n=&last=>; rel="next"``
header is sent when more remain. The referrers API answers an OCI image index of the
manifests whose ``subject`` is the digest, filtered by ``artifactType`` when asked (and
then says so in ``OCI-Filters-Applied``); an unknown subject is an empty index, never
a 404. Referrers are paginated too, sorted by digest: at most ``REFERRERS_PAGE``
descriptors per answer (or ``n``), the rest behind a ``Link: …; rel="next"`` that keeps
the filter; each page is a complete image index.
"""

from __future__ import annotations

import bisect
from urllib.parse import quote

from ketch.httpserver import Request, Response
from ketch.oci import mediatypes as mt
from ketch.registry.errors import PaginationNumberInvalid
from ketch.registry.handlers import Context, json_response
from ketch.registry.names import check_name, parse_digest

__all__ = ["REFERRERS_PAGE", "catalog", "paginate", "referrers", "tags_list"]

MAX_PAGE = 10_000
REFERRERS_PAGE = 1000


def paginate(items: list[str], req: Request, base: str, *, default: int | None = None,
             keep: str = "") -> tuple[list[str], str | None]:
    """The page of sorted ``items`` that ``n``/``last`` ask for, and the Link value
    for the next page (None when this is the last). Without ``n`` the page holds
    ``default`` items (None: all); ``keep`` is appended to the next page's query."""
    n_arg = req.arg("n")
    last = req.arg("last")
    start = bisect.bisect_right(items, last) if last else 0
    if n_arg is None or n_arg == "":
        if default is None:
            return items[start:], None
        n = default
    elif not n_arg.isdigit() or int(n_arg) > MAX_PAGE:
        raise PaginationNumberInvalid(detail={"n": n_arg[:20], "max": MAX_PAGE})
    else:
        n = int(n_arg)
    page = items[start:start + n]
    if n == 0 or start + n >= len(items):
        return page, None
    link = f'<{base}?n={n}&last={quote(page[-1], safe="")}{keep}>; rel="next"'
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
    by_digest = {entry["digest"]: entry for entry in found}
    keep = f"&artifactType={quote(artifact_type, safe='')}" if artifact_type else ""
    page, link = paginate(sorted(by_digest), req, f"/v2/{name}/referrers/{d}",
                          default=REFERRERS_PAGE, keep=keep)
    headers = [("OCI-Filters-Applied", "artifactType")] if artifact_type else []
    if link:
        headers.append(("Link", link))
    return json_response(200, {"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                               "manifests": [by_digest[k] for k in page]}, headers,
                         content_type=mt.OCI_INDEX)
