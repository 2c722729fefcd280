"""zstd decompression through the system's libzstd (ctypes), for ``tar+zstd`` layers.

Python 3.11 has no zstd module; Debian installs ``libzstd.so.1`` with the base system
(dpkg, apt and systemd use it), so a thin binding costs no dependency. The streaming API
is used, so a layer never needs to fit in memory::

    ZSTD_DStream* ZSTD_createDStream(void);
    size_t ZSTD_freeDStream(ZSTD_DStream* zds);
    size_t ZSTD_initDStream(ZSTD_DStream* zds);
    size_t ZSTD_decompressStream(ZSTD_DStream* zds, ZSTD_outBuffer* out, ZSTD_inBuffer* in);
    unsigned ZSTD_isError(size_t code);
    const char* ZSTD_getErrorName(size_t code);

:func:`available` says whether the library is there; :class:`ZstdReader` raises
``NotImplementedYet`` if it is not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Protocol

from ketch.errors import InvalidArgument, NotImplementedYet

__all__ = ["ZSTD_MAGIC", "ZstdReader", "available"]

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_IN_CHUNK = 128 * 1024


class _InBuffer(ctypes.Structure):
    _fields_ = [("src", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


class _OutBuffer(ctypes.Structure):
    _fields_ = [("dst", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


_lib: ctypes.CDLL | None = None
_loaded = False


def _load() -> ctypes.CDLL | None:
    global _lib, _loaded
    if _loaded:
        return _lib
    _loaded = True
    name = ctypes.util.find_library("zstd") or "libzstd.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
    lib.ZSTD_createDStream.restype = ctypes.c_void_p
    lib.ZSTD_createDStream.argtypes = []
    lib.ZSTD_freeDStream.restype = ctypes.c_size_t
    lib.ZSTD_freeDStream.argtypes = [ctypes.c_void_p]
    lib.ZSTD_initDStream.restype = ctypes.c_size_t
    lib.ZSTD_initDStream.argtypes = [ctypes.c_void_p]
    lib.ZSTD_decompressStream.restype = ctypes.c_size_t
    lib.ZSTD_decompressStream.argtypes = [ctypes.c_void_p, ctypes.POINTER(_OutBuffer),
                                          ctypes.POINTER(_InBuffer)]
    lib.ZSTD_isError.restype = ctypes.c_uint
    lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
    lib.ZSTD_getErrorName.restype = ctypes.c_char_p
    lib.ZSTD_getErrorName.argtypes = [ctypes.c_size_t]
    _lib = lib
    return lib


def available() -> bool:
    """True if libzstd can be loaded here."""
    return _load() is not None


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class ZstdReader:
    """A readable of the decompressed bytes of the zstd stream ``src`` (frames
    concatenated). ``InvalidArgument`` for corrupt or truncated input."""

    def __init__(self, src: _Readable) -> None:
        lib = _load()
        if lib is None:
            raise NotImplementedYet("zstd layers need libzstd.so.1, which is not installed")
        self._lib = lib
        self._src = src
        self._ds = lib.ZSTD_createDStream()
        if not self._ds:
            raise MemoryError("ZSTD_createDStream")
        self._check(lib.ZSTD_initDStream(self._ds))
        self._in = b""
        self._inbuf = _InBuffer(None, 0, 0)
        self._eof = False
        self._frame_open = False  # inside a frame: more input is needed to finish it

    def _check(self, code: int) -> int:
        if self._lib.ZSTD_isError(code):
            raise InvalidArgument(f"malformed zstd stream: "
                                  f"{self._lib.ZSTD_getErrorName(code).decode()}")
        return code

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = []
            while chunk := self.read(1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        if n == 0 or self._ds is None:
            return b""
        out = ctypes.create_string_buffer(n)
        obuf = _OutBuffer(ctypes.cast(out, ctypes.c_void_p), n, 0)
        while obuf.pos == 0:
            if self._inbuf.pos >= self._inbuf.size:
                if self._eof:
                    break
                self._in = self._src.read(_IN_CHUNK)
                if not self._in:
                    self._eof = True
                    if self._frame_open:
                        raise InvalidArgument("truncated zstd stream")
                    break
                self._inbuf = _InBuffer(ctypes.cast(ctypes.c_char_p(self._in), ctypes.c_void_p),
                                        len(self._in), 0)
            hint = self._check(self._lib.ZSTD_decompressStream(
                self._ds, ctypes.byref(obuf), ctypes.byref(self._inbuf)))
            self._frame_open = hint != 0
        return out.raw[:obuf.pos]

    def close(self) -> None:
        if self._ds is not None:
            self._lib.ZSTD_freeDStream(self._ds)
            self._ds = None

    def __del__(self) -> None:
        self.close()
