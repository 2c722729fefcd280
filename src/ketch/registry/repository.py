"""The registry's data model over a ``StorageDriver``: blobs, uploads, manifests, tags.

``Registry`` methods are synchronous and may block on storage; the HTTP handlers call
them in worker threads. They take names and digests already checked by
``ketch.registry.names`` and raise ``RegistryError`` subclasses. The tree they write is
drawn in ``ketch.registry.layout``.

Upload lifecycle::

    start_upload ─▶ append(…)* ─▶ finish(expected digest) ─▶ blob linked in the repo
          │               └─ cancel_upload (or an abandoned upload, for GC to reap)
          └─ upload_size: where a resumable upload stands

Every byte appended is hashed as it is written; the running hash lives in memory,
keyed by upload id (``_Hashers``). If it is missing or out of step with the stored
bytes (a restart, a failed write), ``finish`` rehashes the stored bytes instead, so
a digest is always checked against what is on disk. A digest mismatch removes the
upload: nothing partially stored survives a failed push.

Manifest writes go data → referrer entry → revision link → tag, so a crash between two
steps leaves only unreferenced bytes, never a tag pointing at nothing; readers of the
referrers list skip entries whose revision is missing.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

from ketch.oci.digest import Digest, Digester
from ketch.registry import layout
from ketch.registry.errors import (
    BlobUnknown,
    BlobUploadUnknown,
    DigestInvalid,
    ErrorList,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    RegistryError,
    SizeInvalid,
)
from ketch.registry.gc import wait_settled
from ketch.registry.manifest import BlobRef, ParsedManifest, parse_manifest
from ketch.registry.storage import FileWriter, PathNotFound, StorageDriver

__all__ = ["Descriptor", "PutManifestResult", "Registry"]

_HASH_READ = 4 << 20


@dataclass(frozen=True, slots=True)
class Descriptor:
    """What the registry records about a manifest (its revision link)."""

    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest),
                               "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = self.annotations
        return out

    @classmethod
    def from_json(cls, raw: bytes) -> Descriptor:
        doc = json.loads(raw)
        return cls(doc["mediaType"], Digest.parse(doc["digest"]), int(doc["size"]),
                   doc.get("artifactType"), doc.get("annotations"))


@dataclass(frozen=True, slots=True)
class PutManifestResult:
    digest: Digest
    subject: Digest | None
    media_type: str = ""
    size: int = 0
    tags: tuple[str, ...] = ()


class _Hashers:
    """Running hashes of uploads in progress: upload id → (hasher, bytes hashed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._map: dict[str, tuple[Digester, int]] = {}

    def take(self, upload_id: str) -> tuple[Digester, int] | None:
        with self._lock:
            return self._map.pop(upload_id, None)

    def put(self, upload_id: str, hasher: Digester, offset: int) -> None:
        with self._lock:
            self._map[upload_id] = (hasher, offset)

    def drop(self, upload_id: str) -> None:
        with self._lock:
            self._map.pop(upload_id, None)


class UploadAppender:
    """Appends one request's bytes to an upload, hashing as it writes.

    Made by ``Registry.appender``; ``write`` any number of times, then ``close()``
    (keep for more chunks) or ``commit()`` (durable, before ``finish``). On an error
    mid-write call ``abort()``: the bytes stay for a resume but the running hash is
    dropped (``finish`` will rehash from storage).
    """

    def __init__(self, hashers: _Hashers, upload_id: str, writer: FileWriter,
                 hasher: Digester | None) -> None:
        self._hashers, self._id, self._writer, self._hasher = hashers, upload_id, writer, hasher

    @property
    def size(self) -> int:
        return self._writer.size

    def write(self, data: bytes) -> None:
        self._writer.write(data)
        if self._hasher is not None:
            self._hasher.update(data)

    def _park(self) -> None:
        if self._hasher is not None:
            self._hashers.put(self._id, self._hasher, self._writer.size)

    def close(self) -> None:
        self._writer.close()
        self._park()

    def commit(self) -> None:
        self._writer.commit()
        self._park()

    def abort(self) -> None:
        self._writer.close()
        self._hashers.drop(self._id)


class Registry:
    """Repositories on one ``StorageDriver``; see the module docstring."""

    def __init__(self, driver: StorageDriver, *, max_manifest_bytes: int = 4 << 20) -> None:
        self.driver = driver
        self.max_manifest_bytes = max_manifest_bytes
        self._hashers = _Hashers()

    # -- blobs --------------------------------------------------------------------------

    def _exists(self, path: str) -> bool:
        try:
            self.driver.stat(path)
            return True
        except PathNotFound:
            return False

    def blob_size(self, name: str, digest: Digest) -> int:
        """The size of a blob this repository may serve (layers, configs, and its
        manifests fetched as blobs); ``BlobUnknown`` otherwise."""
        if not (self._exists(layout.layer_link(name, digest))
                or self._exists(layout.revision_link(name, digest))):
            raise BlobUnknown(detail={"digest": str(digest)})
        try:
            return self.driver.stat(layout.blob_data(digest)).size
        except PathNotFound:
            raise BlobUnknown(detail={"digest": str(digest)}) from None

    def open_blob(self, digest: Digest) -> BinaryIO:
        """The blob's bytes (check ``blob_size`` first: this does not look at links)."""
        try:
            return self.driver.reader(layout.blob_data(digest))
        except PathNotFound:
            raise BlobUnknown(detail={"digest": str(digest)}) from None

    def link_blob(self, name: str, digest: Digest) -> None:
        self.driver.put_content(layout.layer_link(name, digest), str(digest).encode())

    def delete_blob(self, name: str, digest: Digest) -> None:
        """Unlink the blob from this repository (its bytes stay until GC)."""
        try:
            self.driver.delete(layout.layer_link(name, digest).rsplit("/", 1)[0])
        except PathNotFound:
            raise BlobUnknown(detail={"digest": str(digest)}) from None

    def mount_blob(self, name: str, digest: Digest, source: str | None) -> bool:
        """Link a blob from ``source`` (or, when None, from anywhere it is stored) into
        ``name``; False if there is nothing to mount."""
        if source is not None and not self._exists(layout.layer_link(source, digest)):
            return False
        if not self._exists(layout.blob_data(digest)):
            return False
        self.link_blob(name, digest)
        return True

    # -- uploads ------------------------------------------------------------------------

    def start_upload(self, name: str) -> str:
        upload_id = secrets.token_hex(16)
        stamp = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        self.driver.put_content(layout.upload_started(name, upload_id), stamp.encode())
        with self.driver.writer(layout.upload_data(name, upload_id)):
            pass
        self._hashers.put(upload_id, Digester(), 0)
        return upload_id

    def upload_size(self, name: str, upload_id: str) -> int:
        try:
            return self.driver.stat(layout.upload_data(name, upload_id)).size
        except PathNotFound:
            raise BlobUploadUnknown(detail={"uuid": upload_id}) from None

    def appender(self, name: str, upload_id: str) -> UploadAppender:
        try:
            w = self.driver.writer(layout.upload_data(name, upload_id), append=True)
        except PathNotFound:
            raise BlobUploadUnknown(detail={"uuid": upload_id}) from None
        state = self._hashers.take(upload_id)
        hasher = state[0] if state is not None and state[1] == w.size else None
        return UploadAppender(self._hashers, upload_id, w, hasher)

    def cancel_upload(self, name: str, upload_id: str) -> None:
        self._hashers.drop(upload_id)
        try:
            self.driver.delete(layout.upload_dir(name, upload_id))
        except PathNotFound:
            raise BlobUploadUnknown(detail={"uuid": upload_id}) from None

    def _upload_digest(self, name: str, upload_id: str, algorithm: str) -> tuple[Digest, int]:
        state = self._hashers.take(upload_id)
        size = self.upload_size(name, upload_id)
        if state is not None and state[1] == size and state[0].algorithm == algorithm:
            return state[0].digest(), size
        hasher = Digester(algorithm)
        with self.driver.reader(layout.upload_data(name, upload_id)) as f:
            while chunk := f.read(_HASH_READ):
                hasher.update(chunk)
        return hasher.digest(), size

    def finish_upload(self, name: str, upload_id: str, expected: Digest) -> int:
        """Check the upload against ``expected``, make it blob ``expected`` of ``name``
        and remove the upload; its size. On a mismatch the upload is removed and
        ``DigestInvalid`` raised."""
        actual, size = self._upload_digest(name, upload_id, expected.algorithm)
        if actual != expected:
            self.cancel_upload(name, upload_id)
            raise DigestInvalid(detail={"digest": str(expected), "actual": str(actual)})
        if self._exists(layout.blob_data(expected)):
            pass  # same bytes already stored (a concurrent push of the same blob)
        else:
            self.driver.move(layout.upload_data(name, upload_id), layout.blob_data(expected))
        self.link_blob(name, expected)
        try:
            self.driver.delete(layout.upload_dir(name, upload_id))
        except PathNotFound:
            pass
        return size

    # -- manifests ----------------------------------------------------------------------

    def _revision(self, name: str, digest: Digest) -> Descriptor:
        try:
            return Descriptor.from_json(self.driver.get_content(
                layout.revision_link(name, digest)))
        except PathNotFound:
            raise ManifestUnknown(detail={"name": name, "reference": str(digest)}) from None

    def resolve(self, name: str, reference: Digest | str) -> Descriptor:
        """The descriptor of manifest ``reference`` (a digest or a tag) in ``name``."""
        if isinstance(reference, str):
            try:
                raw = self.driver.get_content(layout.tag_link(name, reference))
            except PathNotFound:
                raise ManifestUnknown(detail={"name": name, "tag": reference}) from None
            reference = Digest.parse(raw.decode().strip())
        return self._revision(name, reference)

    def get_manifest(self, name: str, reference: Digest | str) -> tuple[Descriptor, bytes]:
        desc = self.resolve(name, reference)
        try:
            return desc, self.driver.get_content(layout.blob_data(desc.digest))
        except PathNotFound:
            raise ManifestUnknown(detail={"name": name, "reference": str(reference)}) \
                from None

    def put_manifest(self, name: str, reference: Digest | str, content_type: str | None,
                     body: bytes, tags: tuple[str, ...] = ()) -> PutManifestResult:
        """Check and store a manifest; tag it when ``reference`` is a tag, and with
        each of ``tags`` (the ``?tag=`` parameters of a PUT by digest).

        Order: data → referrer entry → revision link → tags → *confirm*. Confirming
        re-checks, after this push's own links exist, that every blob and child manifest
        it references is still there and not being swept by a concurrent GC (waiting
        while a fresh ``sweeping`` mark says GC is deciding). If GC removed one, the
        links just written are taken back and the push fails with
        ``MANIFEST_BLOB_UNKNOWN``: no manifest is ever left pointing at a deleted blob.
        """
        if len(body) > self.max_manifest_bytes:
            raise SizeInvalid(f"manifest larger than {self.max_manifest_bytes} bytes",
                              status=413)
        parsed = parse_manifest(body, content_type)
        algorithm = reference.algorithm if isinstance(reference, Digest) else "sha256"
        hasher = Digester(algorithm)
        hasher.update(body)
        digest = hasher.digest()
        if isinstance(reference, Digest) and digest != reference:
            raise DigestInvalid(detail={"digest": str(reference), "actual": str(digest)})
        all_tags = tuple(dict.fromkeys(((reference,) if isinstance(reference, str) else ())
                                       + tags))
        self._check_references(name, parsed)
        desc = Descriptor(parsed.media_type, digest, len(body), parsed.artifact_type,
                          parsed.annotations)
        if not self._exists(layout.blob_data(digest)):
            self.driver.put_content(layout.blob_data(digest), body)
        raw = json.dumps(desc.to_json(), separators=(",", ":")).encode()
        if parsed.subject is not None:
            self.driver.put_content(
                layout.referrer_link(name, parsed.subject.digest, digest), raw)
        self.driver.put_content(layout.revision_link(name, digest), raw)
        for tag in all_tags:
            self.driver.put_content(layout.tag_link(name, tag), str(digest).encode())
        missing = self._confirm(name, parsed, digest, body)
        if missing:
            self._take_back(name, parsed, digest, all_tags)
            errors: list[RegistryError] = [ManifestBlobUnknown(detail={"digest": str(d)})
                                           for d in missing]
            if len(errors) == 1:
                raise errors[0]
            raise ErrorList(errors)
        return PutManifestResult(digest, parsed.subject.digest if parsed.subject else None,
                                 parsed.media_type, len(body), all_tags)

    def _confirm(self, name: str, parsed: ParsedManifest, digest: Digest,
                 body: bytes) -> list[Digest]:
        """What this manifest needs that is gone now its links are written (see
        ``put_manifest``); waits out GC decisions in progress. Its own bytes, if a GC
        swept them before the revision existed, are simply written again: any GC that
        looks from now on sees the revision."""
        wait_settled(self.driver, layout.blob_sweeping(digest))
        if not self._exists(layout.blob_data(digest)):
            self.driver.put_content(layout.blob_data(digest), body)
        missing: list[Digest] = []
        for ref in parsed.blobs:
            if ref.has_urls:
                continue
            wait_settled(self.driver, layout.blob_sweeping(ref.digest))
            if not self._exists(layout.blob_data(ref.digest)):
                missing.append(ref.digest)
        for child in [*parsed.children, BlobRef(digest, 0, "")]:
            wait_settled(self.driver, layout.revision_sweeping(name, child.digest))
            if not self._exists(layout.revision_link(name, child.digest)):
                missing.append(child.digest)
        return missing

    def _take_back(self, name: str, parsed: ParsedManifest, digest: Digest,
                   tags: tuple[str, ...]) -> None:
        for tag in tags:
            try:
                if self.driver.get_content(layout.tag_link(name, tag)).decode().strip() \
                        == str(digest):
                    self.driver.delete(layout.tag_dir(name, tag))
            except PathNotFound:
                pass
        paths = [layout.revision_dir(name, digest)]
        if parsed.subject is not None:
            paths.append(layout.referrer_link(name, parsed.subject.digest, digest)
                         .rsplit("/", 1)[0])
        for path in paths:
            try:
                self.driver.delete(path)
            except PathNotFound:
                pass

    def _check_references(self, name: str, parsed: ParsedManifest) -> None:
        errors: list[RegistryError] = []
        for ref in parsed.blobs:
            if ref.has_urls:
                continue  # foreign layers may live elsewhere
            try:
                size = self.blob_size(name, ref.digest)
            except BlobUnknown:
                errors.append(ManifestBlobUnknown(detail={"digest": str(ref.digest)}))
                continue
            if size != ref.size:
                errors.append(ManifestInvalid(
                    f"manifest invalid: blob {ref.digest} has {size} bytes, the "
                    f"descriptor says {ref.size}", detail={"digest": str(ref.digest)}))
        for child in parsed.children:
            if not self._exists(layout.revision_link(name, child.digest)):
                errors.append(ManifestBlobUnknown(detail={"digest": str(child.digest)}))
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ErrorList(errors)

    def delete_tag(self, name: str, tag: str) -> None:
        try:
            self.driver.delete(layout.tag_dir(name, tag))
        except PathNotFound:
            raise ManifestUnknown(detail={"name": name, "tag": tag}) from None

    def delete_manifest(self, name: str, digest: Digest) -> None:
        """Remove a manifest from ``name``: its tags, its referrer entry, its revision."""
        desc = self._revision(name, digest)
        for tag in self.tags(name, missing_ok=True):
            try:
                raw = self.driver.get_content(layout.tag_link(name, tag))
            except PathNotFound:
                continue
            if raw.decode().strip() == str(digest):
                self.delete_tag(name, tag)
        try:
            parsed = parse_manifest(self.driver.get_content(layout.blob_data(digest)),
                                    desc.media_type)
        except (PathNotFound, ManifestInvalid):
            parsed = None
        if parsed is not None and parsed.subject is not None:
            try:
                self.driver.delete(layout.referrer_link(name, parsed.subject.digest, digest)
                                   .rsplit("/", 1)[0])
            except PathNotFound:
                pass
        try:
            self.driver.delete(layout.revision_dir(name, digest))
        except PathNotFound:
            raise ManifestUnknown(detail={"name": name, "digest": str(digest)}) from None

    # -- discovery ----------------------------------------------------------------------

    def repo_exists(self, name: str) -> bool:
        return self._exists(layout.manifests_dir(name)) or \
            self._exists(layout.layers_dir(name))

    def tags(self, name: str, *, missing_ok: bool = False) -> list[str]:
        """Sorted tags of ``name``; ``NameUnknown`` if the repository does not exist."""
        try:
            return sorted(p.rsplit("/", 1)[1] for p in self.driver.list(layout.tags_dir(name)))
        except PathNotFound:
            if missing_ok or self.repo_exists(name):
                return []
            raise NameUnknown(detail={"name": name}) from None

    def catalog(self) -> list[str]:
        """Every repository holding at least one manifest, sorted."""
        found: list[str] = []

        def visit(path: str) -> None:
            try:
                children = self.driver.list(path)
            except PathNotFound:
                return
            for child in children:
                leaf = child.rsplit("/", 1)[1]
                if leaf == "_manifests":
                    found.append(path[len(layout.REPOSITORIES) + 1:])
                elif not leaf.startswith("_"):
                    visit(child)

        visit(layout.REPOSITORIES)
        return sorted(found)

    def referrers(self, name: str, subject: Digest,
                  artifact_type: str | None = None) -> list[dict[str, Any]]:
        """Descriptors of the manifests in ``name`` whose subject is ``subject``."""
        out: list[dict[str, Any]] = []
        base = layout.referrers_dir(name, subject)
        try:
            entries = [fi.path for fi in self.driver.walk(base)
                       if not fi.is_dir and fi.path.endswith("/link")]
        except PathNotFound:
            return out
        for path in entries:
            try:
                desc = Descriptor.from_json(self.driver.get_content(path))
            except (PathNotFound, ValueError, KeyError):
                continue
            if not self._exists(layout.revision_link(name, desc.digest)):
                continue  # a push that did not finish, or a delete in progress
            if artifact_type is not None and desc.artifact_type != artifact_type:
                continue
            out.append(desc.to_json())
        return out
