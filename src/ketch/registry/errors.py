"""The OCI distribution-spec error codes, from one table, as exceptions and JSON bodies.

Every error the registry answers with is a ``RegistryError`` subclass named after its
code; each also subclasses exactly one class of ``ketch.errors`` (so code outside the
HTTP layer can catch ``NotFound`` and friends). ``CODES`` is the only place where a code
gets its HTTP status and default message; ``error_body`` renders the spec's JSON::

    {"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown to registry",
                 "detail": {"digest": "sha256:…"}}]}

``ErrorList`` carries several errors in one answer (a manifest naming several missing
blobs gets one ``MANIFEST_BLOB_UNKNOWN`` per blob).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from ketch.errors import (
    Forbidden,
    InvalidArgument,
    KetchError,
    NotFound,
    NotImplementedYet,
    Unauthorized,
    Unavailable,
)

__all__ = [
    "CODES",
    "BlobUnknown",
    "BlobUploadInvalid",
    "BlobUploadUnknown",
    "Code",
    "Denied",
    "DigestInvalid",
    "ErrorList",
    "ManifestBlobUnknown",
    "ManifestInvalid",
    "ManifestUnknown",
    "NameInvalid",
    "NameUnknown",
    "PaginationNumberInvalid",
    "RangeInvalid",
    "RegistryError",
    "SizeInvalid",
    "TooManyRequests",
    "UnauthorizedError",
    "Unsupported",
    "error_body",
]


class RegistryError(Exception):
    """An answer in OCI error-code form. ``status`` overrides the table's status for
    this one instance (e.g. 413 for an oversized manifest, still ``SIZE_INVALID``);
    ``headers`` are added to the response (``Range`` on a 416, ``WWW-Authenticate``)."""

    code: ClassVar[str] = ""

    def __init__(self, message: str | None = None, *, detail: Any = None,
                 status: int | None = None,
                 headers: list[tuple[str, str]] | None = None) -> None:
        entry = CODES[self.code]
        super().__init__(message or entry.message)
        self.message = message or entry.message
        self.detail = detail
        self.status = status or entry.status
        self.headers = headers or []


class BlobUnknown(RegistryError, NotFound):
    code = "BLOB_UNKNOWN"


class BlobUploadInvalid(RegistryError, InvalidArgument):
    code = "BLOB_UPLOAD_INVALID"


class BlobUploadUnknown(RegistryError, NotFound):
    code = "BLOB_UPLOAD_UNKNOWN"


class DigestInvalid(RegistryError, InvalidArgument):
    code = "DIGEST_INVALID"


class ManifestBlobUnknown(RegistryError, InvalidArgument):
    code = "MANIFEST_BLOB_UNKNOWN"


class ManifestInvalid(RegistryError, InvalidArgument):
    code = "MANIFEST_INVALID"


class ManifestUnknown(RegistryError, NotFound):
    code = "MANIFEST_UNKNOWN"


class NameInvalid(RegistryError, InvalidArgument):
    code = "NAME_INVALID"


class NameUnknown(RegistryError, NotFound):
    code = "NAME_UNKNOWN"


class SizeInvalid(RegistryError, InvalidArgument):
    code = "SIZE_INVALID"


class UnauthorizedError(RegistryError, Unauthorized):
    code = "UNAUTHORIZED"


class Denied(RegistryError, Forbidden):
    code = "DENIED"


class Unsupported(RegistryError, NotImplementedYet):
    code = "UNSUPPORTED"


class TooManyRequests(RegistryError, Unavailable):
    code = "TOOMANYREQUESTS"


class RangeInvalid(RegistryError, InvalidArgument):
    code = "RANGE_INVALID"


class PaginationNumberInvalid(RegistryError, InvalidArgument):
    code = "PAGINATION_NUMBER_INVALID"


@dataclass(frozen=True, slots=True)
class Code:
    status: int
    message: str
    error: type[RegistryError]


#: code → HTTP status, default message, exception class: the one table.
CODES: dict[str, Code] = {
    "BLOB_UNKNOWN": Code(404, "blob unknown to registry", BlobUnknown),
    "BLOB_UPLOAD_INVALID": Code(400, "blob upload invalid", BlobUploadInvalid),
    "BLOB_UPLOAD_UNKNOWN": Code(404, "blob upload unknown to registry", BlobUploadUnknown),
    "DIGEST_INVALID": Code(400, "provided digest did not match uploaded content",
                           DigestInvalid),
    "MANIFEST_BLOB_UNKNOWN": Code(400, "manifest references a manifest or blob unknown "
                                       "to registry", ManifestBlobUnknown),
    "MANIFEST_INVALID": Code(400, "manifest invalid", ManifestInvalid),
    "MANIFEST_UNKNOWN": Code(404, "manifest unknown to registry", ManifestUnknown),
    "NAME_INVALID": Code(400, "invalid repository name", NameInvalid),
    "NAME_UNKNOWN": Code(404, "repository name not known to registry", NameUnknown),
    "SIZE_INVALID": Code(400, "provided length did not match content length", SizeInvalid),
    "UNAUTHORIZED": Code(401, "authentication required", UnauthorizedError),
    "DENIED": Code(403, "requested access to the resource is denied", Denied),
    "UNSUPPORTED": Code(405, "the operation is unsupported", Unsupported),
    "TOOMANYREQUESTS": Code(429, "too many requests", TooManyRequests),
    "RANGE_INVALID": Code(416, "invalid content range", RangeInvalid),
    "PAGINATION_NUMBER_INVALID": Code(400, "invalid number of results requested",
                                      PaginationNumberInvalid),
}


class ErrorList(KetchError):
    """Several ``RegistryError`` in one answer; the first one's status is used."""

    def __init__(self, errors: list[RegistryError]) -> None:
        if not errors:
            raise ValueError("ErrorList needs at least one error")
        super().__init__("; ".join(e.message for e in errors))
        self.errors = errors
        self.status = errors[0].status


def error_body(errors: list[RegistryError]) -> bytes:
    """The spec's JSON error document for ``errors``."""
    out = []
    for e in errors:
        item: dict[str, Any] = {"code": e.code, "message": e.message}
        if e.detail is not None:
            item["detail"] = e.detail
        out.append(item)
    return json.dumps({"errors": out}, separators=(",", ":")).encode() + b"\n"
