"""Streaming gzip for pulls and pushes, and the pipe from a download to its stage."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import threading
import zlib

import pytest

from ketch.distribution.compression import GzipReader, GzipWriter, decompressed
from ketch.engine.layerstage import Pipe
from ketch.errors import Unavailable


class Trickle:
    """A source that hands out at most ``step`` bytes per read (a slow socket)."""

    def __init__(self, data: bytes, step: int) -> None:
        self.f, self.step = io.BytesIO(data), step

    def read(self, n: int = -1) -> bytes:
        return self.f.read(self.step if n < 0 else min(n, self.step))


def read_all(r: object, n: int) -> bytes:
    out = []
    while chunk := r.read(n):  # type: ignore[attr-defined]
        out.append(chunk)
    return b"".join(out)


DATA = os.urandom(300_000) + b"\0" * 3_000_000 + b"tail"


@pytest.mark.parametrize("step", [1, 7, 65536, 1 << 22])
@pytest.mark.parametrize("n", [1, 4096, 1 << 20])
def test_gzip_reader_matches_gunzip_for_any_read_sizes(step: int, n: int) -> None:
    # byte-wise input or output is slow in Python; a short stream says the same there
    data = DATA[:20_000] + DATA[-5_000:] if 1 in (step, n) else DATA
    got = read_all(GzipReader(Trickle(gzip.compress(data), step)), n)
    assert got == data


def test_gzip_reader_reads_concatenated_members() -> None:
    parts = [b"first " * 1000, b"", b"second" * 70_000]
    stream = b"".join(gzip.compress(p) for p in parts)
    assert read_all(GzipReader(io.BytesIO(stream)), 1 << 16) == b"".join(parts)


def test_gzip_reader_truncated_is_eof_error() -> None:
    z = gzip.compress(DATA)
    with pytest.raises(EOFError):
        read_all(GzipReader(io.BytesIO(z[:len(z) // 2])), 1 << 16)
    with pytest.raises(EOFError):  # the trailer (CRC, size) cut off
        read_all(GzipReader(io.BytesIO(z[:-4])), 1 << 16)


def test_gzip_reader_corrupt_is_zlib_error() -> None:
    z = bytearray(gzip.compress(os.urandom(100_000), compresslevel=1))
    z[-8] ^= 0xFF  # the CRC
    with pytest.raises(zlib.error):
        read_all(GzipReader(io.BytesIO(bytes(z))), 1 << 16)
    with pytest.raises(zlib.error):  # garbage after a member is not another member
        read_all(GzipReader(io.BytesIO(gzip.compress(b"x") + b"garbage!")), 1 << 16)


def test_gzip_reader_output_per_step_is_bounded() -> None:
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)  # ~64 KiB in, 64 MiB out
    r = GzipReader(io.BytesIO(bomb))
    assert len(r.read(1 << 30)) <= 4 << 20
    assert sum(len(c) for c in iter(lambda: r.read(1 << 20), b"")) + (4 << 20) >= 64 << 20


def test_decompressed_sniffs_the_magic_not_the_media_type() -> None:
    tar = b"ustar-ish plain bytes" * 1000
    assert read_all(decompressed(io.BytesIO(tar)), 100) == tar
    assert read_all(decompressed(Trickle(gzip.compress(tar), 1)), 100) == tar
    assert read_all(decompressed(io.BytesIO(b"ab")), 100) == b"ab"
    assert read_all(decompressed(io.BytesIO(b"")), 100) == b""


def test_gzip_writer_round_trips_and_counts_what_it_gave() -> None:
    w = GzipWriter(Trickle(DATA, 100_000))
    out = read_all(w, 50_000)
    assert gzip.decompress(out) == DATA
    assert w.size == len(out)
    assert str(w.digest) == "sha256:" + hashlib.sha256(out).hexdigest()
    again = read_all(GzipWriter(io.BytesIO(DATA)), 1 << 20)
    assert again == out  # deterministic: a second push finds the same blob


def test_gzip_writer_of_nothing_is_a_valid_empty_member() -> None:
    w = GzipWriter(io.BytesIO(b""))
    out = read_all(w, 10)
    assert gzip.decompress(out) == b"" and w.size == len(out) > 0


def test_pipe_hands_chunks_over_in_order_at_any_read_size() -> None:
    p = Pipe(capacity=2)
    chunks = [os.urandom(n) for n in (1, 70_000, 1 << 20, 5)]

    def feed() -> None:
        for c in chunks:
            p.write(c)
        p.close()

    t = threading.Thread(target=feed)
    t.start()
    got = read_all(p, 4096)
    t.join()
    assert got == b"".join(chunks)
    assert p.read(10) == b""


def test_pipe_passes_the_writer_error_and_abandon_unblocks_both_sides() -> None:
    p = Pipe()
    p.write(b"abc")
    p.close(ValueError("download failed"))
    assert p.read(2) == b"ab"
    assert p.read(5) == b"c"
    with pytest.raises(ValueError, match="download failed"):
        p.read(5)
    q = Pipe(capacity=1)
    q.abandon()
    q.write(b"x" * 10)  # returns at once: nobody reads any more
    q.write(b"y")
    with pytest.raises(Unavailable):
        q.read(1)
