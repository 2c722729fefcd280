"""Decoders for the Engine API's stream formats, fed bytes as they arrive.

Multiplexed stdio (attach, exec and logs of a container without a TTY): frames of
an 8-byte header and a payload::

    byte 0      stream: 0 stdin, 1 stdout, 2 stderr, 3 system error
    bytes 1-3   zero
    bytes 4-7   payload length, big-endian uint32
    payload

A TTY container's output is not framed: it is one raw byte stream (all "stdout").

JSON streams (progress of load/import, events, stats): JSON values one after the
other, normally newline-separated; :class:`JSONStreamDecoder` does not depend on
the newlines, and a value may be split across any number of reads.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator
from typing import Any

from ketch.client.engine import STDOUT, RawStream
from ketch.errors import InvalidArgument

__all__ = [
    "Demuxer",
    "JSONStreamDecoder",
    "StreamFormatError",
    "demux",
    "frame",
    "frames",
    "json_stream",
    "raw_chunks",
]

_HEADER = struct.Struct(">BxxxL")
_MAX_STREAM = 3


class StreamFormatError(InvalidArgument):
    """Bytes that are not the stream format they claim to be."""


def frame(stream: int, data: bytes) -> bytes:
    """One multiplexed frame (what the engine writes; tests and in-process servers use it)."""
    return _HEADER.pack(stream, len(data)) + data


class Demuxer:
    """Incremental decoder of the multiplexed format: ``feed`` bytes, get whole frames.

    Large frames are not buffered whole: once a header has been read, payload bytes
    are handed out as they arrive (several pieces of the same stream), so a 1 GiB
    frame never sits in memory. ``finish`` raises if a frame was cut short.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._stream = -1  # stream of the frame being read; -1 between frames
        self._left = 0  # payload bytes of that frame still to come

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        self._buf += data
        while True:
            if self._stream < 0:
                if len(self._buf) < _HEADER.size:
                    return out
                stream, length = _HEADER.unpack_from(self._buf)
                if stream > _MAX_STREAM or any(self._buf[1:4]):
                    raise StreamFormatError(
                        f"bad stream frame header {bytes(self._buf[:8]).hex()}")
                del self._buf[:_HEADER.size]
                self._stream, self._left = stream, length
            if self._left:
                if not self._buf:
                    return out
                piece = bytes(self._buf[:self._left])
                del self._buf[:len(piece)]
                self._left -= len(piece)
                out.append((self._stream, piece))
            if not self._left:
                self._stream = -1

    def finish(self) -> None:
        """End of input: raise StreamFormatError if it stopped inside a frame."""
        if self._stream >= 0 or self._buf:
            raise StreamFormatError("stream ended inside a frame")


def demux(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """``(stream, payload)`` from multiplexed ``chunks`` (see :class:`Demuxer`)."""
    d = Demuxer()
    for chunk in chunks:
        yield from d.feed(chunk)
    d.finish()


def raw_chunks(stream: RawStream, size: int = 65536) -> Iterator[bytes]:
    """Read ``stream`` to its end."""
    while data := stream.read(size):
        yield data


def frames(stream: RawStream) -> Iterator[tuple[int, bytes]]:
    """``(stream number, data)`` from an attach/exec stream, TTY or not."""
    if stream.multiplexed:
        yield from demux(raw_chunks(stream))
    else:
        for data in raw_chunks(stream):
            yield STDOUT, data


class JSONStreamDecoder:
    """Incremental decoder of concatenated JSON values (whitespace between them ignored)."""

    _decoder = json.JSONDecoder()

    def __init__(self) -> None:
        self._buf = ""
        self._pending = b""  # an incomplete UTF-8 sequence at the end of the last feed

    def feed(self, data: bytes) -> list[Any]:
        text = self._pending + data
        try:
            self._buf += text.decode()
            self._pending = b""
        except UnicodeDecodeError as e:
            if e.start < len(text) - 3:
                raise StreamFormatError(f"invalid UTF-8 in JSON stream: {e}") from None
            self._buf += text[:e.start].decode()
            self._pending = text[e.start:]
        out: list[Any] = []
        pos, n = 0, len(self._buf)
        while True:
            while pos < n and self._buf[pos] in " \t\r\n":
                pos += 1
            if pos == n:
                break
            try:
                value, end = self._decoder.raw_decode(self._buf, pos)
            except json.JSONDecodeError:
                break  # incomplete: wait for more (finish() tells truncation from junk)
            if end == n and isinstance(value, int | float) and not isinstance(value, bool):
                break  # a number at the very end may go on in the next read
            out.append(value)
            pos = end
        self._buf = self._buf[pos:]
        return out

    def finish(self) -> list[Any]:
        """End of input: the last value if one was still open; StreamFormatError on junk."""
        if self._pending:
            raise StreamFormatError("JSON stream ended inside a UTF-8 sequence")
        rest = self._buf.strip()
        self._buf = ""
        if not rest:
            return []
        try:
            return [json.loads(rest)]
        except json.JSONDecodeError as e:
            raise StreamFormatError(f"malformed JSON stream: {e}") from None


def json_stream(chunks: Iterable[bytes]) -> Iterator[Any]:
    """JSON values from ``chunks`` (see :class:`JSONStreamDecoder`)."""
    d = JSONStreamDecoder()
    for chunk in chunks:
        yield from d.feed(chunk)
    yield from d.finish()
