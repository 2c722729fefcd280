"""The image service's model: images by ID over store records, and their names.

See :mod:`ketch.engine.images` for the terms (image, tagged and dangling records,
parent). :class:`ImageCore` holds the state and the reading helpers the deletion
rules (:mod:`ketch.engine.image_delete`) and the service API share; its name changes
(``_set_name``, ``_keep``) keep the invariant that an image has a dangling record
exactly when it has no tagged one.
"""

from __future__ import annotations

import collections
import gzip
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ketch.content import ContentStore
from ketch.engine.events import EventBus
from ketch.engine.image_filters import parse_created
from ketch.errors import InvalidArgument, KetchError
from ketch.image import blobs, reference
from ketch.image.store import Image, ImageStore, manifest_layers, read_manifest
from ketch.oci import mediatypes as mt
from ketch.oci.descriptor import Descriptor
from ketch.oci.digest import Digest
from ketch.snapshot import Snapshotter

__all__ = [
    "DANGLING_REPO",
    "LABEL_PARENT",
    "ImageCore",
    "ImageEntry",
    "ImageMeta",
    "familiar",
    "is_dangling",
    "short_id",
    "target_name",
]

log = logging.getLogger(__name__)

DANGLING_REPO = "ketch-dangling"
LABEL_PARENT = "ketch.io/image.parent"
_DANGLING_PREFIX = f"{reference.DEFAULT_DOMAIN}/library/{DANGLING_REPO}@"


def short_id(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def is_dangling(record: Image) -> bool:
    return record.name.startswith(_DANGLING_PREFIX)


def familiar(name: str) -> str:
    return reference.normalize(name).familiar()


def target_name(repo: str, tag: str | None) -> str:
    """The full name ``repo`` + ``tag`` make (tag default ``latest``), checked as dockerd
    checks a tag: no digests, no 64-hex repositories."""
    ref = reference.normalize(repo)
    if ref.digest is not None:
        raise InvalidArgument("refusing to create a tag with a digest reference")
    if tag:
        try:
            checked = reference.parse(f"x:{tag}") if "@" not in tag else None
        except InvalidArgument:
            checked = None
        if checked is None or checked.tag != tag:
            raise InvalidArgument(f"invalid tag format: {tag!r}")
        ref = reference.Reference(ref.domain, ref.path, tag)
    return str(ref)


@dataclass
class ImageEntry:
    """One image as the store shows it now (see the module doc)."""

    id: str
    records: list[Image] = field(default_factory=list)

    @property
    def tagged(self) -> list[Image]:
        return sorted((r for r in self.records if not is_dangling(r)), key=lambda r: r.name)

    @property
    def record(self) -> Image:
        return (self.tagged or self.records)[0]


@dataclass(frozen=True)
class ImageMeta:
    """What an image's content says: its config JSON and its layer descriptors."""

    config: dict[str, Any]
    layers: list[Descriptor]


class ImageCore:
    """State and shared helpers of the image service (see the module doc)."""

    def __init__(self, store: ImageStore, content: ContentStore, snapshotter: Snapshotter,
                 events: EventBus) -> None:
        self.store = store
        self.content = content
        self.snapshotter = snapshotter
        self.events = events
        #: image ID -> IDs of containers using it (set by the container service)
        self.in_use: Callable[[str], list[str]] = lambda image_id: []
        #: image ID -> IDs of *running* containers using it (optional refinement)
        self.running: Callable[[str], list[str]] = lambda image_id: []
        self.tmpdir = os.path.join(store.root, "tmp")
        self._mu = threading.RLock()
        self._lease_mu = threading.Lock()
        self._leases: collections.Counter[Digest] = collections.Counter()
        self._meta: dict[Digest, ImageMeta] = {}

    # -- reading --------------------------------------------------------------------------

    def _images(self) -> dict[str, ImageEntry]:
        out: dict[str, ImageEntry] = {}
        for r in self.store.list():
            out.setdefault(r.id, ImageEntry(r.id)).records.append(r)
        return out

    def _meta_of(self, record: Image) -> ImageMeta:
        meta = self._meta.get(record.target.digest)
        if meta is None:
            manifest = read_manifest(self.content, record.target)
            meta = ImageMeta(self.store.config(record), manifest_layers(manifest))
            self._meta[record.target.digest] = meta
        return meta

    def _parent(self, image_id: str) -> str:
        try:
            return self.content.info(Digest.parse(image_id)).labels.get(LABEL_PARENT, "")
        except KetchError:
            return ""

    def _children(self, image_id: str, images: Mapping[str, ImageEntry]) -> list[str]:
        return [i for i in images if i != image_id and self._parent(i) == image_id]

    def _layer_size(self, desc: Descriptor) -> int:
        """Uncompressed size of a layer, measured once and kept as a content label."""
        try:
            known = self.content.info(desc.digest).labels.get(blobs.LABEL_UNCOMPRESSED)
            if known is not None:
                return int(known)
            if desc.media_type not in (mt.OCI_LAYER_GZIP, mt.DOCKER_LAYER_GZIP):
                return desc.size
            size = 0
            with self.content.open(desc.digest) as raw, gzip.GzipFile(fileobj=raw) as gz:
                while chunk := gz.read(1 << 20):
                    size += len(chunk)
            self.content.update_labels(desc.digest,
                                       {blobs.LABEL_UNCOMPRESSED: str(size)})
            return size
        except (KetchError, OSError, EOFError, ValueError):
            return desc.size

    def _created(self, meta: ImageMeta) -> datetime | None:
        return parse_created(meta.config.get("created"))

    # -- names ----------------------------------------------------------------------------

    def _publish(self, action: str, image_id: str, name: str | None = None) -> None:
        self.events.publish("image", action, image_id, {"name": name or image_id})

    def _set_name(self, full: str, target: Descriptor) -> tuple[Image, str | None]:
        """Point ``full`` at ``target``; (record, ID of an image that lost its last tag)."""
        with self._mu:
            before = self._images()
            old = next((r for i in before.values() for r in i.records if r.name == full), None)
            rec = self.store.put(full, target)
            for r in before.get(rec.id, ImageEntry(rec.id)).records:
                if is_dangling(r):
                    self.store.delete(r.name)
            if old is None or old.id == rec.id:
                return rec, None
            if any(r.name != full for r in before[old.id].tagged):
                return rec, None
            self.store.put(_DANGLING_PREFIX + str(old.target.digest), old.target)
            return rec, old.id

    def _keep(self, target: Descriptor) -> Image:
        """A dangling record for ``target``'s image unless the image has a record."""
        with self._mu:
            rec = self.store.put(_DANGLING_PREFIX + str(target.digest), target)
            others = self._images()[rec.id].records
            if any(r.name != rec.name for r in others):
                self.store.delete(rec.name)
            return rec

