"""The registry client: one registry, one user; manifests and blobs in and out.

Every call names the repository it works on (``library/busybox``) and asks for the
access it needs (``pull``, or ``pull,push``); authentication is answered on demand
(:mod:`ketch.distribution.auth`). Errors are ketch's vocabulary, with the registry's
error code and message kept in the text (``manifest unknown: ...``); the subclasses
below let callers tell "no such repository" from "no such manifest".

Downloads (:meth:`Registry.download`) go into a content-store ``Writer``: the bytes
the ingest holds already are skipped with ``Range``, a connection dropped mid-blob is
resumed the same way (a few times), and the writer's commit verifies size and digest.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO
from urllib.parse import quote, urlencode

from ketch.content import Writer
from ketch.distribution.auth import Authorizer, Credentials
from ketch.distribution.endpoint import Endpoint, endpoint_for
from ketch.distribution.transport import Reply, Transport, TransportError
from ketch.errors import (
    Forbidden,
    InvalidArgument,
    KetchError,
    NotFound,
    Unauthorized,
    Unavailable,
)
from ketch.oci import mediatypes as mt
from ketch.oci.descriptor import Descriptor
from ketch.oci.digest import Digest, digest_of

__all__ = [
    "MANIFEST_ACCEPT",
    "BlobUnknown",
    "ManifestUnknown",
    "NameUnknown",
    "Registry",
]

log = logging.getLogger(__name__)

MANIFEST_ACCEPT = ", ".join([mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST_LIST,
                             mt.DOCKER_MANIFEST])
_CHUNK = 1 << 20
_RETRIES = 5
_MANIFEST_MAX = 4 << 20


class NameUnknown(NotFound):
    """The registry does not know the repository (``NAME_UNKNOWN``)."""


class ManifestUnknown(NotFound):
    """No manifest for that tag or digest (``MANIFEST_UNKNOWN``)."""


class BlobUnknown(NotFound):
    """No such blob in the repository (``BLOB_UNKNOWN``)."""


def _registry_error(reply: Reply, what: str) -> KetchError:
    """The error a non-2xx answer means; the body is read (it is small)."""
    code, message = "", ""
    try:
        raw = reply.body(1 << 20) if reply.resp.length != 0 else b""
        errs = json.loads(raw).get("errors") or []
        if errs:
            code = str(errs[0].get("code") or "")
            message = str(errs[0].get("message") or "")
    except (ValueError, AttributeError, KetchError, *TransportError):
        pass
    text = f"{code.lower().replace('_', ' ')}: {message}" if code else \
        f"{what}: {reply.status} {reply.reason}"
    status = reply.status
    if code == "NAME_UNKNOWN":
        return NameUnknown(text)
    if code == "MANIFEST_UNKNOWN" or (status == 404 and "manifest" in what):
        return ManifestUnknown(text if code else "manifest unknown: manifest unknown")
    if code == "BLOB_UNKNOWN":
        return BlobUnknown(text)
    if status == 401:
        return Unauthorized(text if code else "unauthorized: authentication required")
    if status == 403 or code == "DENIED":
        return Forbidden(text if code else "denied: requested access to the resource "
                         "is denied")
    if status == 404:
        return NotFound(text)
    if status in (400, 405, 411, 413, 416, 422):
        return InvalidArgument(text)
    return Unavailable(text)


class Registry:
    """A client for the registry ``domain`` on behalf of ``credentials``.

    Cheap to make; share one :class:`Transport` between clients to keep connections.
    """

    def __init__(self, domain: str, credentials: Credentials | None = None,
                 transport: Transport | None = None) -> None:
        self.endpoint: Endpoint = endpoint_for(domain)
        self._own = transport is None
        self.transport = transport or Transport()
        self.auth = Authorizer(credentials or Credentials(), self._token_fetch)

    def close(self) -> None:
        """Close the connections, if the transport is this client's own."""
        if self._own:
            self.transport.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------

    def _token_fetch(self, method: str, url: str, headers: Mapping[str, str],
                     body: bytes | None) -> tuple[int, bytes]:
        try:
            with self.transport.request(method, url, headers, body) as r:
                return r.status, r.body(1 << 20)
        except TransportError as e:
            raise Unavailable(f"{method} {url}: {e}") from None

    def _call(self, method: str, path: str, scopes: Sequence[str],
              headers: Mapping[str, str] | None = None,
              body: bytes | IO[bytes] | None = None, length: int | None = None,
              follow: bool = True) -> Reply:
        """One request with authentication; the caller closes the reply."""
        hdrs = dict(headers or {})
        auth = self.auth.header(scopes)
        if auth:
            hdrs["Authorization"] = auth
        reply = self._send(method, path, hdrs, body, length, follow)
        if reply.status != 401:
            return reply
        challenge = reply.header("WWW-Authenticate")
        reply.body(1 << 20)
        reply.close()
        answer = self.auth.answer(challenge, scopes) if challenge else None
        if answer is None or answer == auth:
            raise Unauthorized(f"{method} {self._url(path)}: unauthorized: "
                               f"authentication required")
        hdrs["Authorization"] = answer
        if hasattr(body, "seek"):
            body.seek(0)  # type: ignore[union-attr]
        elif body is not None and not isinstance(body, bytes):
            raise Unauthorized(f"{method} {self._url(path)}: unauthorized: the registry "
                               f"asked for credentials after the upload was sent")
        return self._send(method, path, hdrs, body, length, follow)

    def _send(self, method: str, path: str, headers: Mapping[str, str],
              body: bytes | IO[bytes] | None, length: int | None, follow: bool) -> Reply:
        try:
            return self.transport.open(self.endpoint, method, path, headers, body, length,
                                       follow)
        except TransportError as e:
            raise Unavailable(f"{method} \"{self._url(path)}\": {e}") from None

    def _url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return self.endpoint.url(self.transport.scheme(self.endpoint), path)

    @staticmethod
    def _scope(repo: str, push: bool = False) -> str:
        return f"repository:{repo}:{'pull,push' if push else 'pull'}"

    # -- login ----------------------------------------------------------------------------

    def login(self) -> None:
        """Check the credentials against ``/v2/`` (``Unauthorized`` in dockerd's wording)."""
        path = "/v2/"
        try:
            reply = self._call("GET", path, [])
        except Unauthorized as e:
            if "authentication required" in str(e):
                raise Unauthorized(f"login attempt to {self._url(path)} failed with status: "
                                   f"401 Unauthorized") from None
            raise
        with reply:
            reply.body(1 << 20)
            if reply.status == 401:
                raise Unauthorized(f"login attempt to {self._url(path)} failed with status: "
                                   f"401 Unauthorized")
            if reply.status != 200:
                raise Unavailable(f"login attempt to {self._url(path)} failed with status: "
                                  f"{reply.status} {reply.reason}")

    # -- manifests ------------------------------------------------------------------------

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str, Digest]:
        """(bytes, media type, digest) of the manifest or index ``reference`` names.

        The digest is computed from the bytes; for a by-digest reference a mismatch is
        ``InvalidArgument``.
        """
        path = f"/v2/{repo}/manifests/{quote(reference, safe=':@')}"
        with self._call("GET", path, [self._scope(repo)], {"Accept": MANIFEST_ACCEPT}) as r:
            if r.status != 200:
                raise _registry_error(r, f"manifest {repo}:{reference}")
            data = r.body(_MANIFEST_MAX)
            media = r.header("Content-Type").split(";")[0].strip()
        try:
            declared = json.loads(data).get("mediaType")
        except (ValueError, AttributeError):
            raise InvalidArgument(f"manifest {repo}:{reference}: not a JSON object") from None
        if declared:
            media = declared
        if not media or media in ("application/json", "text/plain"):
            media = mt.OCI_MANIFEST if b'"config"' in data else mt.OCI_INDEX
        if ":" in reference:  # a digest (tags cannot hold a colon)
            want = Digest.parse(reference)
            got = digest_of(data, want.algorithm)
            if got != want:
                raise InvalidArgument(f"manifest verification failed for digest {want}: "
                                      f"got {got}")
            return data, media, want
        return data, media, digest_of(data)

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> Digest:
        path = f"/v2/{repo}/manifests/{quote(reference, safe=':@')}"
        with self._call("PUT", path, [self._scope(repo, True)],
                        {"Content-Type": media_type}, data) as r:
            if r.status not in (200, 201, 202):
                raise _registry_error(r, f"manifest {repo}:{reference}")
            r.body(1 << 20)
            got = r.header("Docker-Content-Digest")
        return Digest.parse(got) if got else digest_of(data)

    # -- blobs ----------------------------------------------------------------------------

    def fetch_blob(self, repo: str, digest: Digest, limit: int = _MANIFEST_MAX) -> bytes:
        """A small blob (a config) whole, verified."""
        with self._call("GET", f"/v2/{repo}/blobs/{digest}", [self._scope(repo)]) as r:
            if r.status != 200:
                raise _registry_error(r, f"blob {digest}")
            data = r.body(limit)
        if digest_of(data, digest.algorithm) != digest:
            raise InvalidArgument(f"blob {digest}: digest mismatch (got "
                                  f"{digest_of(data, digest.algorithm)})")
        return data

    def download(self, repo: str, desc: Descriptor, w: Writer,
                 on_data: Callable[[bytes], None] | None = None) -> None:
        """Fill ``w`` with blob ``desc`` from ``w.offset`` on (see the module doc).

        ``on_data`` sees each chunk after it is written. Does not commit ``w``.
        """
        failures = 0
        while w.offset < desc.size:
            start = w.offset
            headers = {"Range": f"bytes={start}-"} if start else {}
            try:
                r = self._call("GET", f"/v2/{repo}/blobs/{desc.digest}", [self._scope(repo)],
                               headers)
            except Unavailable:
                failures += 1
                if failures > _RETRIES:
                    raise
                time.sleep(0.1 * failures)
                continue
            with r:
                if r.status not in (200, 206):
                    raise _registry_error(r, f"blob {desc.digest}")
                skip = start if r.status == 200 else 0  # the server ignored Range
                try:
                    while True:
                        chunk = r.read1(_CHUNK)
                        if not chunk:
                            break
                        if skip:
                            n = min(skip, len(chunk))
                            chunk, skip = chunk[n:], skip - n
                            if not chunk:
                                continue
                        if w.offset + len(chunk) > desc.size:
                            raise InvalidArgument(f"blob {desc.digest}: the registry sent "
                                                  f"more than {desc.size} bytes")
                        w.write(chunk)
                        if on_data is not None:
                            on_data(chunk)
                except TransportError as e:
                    failures += 1
                    log.info("blob %s: connection lost at %d/%d bytes (%s); resuming",
                             desc.digest, w.offset, desc.size, e)
                    if failures > _RETRIES:
                        raise Unavailable(f"blob {desc.digest}: download failed after "
                                          f"{_RETRIES} retries: {e}") from None
                    continue
            if w.offset < desc.size:
                failures += 1
                if failures > _RETRIES:
                    raise Unavailable(f"blob {desc.digest}: the registry sent {w.offset} of "
                                      f"{desc.size} bytes")

    def blob_exists(self, repo: str, digest: Digest) -> bool:
        with self._call("HEAD", f"/v2/{repo}/blobs/{digest}", [self._scope(repo, True)]) as r:
            if r.status == 200:
                return True
            if r.status == 404:
                return False
            raise _registry_error(r, f"blob {digest}")

    def mount_blob(self, repo: str, digest: Digest, source_repo: str) -> bool:
        """Cross-repository mount; False if the registry started an upload instead."""
        q = urlencode({"mount": str(digest), "from": source_repo})
        scopes = [self._scope(repo, True), self._scope(source_repo)]
        with self._call("POST", f"/v2/{repo}/blobs/uploads/?{q}", scopes) as r:
            r.body(1 << 20)
            if r.status == 201:
                return True
            if r.status == 202:
                self._cancel(r.header("Location"), scopes)
                return False
            if r.status in (401, 403, 404):
                return False
            raise _registry_error(r, f"mount of {digest}")

    def _cancel(self, location: str, scopes: Sequence[str]) -> None:
        if not location:
            return
        try:
            with self._call("DELETE", location, scopes) as r:
                r.body(1 << 20)
        except KetchError as e:
            log.debug("cancelling upload %s: %s", location, e)

    def upload_blob(self, repo: str, desc: Descriptor, body: IO[bytes]) -> None:
        """Upload blob ``desc`` read from ``body`` (POST, then one PUT with the bytes)."""
        scopes = [self._scope(repo, True)]
        with self._call("POST", f"/v2/{repo}/blobs/uploads/", scopes) as r:
            r.body(1 << 20)
            if r.status != 202:
                raise _registry_error(r, f"upload of {desc.digest}")
            location = r.header("Location")
        if not location:
            raise Unavailable(f"upload of {desc.digest}: the registry gave no Location")
        if not location.startswith(("http://", "https://")):
            location = self._url(location)
        sep = "&" if "?" in location else "?"
        url = f"{location}{sep}{urlencode({'digest': str(desc.digest)})}"
        with self._call("PUT", url, scopes, {"Content-Type": "application/octet-stream"},
                        body, desc.size) as r:
            if r.status not in (201, 204):
                raise _registry_error(r, f"upload of {desc.digest}")
            r.body(1 << 20)

    def upload_stream(self, repo: str, body: IO[bytes],
                      digest: Callable[[], Digest]) -> Digest:
        """Upload a blob whose digest is known only once ``body`` is read to its end
        (a layer compressed on the fly): POST, one chunked PATCH with the bytes, then
        PUT with ``?digest=`` from ``digest()``; the registry verifies it. Returns it."""
        scopes = [self._scope(repo, True)]
        with self._call("POST", f"/v2/{repo}/blobs/uploads/", scopes) as r:
            r.body(1 << 20)
            if r.status != 202:
                raise _registry_error(r, "upload")
            location = r.header("Location")
        if not location:
            raise Unavailable("upload: the registry gave no Location")
        try:
            location = self._absolute(location)
            with self._call("PATCH", location, scopes,
                            {"Content-Type": "application/octet-stream"}, body) as r:
                r.body(1 << 20)
                if r.status != 202:
                    raise _registry_error(r, "upload")
                location = self._absolute(r.header("Location") or location)
            got = digest()
            sep = "&" if "?" in location else "?"
            with self._call("PUT", f"{location}{sep}{urlencode({'digest': str(got)})}",
                            scopes) as r:
                if r.status not in (201, 204):
                    raise _registry_error(r, f"upload of {got}")
                r.body(1 << 20)
        except BaseException:
            self._cancel(location, scopes)
            raise
        return got

    def _absolute(self, location: str) -> str:
        return location if location.startswith(("http://", "https://")) else \
            self._url(location)
