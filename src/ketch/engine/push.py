"""``docker push``: an image's layers, config and manifest to a registry.

What is pushed is the image's manifest for this host (an index the image points at is
not pushed: only the platform manifest ketch has in full), byte for byte, so the
digest the registry reports is the local one. Per layer (``id`` is the diff_id's 12
hex, as dockerd shows)::

    "Preparing", "Waiting"
    HEAD blob     exists -> "Layer already exists"          (pushing twice is a no-op)
    mount         the blob came from another repository of this registry (content
                  label ``ketch.io/distribution.source.<domain>``) -> "Mounted from <repo>"
    upload        POST, then one PUT of the blob            -> "Pushing" {current,total}, "Pushed"

then the config blob, then ``PUT`` of the manifest under the tag, and the closing
``<tag>: digest: <digest> size: <n>`` line with its ``aux`` message. Pushed blobs get
the source label of the target repository, so later pushes elsewhere can mount them.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

from ketch.content import ContentStore
from ketch.distribution.client import Registry
from ketch.engine.pull import Emit, _Meter, source_label
from ketch.errors import KetchError, NotFound
from ketch.image.store import Image, manifest_descriptor, read_config, read_manifest
from ketch.oci.descriptor import Descriptor
from ketch.oci.digest import Digest

__all__ = ["Pusher"]

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
            jobs = [pool.submit(self._blob_in_worker, domain, repo, d, lid)
                    for d, lid in zip(layers, ids, strict=True)]
            for j in jobs:
                j.result()
        self._blob(domain, repo, Descriptor.from_json(manifest["config"]), None)
        data = self.content.read(desc.digest)
        got = self.registry.put_manifest(repo, tag, data, desc.media_type)
        if got != desc.digest:
            log.warning("registry reports manifest digest %s for our %s", got, desc.digest)
        self.emit({"status": f"{tag}: digest: {desc.digest} size: {len(data)}"})
        self.emit({"progressDetail": {}, "aux": {"Tag": tag, "Digest": str(desc.digest),
                                                 "Size": len(data)}})
        return desc.digest, len(data)

    def _blob_in_worker(self, domain: str, repo: str, desc: Descriptor, lid: str) -> None:
        try:
            self._blob(domain, repo, desc, lid)
        finally:
            self.registry.transport.release_thread()

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

