"""Streams into and out of the content store for image content.

- ``ingest_layer`` stores a layer tarball (plain, gzip, bzip2 or xz) as a blob: gzip is
  kept as it is, anything else stored as plain tar. The tar is parsed on the way, so
  what is not a tar is refused; the blob gets ``LABEL_UNCOMPRESSED`` (its tar's size)
  and the result carries the diff_id (sha256 of the plain tar).
- ``closure`` lists the blobs an image target reaches (index, manifests, config,
  layers) that are in the store: what to save, to lease or to collect.
- ``Tee`` and ``Gunzip`` hash (and copy) a stream as it passes, so nothing is read
  twice; ``compression`` names a stream's compression by its magic bytes.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import json
import lzma
import tarfile
import uuid
import zlib
from dataclasses import dataclass
from typing import IO, Any, cast

from ketch.content import ContentStore, Writer
from ketch.errors import InvalidArgument, KetchError, NotFound, NotImplementedYet
from ketch.oci import mediatypes as mt
from ketch.oci.descriptor import Descriptor
from ketch.oci.digest import Digest, Digester

__all__ = [
    "CHUNK",
    "LABEL_UNCOMPRESSED",
    "Gunzip",
    "LayerBlob",
    "Tee",
    "closure",
    "compression",
    "exists",
    "finish",
    "ingest_layer",
    "new_writer",
]

#: content label on a layer blob: bytes of its uncompressed tar
LABEL_UNCOMPRESSED = "ketch.io/uncompressed-size"
CHUNK = 1 << 20
_MAX_DEPTH = 8
_GZIP = b"\x1f\x8b"
_OTHER_MAGIC = ((b"\x28\xb5\x2f\xfd", "zstd"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))


def compression(head: bytes) -> str:
    if head.startswith(_GZIP):
        return "gzip"
    for magic, name in _OTHER_MAGIC:
        if head.startswith(magic):
            return name
    return "none"


class Gunzip:
    """Incremental gunzip of concatenated members (zero padding allowed), hashing output."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.hash = hashlib.sha256()
        self.size = 0
        self._member = False  # inside a member (header seen, end not yet)

    def feed(self, data: bytes) -> None:
        while data:
            if not self._member:
                data = data.lstrip(b"\0")
                if not data:
                    return
                self._member = True
            try:
                out = self._d.decompress(data)
            except zlib.error as e:
                raise InvalidArgument(f"malformed gzip stream: {e}") from None
            self.hash.update(out)
            self.size += len(out)
            if not self._d.eof:
                return
            data = self._d.unused_data
            self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            self._member = False

    def finish(self) -> None:
        if self._member:
            raise InvalidArgument("truncated gzip stream")


@dataclass(frozen=True, slots=True)
class LayerBlob:
    """A layer as stored: its descriptor, diff_id and uncompressed size."""

    descriptor: Descriptor
    diff_id: str
    uncompressed_size: int
    created: bool  #: this call added the blob (it was not in the store before)


def exists(content: ContentStore, digest: Digest) -> bool:
    try:
        content.info(digest)
    except NotFound:
        return False
    return True


def new_writer(content: ContentStore, prefix: str) -> Writer:
    return content.writer(f"{prefix}-{uuid.uuid4().hex}")


def finish(content: ContentStore, w: Writer, size: int, expected: Digest | None,
            labels: dict[str, str] | None = None) -> tuple[Digest, bool]:
    """Commit ``w``; (digest, whether the blob is new). The ingest is dropped on error."""
    try:
        digest = w.digest()
        new = not exists(content, digest)
        return w.commit(size, expected, labels), new
    except BaseException:
        w.close()
        with contextlib.suppress(KetchError):
            content.abort(w.ref)
        raise


class Tee:
    """A readable passing bytes through from ``src``, hashing and copying them to ``sink``."""

    def __init__(self, src: IO[bytes], sink: Writer | None, head: bytes = b"") -> None:
        self.src, self.sink, self.head = src, sink, head
        self.digester = Digester()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        if self.head:
            data, self.head = (self.head, b"") if n < 0 or n >= len(self.head) \
                else (self.head[:n], self.head[n:])
        else:
            data = self.src.read(n)
        if data:
            self.digester.update(data)
            self.size += len(data)
            if self.sink is not None:
                self.sink.write(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def ingest_layer(content: ContentStore, stream: IO[bytes], *, ref: str = "layer") -> LayerBlob:
    """Store the layer tarball read from ``stream`` as a blob (see the module doc).

    The tar is parsed on the way (``InvalidArgument`` if it is not one); the blob gets
    the ``LABEL_UNCOMPRESSED`` label. zstd input is ``NotImplementedYet``.
    """
    head = stream.read(6)
    kind = compression(head)
    if kind == "zstd":
        raise NotImplementedYet("zstd-compressed tarballs are not supported yet")
    w = new_writer(content, ref)
    try:
        raw = Tee(stream, w if kind in ("gzip", "none") else None, head)
        body: IO[bytes]
        if kind == "gzip":
            body = cast(IO[bytes], gzip.GzipFile(fileobj=cast(IO[bytes], raw), mode="rb"))
        elif kind == "bzip2":
            body = cast(IO[bytes], bz2.BZ2File(cast(IO[bytes], raw), "rb"))
        elif kind == "xz":
            body = cast(IO[bytes], lzma.LZMAFile(cast(IO[bytes], raw), "rb"))  # noqa: SIM115
        else:
            body = cast(IO[bytes], raw)
        tar = Tee(body, w if kind in ("bzip2", "xz") else None) if kind != "none" else raw
        with tarfile.open(fileobj=cast(IO[bytes], tar), mode="r|") as tf:
            while tf.next() is not None:
                cast(Any, tf).members.clear()  # stream mode keeps every TarInfo otherwise
        tar.drain()
        raw.drain()
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        w.close()
        content.abort(w.ref)
        raise InvalidArgument(f"invalid tar archive: {e}") from None
    except BaseException:
        w.close()
        with contextlib.suppress(KetchError):
            content.abort(w.ref)
        raise
    stored = raw if kind in ("gzip", "none") else tar
    digest, new = finish(content, w, stored.size, None,
                          {LABEL_UNCOMPRESSED: str(tar.size)})
    media = mt.OCI_LAYER_GZIP if kind == "gzip" else mt.OCI_LAYER
    return LayerBlob(Descriptor(media, digest, stored.size),
                     str(tar.digester.digest()), tar.size, new)



def closure(content: ContentStore, target: Descriptor, *, strict: bool = False
            ) -> list[Descriptor]:
    """Every blob ``target`` reaches that is in ``content``, parents first, once each.

    Manifests of an index that are missing are skipped; with ``strict``, a manifest's
    missing config or layer is ``NotFound``.
    """
    out: dict[Digest, Descriptor] = {}

    def walk(d: Descriptor, depth: int) -> None:
        if d.digest in out or depth > _MAX_DEPTH:
            return
        try:
            data = content.read(d.digest) if d.media_type in mt.INDEX_TYPES | \
                mt.MANIFEST_TYPES else None
        except NotFound:
            if strict and depth == 0:
                raise
            return
        out[d.digest] = Descriptor(d.media_type, d.digest, d.size)
        if data is None:
            return
        obj = json.loads(data)
        if d.media_type in mt.INDEX_TYPES:
            for raw in obj.get("manifests") or []:
                walk(Descriptor.from_json(raw), depth + 1)
            return
        for raw in [obj["config"], *(obj.get("layers") or [])]:
            child = Descriptor.from_json(raw)
            if child.digest in out:
                continue
            if exists(content, child.digest):
                out[child.digest] = Descriptor(child.media_type, child.digest, child.size)
            elif strict:
                raise NotFound(f"content {child.digest} of image {target.digest} is missing")

    walk(target, 0)
    return list(out.values())

