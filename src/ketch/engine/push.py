"""``docker push``: an image's layers, config and manifest to a registry.

What is pushed is the image's manifest for this host (an index the image points at is
not pushed: only the platform manifest ketch has in full). Per layer (``id`` is the
diff_id's 12 hex, as dockerd shows)::

    "Preparing", "Waiting"
    HEAD blob     exists -> "Layer already exists"          (pushing twice is a no-op)
    mount         the blob came from another repository of this registry (content
                  label ``ketch.io/distribution.source.<domain>``) -> "Mounted from <repo>"
    upload        POST, then one PUT of the blob            -> "Pushing" {current,total}, "Pushed"

then the config blob, then ``PUT`` of the manifest under the tag, and the closing
``<tag>: digest: <digest> size: <n>`` line with its ``aux`` message. Pushed blobs get
the source label of the target repository, so later pushes elsewhere can mount them.

Compression. A layer stored uncompressed (``import``, ``commit``, ``build``: media
type ``...tar``) is gzip'd on the way out, streamed: POST, one chunked PATCH of the
compressed bytes, PUT with the digest counted meanwhile (docker does the same). The
compressed digest and size are kept as the label ``ketch.io/distribution.gzip`` of the
uncompressed blob (docker keeps this diff_id -> digest mapping too), with the
repository as ``ketch.io/distribution.gzip-source.<domain>``: pushing again finds the
compressed blob with a HEAD (or mounts it from that repository) without compressing
anything. The manifest then names the gzip'd layers, so its digest is not the local
one; it is deterministic (level 6, mtime 0, same JSON), so a second push of the same
image gives the same digest. A layer already compressed (gzip, zstd) goes as stored,
and an image whose layers all are is pushed with its own manifest, byte for byte.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, BinaryIO, cast

from ketch.content import ContentStore
from ketch.distribution.client import Registry
from ketch.distribution.compression import GzipWriter
from ketch.engine.pull import Emit, _Meter, source_label
from ketch.errors import KetchError, NotFound
from ketch.image.store import Image, manifest_descriptor, read_config, read_manifest
from ketch.oci import mediatypes as mt
from ketch.oci.descriptor import Descriptor
from ketch.oci.digest import Digest, digest_of

__all__ = ["LABEL_GZIP", "Pusher", "gzip_source_label"]

#: on an uncompressed layer blob: "<digest> <size>" of its gzip'd form, as pushed
LABEL_GZIP = "ketch.io/distribution.gzip"
_GZIP_OF = {mt.OCI_LAYER: mt.OCI_LAYER_GZIP, mt.DOCKER_LAYER: mt.DOCKER_LAYER_GZIP}


def gzip_source_label(domain: str) -> str:
    """The content label naming a repository of ``domain`` holding the gzip'd form."""
    return f"ketch.io/distribution.gzip-source.{domain}"


def _known_gzip(labels: Mapping[str, str], media_type: str) -> Descriptor | None:
    try:
        digest, size = str(labels[LABEL_GZIP]).split()
        return Descriptor(media_type, Digest.parse(digest), int(size))
    except (KeyError, ValueError, KetchError):
        return None

log = logging.getLogger(__name__)


class _Reader:
    """A blob reader counting what the upload consumed (``Pushing`` progress)."""

    def __init__(self, f: BinaryIO, meter: _Meter | None) -> None:
        self.f, self.meter = f, meter

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        if self.meter is not None:
            self.meter.add(len(data))
        return data

    def seek(self, pos: int) -> int:
        if self.meter is not None:
            self.meter.current = pos
        return self.f.seek(pos)


class Pusher:
    """One push of one tag (see the module doc)."""

    def __init__(self, content: ContentStore, registry: Registry, emit: Emit,
                 max_uploads: int = 4) -> None:
        self.content = content
        self.registry = registry
        self.emit = emit
        self.max_uploads = max_uploads
        self._mu = threading.Lock()

    def push(self, image: Image, domain: str, repo: str, tag: str) -> tuple[Digest, int]:
        """Push ``image`` as ``repo:tag``; returns the manifest's (digest, size)."""
        desc = manifest_descriptor(self.content, image.target)
        manifest = read_manifest(self.content, image.target)
        config = read_config(self.content, manifest)
        diff_ids: list[str] = config["rootfs"]["diff_ids"]
        layers = [Descriptor.from_json(raw) for raw in manifest["layers"]]
        ids = [Digest.parse(d).hex[:12] for d in diff_ids]
        for lid in ids:
            self.emit({"status": "Preparing", "id": lid, "progressDetail": {}})
        for lid in ids[self.max_uploads:]:
            self.emit({"status": "Waiting", "id": lid, "progressDetail": {}})
        with ThreadPoolExecutor(self.max_uploads, thread_name_prefix="push") as pool:
            jobs = [pool.submit(self._layer_in_worker, domain, repo, d, lid)
                    for d, lid in zip(layers, ids, strict=True)]
            pushed = [j.result() for j in jobs]
        self._blob(domain, repo, Descriptor.from_json(manifest["config"]), None)
        data = self.content.read(desc.digest)
        digest = desc.digest
        if pushed != layers:  # some were compressed: the manifest must name what was sent
            doc = json.loads(data)
            doc["layers"] = [{**raw, "mediaType": p.media_type, "digest": str(p.digest),
                              "size": p.size}
                             for raw, p in zip(doc["layers"], pushed, strict=True)]
            data = json.dumps(doc, indent=3).encode()
            digest = digest_of(data)
        got = self.registry.put_manifest(repo, tag, data, desc.media_type)
        if got != digest:
            log.warning("registry reports manifest digest %s for our %s", got, digest)
        self.emit({"status": f"{tag}: digest: {digest} size: {len(data)}"})
        self.emit({"progressDetail": {}, "aux": {"Tag": tag, "Digest": str(digest),
                                                 "Size": len(data)}})
        return digest, len(data)

    def _layer_in_worker(self, domain: str, repo: str, desc: Descriptor,
                         lid: str) -> Descriptor:
        try:
            gz_type = _GZIP_OF.get(desc.media_type)
            if gz_type is None:
                self._blob(domain, repo, desc, lid)
                return desc
            return self._gzip_layer(domain, repo, desc, gz_type, lid)
        finally:
            self.registry.transport.release_thread()

    def _gzip_layer(self, domain: str, repo: str, desc: Descriptor, gz_type: str,
                    lid: str) -> Descriptor:
        """Push the uncompressed layer ``desc`` gzip'd; its descriptor as pushed."""
        def say(status: str) -> None:
            self.emit({"status": status, "id": lid, "progressDetail": {}})

        try:
            info = self.content.info(desc.digest)
        except NotFound:
            raise NotFound(f"blob {desc.digest} of the image is missing from the content "
                           f"store") from None
        known = _known_gzip(info.labels, gz_type)
        if known is not None:
            if self.registry.blob_exists(repo, known.digest):
                say("Layer already exists")
                self._gzip_labels(domain, repo, desc.digest, known)
                return known
            source = info.labels.get(gzip_source_label(domain))
            if source and source != repo and \
                    self.registry.mount_blob(repo, known.digest, source):
                say(f"Mounted from {source}")
                self._gzip_labels(domain, repo, desc.digest, known)
                return known
        meter = _Meter(self.emit, "Pushing", lid, desc.size)
        with self.content.open(desc.digest) as f:
            gz = GzipWriter(_Reader(f, meter))
            digest = self.registry.upload_stream(repo, cast(IO[bytes], gz), lambda: gz.digest)
        pushed = Descriptor(gz_type, digest, gz.size)
        say("Pushed")
        self._gzip_labels(domain, repo, desc.digest, pushed)
        return pushed

    def _gzip_labels(self, domain: str, repo: str, digest: Digest, gz: Descriptor) -> None:
        try:
            with self._mu:
                self.content.update_labels(digest, {LABEL_GZIP: f"{gz.digest} {gz.size}",
                                                    gzip_source_label(domain): repo})
        except KetchError as e:
            log.debug("labelling %s: %s", digest, e)

    def _blob(self, domain: str, repo: str, desc: Descriptor, lid: str | None) -> None:
        def say(status: str, **extra: Any) -> None:
            if lid is not None:
                self.emit({"status": status, "id": lid, "progressDetail": {}, **extra})

        try:
            info = self.content.info(desc.digest)
        except NotFound:
            raise NotFound(f"blob {desc.digest} of the image is missing from the content "
                           f"store") from None
        if self.registry.blob_exists(repo, desc.digest):
            say("Layer already exists")
            self._label(domain, repo, desc.digest)
            return
        source = info.labels.get(source_label(domain))
        if source and source != repo and self.registry.mount_blob(repo, desc.digest, source):
            say(f"Mounted from {source}")
            self._label(domain, repo, desc.digest)
            return
        meter = _Meter(self.emit, "Pushing", lid, desc.size) if lid is not None else None
        with self.content.open(desc.digest) as f:
            self.registry.upload_blob(repo, desc, _Reader(f, meter))  # type: ignore[arg-type]
        say("Pushed")
        self._label(domain, repo, desc.digest)

    def _label(self, domain: str, repo: str, digest: Digest) -> None:
        try:
            with self._mu:
                self.content.update_labels(digest, {source_label(domain): repo})
        except KetchError as e:
            log.debug("labelling %s: %s", digest, e)

