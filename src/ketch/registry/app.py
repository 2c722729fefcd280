"""The registry's HTTP application: routing, error rendering, metrics, serving.

Routes (``<name>`` may hold slashes; the last matching suffix wins, tried in the order
below, so a repository called ``x/blobs`` still works)::

    GET            /v2/                                  version check
    GET            /v2/_catalog                          repositories (paginated)
    GET            /v2/<name>/tags/list                  tags (paginated)
    GET HEAD PUT DELETE  /v2/<name>/manifests/<ref>      manifests
    POST           /v2/<name>/blobs/uploads/             start / monolithic / mount
    GET PATCH PUT DELETE /v2/<name>/blobs/uploads/<id>   upload status / chunk / finish / cancel
    GET HEAD DELETE      /v2/<name>/blobs/<digest>       blobs
    GET            /v2/<name>/referrers/<digest>         referrers index
    GET            /health, /metrics                     (no auth)
    GET POST       /token                                the built-in token server

Every ``/v2/`` request passes the ``Authorizer`` first (``ketch.registry.auth``): 401
``UNAUTHORIZED`` with a ``WWW-Authenticate`` challenge, or 403 ``DENIED``, before any
handler or storage is touched.

Every response carries ``Docker-Distribution-API-Version: registry/2.0``. A
``RegistryError`` becomes its status and the spec's JSON body; anything unexpected is
logged and answered 500. Request bodies are streamed to handlers (``stream_body``), so
a blob never passes through a temporary file.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ketch.errors import InvalidArgument, NotFound
from ketch.httpserver import BadRequest, FileBody, HTTPServer, Limits, Request, Response
from ketch.registry.auth import Authorizer, NoAuth, Scope, TokenIssuer, needed_scopes
from ketch.registry.errors import (
    BlobUnknown,
    BlobUploadInvalid,
    ErrorList,
    RegistryError,
    Unsupported,
    error_body,
)
from ketch.registry.handlers import (
    API_VERSION_HEADER,
    Context,
    base,
    blobs,
    discovery,
    manifests,
    uploads,
)
from ketch.registry.metrics import Metrics
from ketch.registry.notify import Notifier
from ketch.registry.repository import Registry
from ketch.registry.storage import StorageDriver

__all__ = ["RegistryApp", "make_server"]

log = logging.getLogger(__name__)

RouteHandler = Callable[..., Awaitable[Response]]

# (pattern, methods, kind): ``kind`` says which access a request needs (``auth.needed_scopes``);
# ``open`` routes need none, ``token`` is the built-in token server.
_ROUTES: list[tuple[re.Pattern[str], dict[str, RouteHandler], str]] = [
    (re.compile(r"/v2/?"), {"GET": base.version_check}, "base"),
    (re.compile(r"/v2/_catalog"), {"GET": discovery.catalog}, "catalog"),
    (re.compile(r"/v2/(?P<name>.+)/tags/list"), {"GET": discovery.tags_list}, "repo"),
    (re.compile(r"/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)"),
     {"GET": manifests.get_manifest, "HEAD": manifests.get_manifest,
      "PUT": manifests.put_manifest, "DELETE": manifests.delete_manifest}, "repo"),
    (re.compile(r"/v2/(?P<name>.+)/blobs/uploads/?"), {"POST": uploads.start_upload}, "upload"),
    (re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<upload_id>[^/]+)"),
     {"GET": uploads.upload_status, "PATCH": uploads.patch_upload,
      "PUT": uploads.finish_upload, "DELETE": uploads.cancel_upload}, "upload"),
    (re.compile(r"/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)"),
     {"GET": blobs.get_blob, "HEAD": blobs.get_blob, "DELETE": blobs.delete_blob}, "repo"),
    (re.compile(r"/v2/(?P<name>.+)/referrers/(?P<digest>[^/]+)"),
     {"GET": discovery.referrers}, "repo"),
    (re.compile(r"/health"), {"GET": base.health, "HEAD": base.health}, "open"),
    (re.compile(r"/metrics"), {"GET": base.metrics}, "open"),
    (re.compile(r"/token"), {"GET": base.version_check, "POST": base.version_check}, "token"),
]


def _error_response(errors: list[RegistryError], status: int) -> Response:
    headers = [("Content-Type", "application/json")]
    for e in errors:
        headers += e.headers
    return Response(status, headers, error_body(errors))


class RegistryApp:
    """The ``Handler`` for ``ketch.httpserver.HTTPServer``; see the module docstring.

    ``authorizer`` checks every ``/v2/`` request (default: ``NoAuth``); the user it
    names is put in ``req.params["user"]`` for notifications. ``token_issuer`` serves
    ``/token`` (absent: 404). ``notifier`` receives push/delete events; ``close()``
    stops it after the worker pool.
    """

    def __init__(self, registry: Registry, *, workers: int = 16,
                 metrics: Metrics | None = None, authorizer: Authorizer | None = None,
                 token_issuer: TokenIssuer | None = None,
                 notifier: Notifier | None = None) -> None:
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="registry-io")
        self.ctx = Context(registry, self.executor, metrics or Metrics(), notifier,
                           {"instanceID": secrets.token_hex(8)})
        self.authorizer: Authorizer = authorizer or NoAuth()
        self.token_issuer = token_issuer

    @classmethod
    def on(cls, driver: StorageDriver, *, authorizer: Authorizer | None = None,
           token_issuer: TokenIssuer | None = None, notifier: Notifier | None = None,
           **registry_opts: Any) -> RegistryApp:
        return cls(Registry(driver, **registry_opts), authorizer=authorizer,
                   token_issuer=token_issuer, notifier=notifier)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        if self.ctx.notifier is not None:
            self.ctx.notifier.close()

    @staticmethod
    def stream_body(req: Request) -> bool:
        """Every registry request body is read by its handler (see ``HTTPServer``)."""
        return True

    async def __call__(self, req: Request) -> Response:
        try:
            resp = await self._dispatch(req)
        except RegistryError as e:
            resp = _error_response([e], e.status)
        except ErrorList as e:
            resp = _error_response(e.errors, e.status)
        except BadRequest:
            raise  # the body broke its framing: the server answers and closes
        except NotFound as e:  # storage found a file gone mid-request (a racing delete)
            resp = _error_response([BlobUnknown(str(e))], 404)
        except InvalidArgument as e:  # storage refused an argument the checks let through
            resp = _error_response([BlobUploadInvalid(str(e))], 400)
        except Exception:
            log.exception("unhandled error in %s %s", req.method, req.path)
            resp = Response(500, [("Content-Type", "application/json")],
                            b'{"errors":[{"code":"UNKNOWN","message":"internal error"}]}\n')
        resp.headers.append(API_VERSION_HEADER)
        self._observe(req, resp)
        return resp

    async def _dispatch(self, req: Request) -> Response:
        for pattern, methods, kind in _ROUTES:
            m = pattern.fullmatch(req.path)
            if m is None:
                continue
            handler = methods.get(req.method)
            if handler is None:
                raise Unsupported(f"method {req.method} not allowed on {req.path[:200]}",
                                  headers=[("Allow", ", ".join(methods))])
            if kind == "token":
                if self.token_issuer is None:
                    break
                return await self.token_issuer.handle(req, self.ctx.run)
            if kind != "open":
                await self._authorize(req, kind, m.groupdict().get("name"))
            return await handler(self.ctx, req, **m.groupdict())
        return Response(404, [("Content-Type", "text/plain")], b"404 page not found\n")

    async def _authorize(self, req: Request, kind: str, name: str | None) -> None:
        grant = await self.authorizer.authorize(req, needed_scopes(kind, req.method, name),
                                                self.ctx.run)
        req.params["request_id"] = secrets.token_hex(8)
        if grant.user is not None:
            req.params["user"] = grant.user
        source = req.arg("from")
        if kind == "upload" and req.arg("mount") and source and source != name and \
                not grant.allows(Scope.repo(source, "pull")):
            # Mounting from a repository the caller cannot read would leak its blobs:
            # start a plain upload instead, as a registry that cannot mount does.
            req.query.pop("mount", None)
            req.query.pop("from", None)

    def _observe(self, req: Request, resp: Response) -> None:
        received = req.stream.received if req.stream is not None else len(req.body)
        if req.method == "HEAD":
            sent = 0
        elif isinstance(resp.body, FileBody):
            sent = resp.body.count
        elif isinstance(resp.body, bytes | bytearray):
            sent = len(resp.body)
        else:
            sent = 0
        self.ctx.metrics.observe(req.method, resp.status, received, sent)


def make_server(app: RegistryApp, *, max_header_bytes: int = 1 << 20) -> HTTPServer:
    """The HTTP server for ``app`` (bodies streamed; no size limit but storage's)."""
    return HTTPServer(app, limits=Limits(max_header_bytes=max_header_bytes),
                      server_header="ketch-registry", stream_body=app.stream_body)
