"""Layer compression on the wire: gunzip for pulls, gzip for pushes, both streaming.

Readers here take any object with ``read(n)`` and give the transformed bytes through
their own ``read(n)``, in large steps: zlib releases the GIL while it works on a
megabyte, so a pull's download, decompression and extraction threads overlap on
several cores (``gzip.GzipFile`` reads its source 8 KiB at a time instead).

:func:`decompressed` recognises a layer's compression by its first bytes (gzip, zstd,
or none), so a layer whose media type lies about it still unpacks. :class:`GzipReader`
decompresses concatenated gzip members (what ``pigz`` and Go's multistream reader
allow); a stream that ends inside a member raises ``EOFError`` and corrupt data
``zlib.error`` — what :func:`ketch.image.layer.apply_layer` reports as a truncated
or malformed layer. Output per step is bounded, so a gzip bomb costs time, not memory.

:class:`GzipWriter` is the push side: the compressed stream of ``src`` (level 6 and
mtime 0, as docker's, so the same layer compresses to the same bytes every time) with
its sha256 and size counted as it is read, for uploads whose digest is only known at
the end.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Protocol

from ketch.oci.digest import Digest

__all__ = ["GZIP_MAGIC", "ZSTD_MAGIC", "GzipReader", "GzipWriter", "decompressed"]

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_IN_CHUNK = 1 << 20
_OUT_MAX = 4 << 20
_GZIP_WBITS = 31  # zlib's "gzip header and trailer"


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _Prefixed:
    """``head`` followed by the rest of ``src`` (bytes sniffed, then given back)."""

    def __init__(self, head: bytes, src: Readable) -> None:
        self._head = head
        self._src = src

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0 or n >= len(self._head):
                out, self._head = self._head, b""
            else:
                out, self._head = self._head[:n], self._head[n:]
            return out
        return self._src.read(n)


def decompressed(src: Readable) -> Readable:
    """The uncompressed layer read from ``src``: gunzipped, zstd-decoded or as it is."""
    head = b""
    while len(head) < len(ZSTD_MAGIC):
        more = src.read(len(ZSTD_MAGIC) - len(head))
        if not more:
            break
        head += more
    rest = _Prefixed(head, src)
    if head.startswith(GZIP_MAGIC):
        return GzipReader(rest)
    if head.startswith(ZSTD_MAGIC):
        from ketch.distribution.zstd import ZstdReader

        return ZstdReader(rest)
    return rest


class GzipReader:
    """The decompressed bytes of the gzip stream ``src`` (one or more members)."""

    def __init__(self, src: Readable) -> None:
        self._src = src
        self._d = zlib.decompressobj(_GZIP_WBITS)
        self._out = memoryview(b"")
        self._pos = 0
        self._pending = b""  # compressed input not given to the decompressor yet
        self._src_eof = False
        self._eof = False

    def _fill(self) -> None:
        d = self._d
        if d.eof:  # a member ended: another may follow
            self._pending = d.unused_data + self._pending
            if not self._pending and not self._src_eof:
                self._pending = self._src.read(_IN_CHUNK)
                if not self._pending:
                    self._src_eof = True
            if not self._pending:
                self._eof = True
                return
            self._d = d = zlib.decompressobj(_GZIP_WBITS)
        if d.unconsumed_tail:
            data = d.unconsumed_tail
        else:
            if not self._pending and not self._src_eof:
                self._pending = self._src.read(_IN_CHUNK)
                if not self._pending:
                    self._src_eof = True
            data, self._pending = self._pending, b""
            if not data:
                raise EOFError("gzip stream ends inside a member")
        self._out = memoryview(d.decompress(data, _OUT_MAX))
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            parts = []
            while chunk := self.read(_OUT_MAX):
                parts.append(chunk)
            return b"".join(parts)
        while self._pos >= len(self._out):
            if self._eof or n == 0:
                return b""
            self._fill()
        end = min(self._pos + n, len(self._out))
        out = bytes(self._out[self._pos:end])
        self._pos = end
        return out


class GzipWriter:
    """A readable of the gzip'd ``src``; :attr:`digest` and :attr:`size` once at EOF."""

    def __init__(self, src: Readable, level: int = 6) -> None:
        self._src = src
        self._c = zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)
        self._hash = hashlib.sha256()
        self._buf = memoryview(b"")
        self._pos = 0
        self._done = False
        self.size = 0

    @property
    def digest(self) -> Digest:
        """The sha256 of everything read so far (the blob's, once ``read`` gave b"")."""
        return Digest("sha256", self._hash.hexdigest())

    def _fill(self) -> None:
        while not self._done:
            data = self._src.read(_IN_CHUNK)
            out = self._c.compress(data) if data else self._c.flush()
            if not data:
                self._done = True
            if out:
                self._hash.update(out)
                self.size += len(out)
                self._buf, self._pos = memoryview(out), 0
                return

    def read(self, n: int = -1) -> bytes:
        if self._pos >= len(self._buf):
            self._fill()
        if self._pos >= len(self._buf):
            return b""
        end = len(self._buf) if n < 0 else min(self._pos + n, len(self._buf))
        out = bytes(self._buf[self._pos:end])
        self._pos = end
        return out
