"""The image store: names pointing at image content in a ``ContentStore``.

Terms
-----
image
    A record ``{name, target, created, labels}``. ``name`` is a normalised reference
    (``docker.io/library/busybox:latest``, see :mod:`ketch.image.reference`);
    ``target`` is the descriptor of an OCI/Docker manifest or of an index (a list of
    manifests, one per platform). The content itself stays in the content store.
image ID
    The digest of the image's config (Docker's ``docker images`` ID), found through
    the target's manifest for this host's platform; the target's own digest when
    that content is not there (yet). Several names may share one ID.

Layout under the store's root::

    <root>/
      images.json   {"version": 1, "images": {name: {"target", "created", "labels", "id"}}}
                    replaced whole on each change (ketch.runtime.state.atomic_write)
      images.lock   flock(2)ed: exclusive around read-modify-write; readers need no
                    lock because images.json is only ever replaced by rename

Lookup (``get``) takes what ``docker image inspect`` takes: a reference in any
spelling (``busybox``, ``busybox:latest``, ``docker.io/library/busybox:latest``), a
``name@digest`` of the target, an image ID (``sha256:<hex>`` or bare hex) or a unique
prefix of one (at least 4 hex digits). Unknown images raise ``NotFound`` with Docker's
``No such image: X``.

Reading content (``manifest``, ``config``, ``layers``) checks what it reads: the
blob's digest against its descriptor, the media types, and that the config lists one
``diff_id`` per layer. The module functions ``read_manifest``/``read_config`` do the
same with only a content store, for code (like unpack) that has an image but no store.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import os
import platform as _platform
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from ketch.content import ContentStore
from ketch.errors import Conflict, InvalidArgument, NotFound
from ketch.image import reference
from ketch.oci import mediatypes as mt
from ketch.oci.descriptor import Descriptor, Platform
from ketch.oci.digest import Digest, digest_of
from ketch.runtime.state import atomic_write

__all__ = [
    "Image",
    "ImageStore",
    "host_platform",
    "read_config",
    "read_json_blob",
    "read_manifest",
    "resolve_platform",
]

VERSION = 1
_MIN_PREFIX = 4
_HEX = re.compile(r"[0-9a-f]+")
# uname -m -> (GOARCH, variant): the names image configs and indexes use
_GOARCH: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None), "amd64": ("amd64", None),
    "aarch64": ("arm64", None), "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
    "i386": ("386", None), "i686": ("386", None),
    "ppc64le": ("ppc64le", None), "s390x": ("s390x", None),
    "riscv64": ("riscv64", None), "mips64": ("mips64", None),
}
_CONFIG_TYPES = frozenset({mt.OCI_CONFIG, mt.DOCKER_CONFIG})


def host_platform() -> Platform:
    """This host as an image platform: ``linux`` and the GOARCH name of ``uname -m``."""
    machine = _platform.machine()
    arch, variant = _GOARCH.get(machine, (machine, None))
    return Platform(architecture=arch, os="linux", variant=variant)


@dataclass(frozen=True, slots=True)
class Image:
    """One name in the store and the content it points at."""

    name: str
    target: Descriptor
    created: datetime
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    id: str = ""  #: "sha256:<hex>" of the config (see the module doc)

    @property
    def reference(self) -> reference.Reference:
        return reference.normalize(self.name)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target.to_json(), "created": self.created.isoformat(),
                "labels": dict(self.labels), "id": self.id}

    @classmethod
    def from_json(cls, name: str, obj: Mapping[str, Any]) -> Image:
        return cls(name=name, target=Descriptor.from_json(obj["target"]),
                   created=datetime.fromisoformat(obj["created"]),
                   labels=MappingProxyType(dict(obj.get("labels") or {})),
                   id=str(obj.get("id") or obj["target"]["digest"]))


# -- reading image content --------------------------------------------------------------

# Manifests and configs read before, by digest: content-addressed bytes never change,
# and every container create and start reads its image's again. Small blobs only.
_VERIFIED: dict[str, bytes] = {}
_VERIFIED_MAX, _VERIFIED_BLOB_MAX = 256, 1 << 20


def read_json_blob(content: ContentStore, desc: Descriptor) -> dict[str, Any]:
    """The JSON object ``desc`` points at, after checking size and digest."""
    key = str(desc.digest)
    data = _VERIFIED.get(key)
    if data is None or len(data) != desc.size:
        data = desc.data if desc.data is not None else content.read(desc.digest)
        if len(data) != desc.size or digest_of(data, desc.digest.algorithm) != desc.digest:
            raise InvalidArgument(f"content {desc.digest}: does not match its descriptor "
                                  f"(size or digest differs)")
        if len(data) <= _VERIFIED_BLOB_MAX:
            if len(_VERIFIED) >= _VERIFIED_MAX:
                try:  # the oldest; threads may race here, which costs a cache entry only
                    _VERIFIED.pop(next(iter(_VERIFIED)))
                except (KeyError, RuntimeError, StopIteration):
                    pass
            _VERIFIED[key] = data
    try:
        obj = json.loads(data)
    except ValueError as e:
        raise InvalidArgument(f"content {desc.digest}: invalid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise InvalidArgument(f"content {desc.digest}: want a JSON object")
    return obj


def _check_media_type(obj: Mapping[str, Any], desc: Descriptor, what: str) -> None:
    got = obj.get("mediaType")
    if got is not None and got != desc.media_type:
        raise InvalidArgument(f"{what} {desc.digest}: mediaType {got!r} but its descriptor "
                              f"says {desc.media_type!r}")
    if obj.get("schemaVersion") != 2:
        raise InvalidArgument(f"{what} {desc.digest}: schemaVersion must be 2")


def resolve_platform(content: ContentStore, index: Descriptor,
                     want: Platform | None = None) -> Descriptor:
    """The manifest descriptor in ``index`` for ``want`` (default: this host).

    Matches os and architecture; among several, one with the wanted variant wins.
    ``NotFound`` if the index has no manifest for the platform.
    """
    want = want or host_platform()
    obj = read_json_blob(content, index)
    _check_media_type(obj, index, "index")
    entries = obj.get("manifests")
    if not isinstance(entries, list):
        raise InvalidArgument(f"index {index.digest}: 'manifests' must be an array")
    fits: list[Descriptor] = []
    for raw in entries:
        d = Descriptor.from_json(raw)
        p = d.platform
        if d.media_type in mt.MANIFEST_TYPES and p is not None \
                and (p.os, p.architecture) == (want.os, want.architecture):
            fits.append(d)
    if not fits:
        raise NotFound(f"index {index.digest}: no manifest for platform "
                       f"{want.os}/{want.architecture}")
    for d in fits:
        if d.platform is not None and d.platform.variant == want.variant:
            return d
    return fits[0]


def manifest_descriptor(content: ContentStore, target: Descriptor) -> Descriptor:
    """``target`` itself if it is a manifest, else this platform's manifest in the index."""
    if target.media_type in mt.INDEX_TYPES:
        return resolve_platform(content, target)
    if target.media_type in mt.MANIFEST_TYPES:
        return target
    raise InvalidArgument(f"image target {target.digest}: media type {target.media_type!r} "
                          f"is neither a manifest nor an index")


def read_manifest(content: ContentStore, target: Descriptor) -> dict[str, Any]:
    """The checked manifest JSON of an image target (an index is resolved first)."""
    desc = manifest_descriptor(content, target)
    obj = read_json_blob(content, desc)
    _check_media_type(obj, desc, "manifest")
    cfg = Descriptor.from_json(obj.get("config"))
    if cfg.media_type not in _CONFIG_TYPES:
        raise InvalidArgument(f"manifest {desc.digest}: config media type "
                              f"{cfg.media_type!r} is not an image config")
    layers = obj.get("layers")
    if not isinstance(layers, list):
        raise InvalidArgument(f"manifest {desc.digest}: 'layers' must be an array")
    for i, raw in enumerate(layers):
        ld = Descriptor.from_json(raw)
        if ld.media_type not in mt.LAYER_TYPES:
            raise InvalidArgument(f"manifest {desc.digest}: layer {i}: media type "
                                  f"{ld.media_type!r} is not a layer")
    return obj


def manifest_layers(manifest: Mapping[str, Any]) -> list[Descriptor]:
    return [Descriptor.from_json(raw) for raw in manifest["layers"]]


def read_config(content: ContentStore, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The checked config JSON a manifest points at (os, architecture, rootfs.diff_ids)."""
    desc = Descriptor.from_json(manifest["config"])
    obj = read_json_blob(content, desc)
    for key in ("architecture", "os"):
        if not isinstance(obj.get(key), str):
            raise InvalidArgument(f"config {desc.digest}: {key!r} must be a string")
    rootfs = obj.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers" \
            or not isinstance(rootfs.get("diff_ids"), list):
        raise InvalidArgument(f"config {desc.digest}: rootfs must be "
                              f"{{'type': 'layers', 'diff_ids': [...]}}")
    for d in rootfs["diff_ids"]:
        Digest.parse(d)
    n = len(manifest["layers"])
    if len(rootfs["diff_ids"]) != n:
        raise InvalidArgument(f"config {desc.digest}: {len(rootfs['diff_ids'])} diff_ids "
                              f"for {n} layers")
    return obj


# -- the store --------------------------------------------------------------------------

class ImageStore:
    """Named images under ``root``, their content in ``content`` (see the module doc)."""

    def __init__(self, root: str, content: ContentStore) -> None:
        self.root = root
        self.content = content
        os.makedirs(root, mode=0o700, exist_ok=True)
        self._path = os.path.join(root, "images.json")
        self._lock_path = os.path.join(root, "images.lock")

    # storage

    def _load(self) -> dict[str, Any]:
        try:
            with open(self._path, "rb") as f:
                doc: dict[str, Any] = json.load(f)
        except FileNotFoundError:
            return {}
        if doc.get("version") != VERSION:
            raise InvalidArgument(f"{self._path}: unknown version {doc.get('version')!r}")
        images: dict[str, Any] = doc["images"]
        return images

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Yield the records for change; they are written back if the block succeeds."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            images = self._load()
            yield images
            doc = {"version": VERSION, "images": dict(sorted(images.items()))}
            atomic_write(self._path, json.dumps(doc, indent=1).encode())
        finally:
            os.close(fd)

    def _image_id(self, target: Descriptor) -> str:
        try:
            manifest = read_manifest(self.content, target)
            return str(Descriptor.from_json(manifest["config"]).digest)
        except NotFound:
            return str(target.digest)

    # API

    def put(self, name: str, target: Descriptor,
            labels: Mapping[str, str] | None = None) -> Image:
        """Point ``name`` at ``target``, replacing what it pointed at (like a docker tag)."""
        return self._store(name, target, labels, replace=True)

    def create(self, name: str, target: Descriptor,
               labels: Mapping[str, str] | None = None) -> Image:
        """Like ``put`` but ``Conflict`` if ``name`` exists already."""
        return self._store(name, target, labels, replace=False)

    def _store(self, name: str, target: Descriptor, labels: Mapping[str, str] | None,
               *, replace: bool) -> Image:
        full = str(reference.normalize(name))
        img = Image(full, target, datetime.now(UTC), MappingProxyType(dict(labels or {})),
                    self._image_id(target))
        with self._locked() as images:
            if full in images and not replace:
                raise Conflict(f"image {full!r} already exists")
            images[full] = img.to_json()
        return img

    def list(self) -> list[Image]:
        """Every image, sorted by name."""
        return [Image.from_json(n, r) for n, r in sorted(self._load().items())]

    def get(self, name_or_id: str) -> Image:
        """The image ``name_or_id`` names (any spelling in the module doc)."""
        return self._find(name_or_id, self._load())[0]

    def _find(self, text: str, images: Mapping[str, Any]) -> tuple[Image, bool]:
        """(image, found by name?) for ``text``; NotFound in Docker's wording."""
        records = [Image.from_json(n, r) for n, r in images.items()]
        missing = NotFound(f"No such image: {text}")
        hexpart = text.removeprefix("sha256:")
        by_id = text.startswith("sha256:") or reference.is_image_id(text)
        if not by_id:
            try:
                ref = reference.normalize(text)
            except InvalidArgument:
                if not _HEX.fullmatch(text):
                    raise
                ref = None
            if ref is not None:
                for img in records:
                    if img.name == str(ref):
                        return img, True
                if ref.digest is not None:  # name@digest of a tagged target
                    for img in records:
                        r = img.reference
                        if r.name == ref.name and img.target.digest == ref.digest:
                            return img, True
        if not _HEX.fullmatch(hexpart) or len(hexpart) < _MIN_PREFIX:
            raise missing
        hits = {img.id: img for img in sorted(records, key=lambda i: i.name)
                if img.id.removeprefix("sha256:").startswith(hexpart)}
        if not hits:
            raise missing
        if len(hits) > 1:
            raise InvalidArgument(f"short ID {text} is ambiguous: {len(hits)} images match")
        return next(iter(hits.values())), False

    def tag(self, source: str, new_name: str) -> Image:
        """Give the image ``source`` names a further name ``new_name``."""
        img = self.get(source)
        return self.put(new_name, img.target, img.labels)

    def delete(self, name: str) -> builtins.list[str]:
        """Remove a name (untag); returns the names removed.

        Given an image ID, the image is removed if only one name points at it;
        with several, ``Conflict`` in Docker's wording (untag by name instead).
        Content is not deleted here; garbage collection is the content's owner's job.
        """
        with self._locked() as images:
            img, by_name = self._find(name, images)
            if not by_name:
                names = sorted(n for n, r in images.items() if r.get("id") == img.id)
                if len(names) > 1:
                    raise Conflict(
                        f"conflict: unable to delete {name} (must be forced) - image is "
                        f"referenced in multiple repositories")
            del images[img.name]
        return [img.name]

    def manifest(self, image: Image | str) -> dict[str, Any]:
        """The checked manifest JSON (for an index: this platform's manifest)."""
        return read_manifest(self.content, self._image(image).target)

    def config(self, image: Image | str) -> dict[str, Any]:
        """The checked image config JSON."""
        return read_config(self.content, self.manifest(image))

    def layers(self, image: Image | str) -> builtins.list[Descriptor]:
        """The layer descriptors, bottom first."""
        return manifest_layers(self.manifest(image))

    def resolve_platform(self, image: Image | str, want: Platform | None = None) -> Descriptor:
        """The manifest descriptor for ``want`` (default: this host) of an image."""
        target = self._image(image).target
        if target.media_type in mt.INDEX_TYPES:
            return resolve_platform(self.content, target, want)
        return target

    def _image(self, image: Image | str) -> Image:
        return image if isinstance(image, Image) else self.get(image)
