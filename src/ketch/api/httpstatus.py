"""The one place that maps ketch's error vocabulary to HTTP status codes.

The choices follow dockerd, because clients branch on the code: a container
that "is not running" is a 409 conflict there (we raise FailedPrecondition for
it), and "already started/stopped" is a 304 with no body. Anything that is not a
:class:`ketch.errors.KetchError` is a bug and answers 500.
"""

from __future__ import annotations

import json
import logging

from ketch import errors
from ketch.httpserver import Response

__all__ = ["error_response", "json_response", "status_for"]

log = logging.getLogger(__name__)

# Most specific first is not needed: every domain error subclasses exactly one of these.
_STATUS: tuple[tuple[type[errors.KetchError], int], ...] = (
    (errors.NotFound, 404),
    (errors.InvalidArgument, 400),
    (errors.Conflict, 409),
    (errors.FailedPrecondition, 409),
    (errors.NotModified, 304),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.Unavailable, 503),
    (errors.NotImplementedYet, 501),
    (errors.Internal, 500),
)


def status_for(exc: BaseException) -> int:
    """The HTTP status for ``exc``."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def json_response(obj: object, status: int = 200,
                  headers: list[tuple[str, str]] | None = None) -> Response:
    """``obj`` as a JSON body (compact, newline-terminated like Go's encoder)."""
    body = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    return Response(status, [("Content-Type", "application/json"), *(headers or [])], body)


def error_response(exc: BaseException) -> Response:
    """``{"message": str(exc)}`` with the status of ``exc`` (304 carries no body)."""
    status = status_for(exc)
    if status == 304:
        return Response(304)
    if not isinstance(exc, errors.KetchError):
        log.error("unexpected error: %r", exc, exc_info=exc)
    message = str(exc) or type(exc).__name__
    return json_response({"message": message}, status)
