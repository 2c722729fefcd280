"""The registry client: pull and push images over the OCI distribution API.

Terms
-----
endpoint
    Where the registry a reference's domain names answers (``docker.io`` is
    ``registry-1.docker.io``); loopback registries may be plain HTTP
    (:mod:`~ketch.distribution.endpoint`).
credentials
    What a user gave for one registry: username/password, an identity token, or
    nothing (anonymous). The daemon gets them per request (``X-Registry-Auth``); the
    ketch CLI keeps them in docker's ``config.json`` format
    (:mod:`~ketch.distribution.credentials`).
authorizer
    Answers ``401`` challenges with basic auth or a bearer token for the scopes a
    request needs, and remembers tokens (:mod:`~ketch.distribution.auth`).
registry client
    :class:`~ketch.distribution.client.Registry`: manifests by tag or digest, blob
    download into a content-store ingest with digest verification and ``Range``
    resume, blob existence, cross-repository mount, upload, manifest push.

This package knows nothing of image names or stores (the engine does): it speaks in
repository paths (``library/busybox``), digests and descriptors. Index platform
choice is :mod:`~ketch.distribution.platforms`; zstd layers are decompressed with
the system libzstd (:mod:`~ketch.distribution.zstd`).
"""

from __future__ import annotations

from ketch.distribution.auth import Credentials, decode_registry_auth
from ketch.distribution.client import BlobUnknown, ManifestUnknown, NameUnknown, Registry
from ketch.distribution.endpoint import Endpoint, endpoint_for
from ketch.distribution.transport import Transport

__all__ = [
    "BlobUnknown",
    "Credentials",
    "Endpoint",
    "ManifestUnknown",
    "NameUnknown",
    "Registry",
    "Transport",
    "decode_registry_auth",
    "endpoint_for",
]
