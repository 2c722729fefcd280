"""Manifest documents as the registry checks them on push (pure: no storage).

``parse_manifest(body, content_type)`` decides the media type, checks the JSON and
the shape the image-spec / Docker schema 2 require, and returns a ``ParsedManifest``:
the blobs it needs (config and layers), the child manifests (indexes), its ``subject``
and the descriptor fields the referrers API reports. Anything wrong is
``ManifestInvalid`` with a detail saying what.

Accepted media types: OCI image manifest and index, Docker v2 schema 2 manifest and
manifest list. A body's ``mediaType`` field, when present, must agree with the
request's Content-Type; when neither says, a document with ``manifests`` is an OCI
index and anything else an OCI manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ketch.errors import InvalidArgument
from ketch.oci import mediatypes as mt
from ketch.oci.digest import Digest
from ketch.registry.errors import ManifestInvalid

__all__ = [
    "KNOWN_TYPES",
    "BlobRef",
    "ParsedManifest",
    "parse_manifest",
]

KNOWN_TYPES = frozenset({mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST,
                         mt.DOCKER_MANIFEST_LIST})


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A descriptor found in a manifest: what must exist, and how big it must be."""

    digest: Digest
    size: int
    media_type: str
    has_urls: bool = False  # foreign/non-distributable: may live elsewhere


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    media_type: str
    blobs: list[BlobRef] = field(default_factory=list)  # config + layers
    children: list[BlobRef] = field(default_factory=list)  # index entries
    subject: BlobRef | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None

    @property
    def is_index(self) -> bool:
        return self.media_type in mt.INDEX_TYPES


def _invalid(reason: str, **detail: Any) -> ManifestInvalid:
    return ManifestInvalid(f"manifest invalid: {reason}", detail={"reason": reason, **detail})


def _descriptor(obj: Any, where: str) -> BlobRef:
    if not isinstance(obj, dict):
        raise _invalid(f"{where} is not a descriptor object")
    media = obj.get("mediaType")
    if not isinstance(media, str) or not media:
        raise _invalid(f"{where}.mediaType missing or not a string")
    size = obj.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where}.size missing or not a non-negative integer")
    digest = obj.get("digest")
    if not isinstance(digest, str):
        raise _invalid(f"{where}.digest missing or not a string")
    try:
        d = Digest.parse(digest)
    except InvalidArgument as e:
        raise _invalid(f"{where}.digest: {e}") from None
    urls = obj.get("urls")
    if urls is not None and (not isinstance(urls, list)
                             or not all(isinstance(u, str) for u in urls)):
        raise _invalid(f"{where}.urls is not a list of strings")
    return BlobRef(d, size, media, bool(urls))


def _annotations(doc: dict[str, Any]) -> dict[str, str] | None:
    ann = doc.get("annotations")
    if ann is None:
        return None
    if not isinstance(ann, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in ann.items()):
        raise _invalid("annotations is not a map of strings")
    return ann


def _media_type(doc: dict[str, Any], content_type: str | None) -> str:
    body_type = doc.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise _invalid("mediaType is not a string")
    header = (content_type or "").split(";", 1)[0].strip().lower() or None
    if header in ("application/json", "application/octet-stream"):
        header = None  # generic: let the document say
    if body_type and header and body_type != header:
        raise _invalid(f"mediaType {body_type!r} does not match Content-Type {header!r}")
    chosen = body_type or header or (mt.OCI_INDEX if "manifests" in doc else mt.OCI_MANIFEST)
    if chosen not in KNOWN_TYPES:
        raise _invalid(f"unsupported manifest media type {chosen!r}",
                       mediaType=chosen[:200])
    return chosen


def parse_manifest(body: bytes, content_type: str | None) -> ParsedManifest:
    """Check ``body`` (see the module docstring); ``ManifestInvalid`` if it fails."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise _invalid(f"not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise _invalid("not a JSON object")
    media = _media_type(doc, content_type)
    if doc.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2")
    subject = _descriptor(doc["subject"], "subject") if doc.get("subject") is not None \
        else None
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid("artifactType is not a string")
    annotations = _annotations(doc)
    if media in mt.INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise _invalid("manifests must be a list")
        children = [_descriptor(e, f"manifests[{i}]") for i, e in enumerate(entries)]
        return ParsedManifest(media, children=children, subject=subject,
                              artifact_type=artifact_type, annotations=annotations)
    config = _descriptor(doc.get("config"), "config")
    layers = doc.get("layers")
    if layers is None and media == mt.OCI_MANIFEST:
        layers = []
    if not isinstance(layers, list):
        raise _invalid("layers must be a list")
    refs = [config] + [_descriptor(e, f"layers[{i}]") for i, e in enumerate(layers)]
    if artifact_type is None and media == mt.OCI_MANIFEST:
        artifact_type = config.media_type  # what the referrers API reports
    return ParsedManifest(media, blobs=refs, subject=subject, artifact_type=artifact_type,
                          annotations=annotations)
