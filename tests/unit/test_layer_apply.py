"""apply_layer: tar semantics, whiteouts, hashing, streaming and the escapes it refuses.

Every test builds its layer in memory with tarfile and applies it into a temp dir
beside a sentinel file that no layer may touch.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.errors import InvalidArgument, NotImplementedYet
from ketch.image.layer import LayerResult, apply_layer

SENTINEL = b"untouched\n"


# -- building layers ---------------------------------------------------------------

def _info(name: str, kind: bytes, **kw: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mtime = 1_600_000_000
    ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def f(name: str, data: bytes = b"", **kw: object) -> tuple[tarfile.TarInfo, bytes]:
    ti = _info(name, tarfile.REGTYPE, **kw)
    ti.size = len(data)
    return ti, data


def d(name: str, **kw: object) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.DIRTYPE, **kw), b""


def sym(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.SYMTYPE, linkname=target, mode=0o777), b""


def hard(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.LNKTYPE, linkname=target), b""


def tar(*entries: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in entries:
            tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return buf.getvalue()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    (tmp_path / "sentinel").write_bytes(SENTINEL)
    out = tmp_path / "dest"
    out.mkdir()
    return out


def apply(data: bytes, dest: Path, **kw: str) -> LayerResult:
    return apply_layer(io.BytesIO(data), str(dest), **kw)


def untouched(dest: Path) -> None:
    sentinel = dest.parent / "sentinel"
    assert sentinel.read_bytes() == SENTINEL
    assert sentinel.stat().st_nlink == 1
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dest", "sentinel"]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# -- ordinary content --------------------------------------------------------------

def test_normal_tree(dest: Path) -> None:
    data = tar(d("bin"), f("bin/tool", b"#!/bin/sh\n", mode=0o4755), d("etc", mode=0o750),
               f("etc/conf", b"x=1\n", mtime=1_500_000_000.5),
               sym("etc/passwd-link", "/etc/passwd"), sym("rel", "bin/tool"),
               hard("bin/tool2", "bin/tool"))
    res = apply(data, dest)
    assert res.entries == 7
    assert res.size == len(data)
    assert res.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert res.digest == res.diff_id
    assert res.skipped == ()
    assert (dest / "bin/tool").read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE((dest / "bin/tool").stat().st_mode) == 0o4755
    assert stat.S_IMODE((dest / "etc").stat().st_mode) == 0o750
    assert (dest / "etc").stat().st_mtime == 1_600_000_000
    assert (dest / "etc/conf").stat().st_mtime_ns == 1_500_000_000_500_000_000
    # symlinks stay symlinks, never followed or rewritten
    assert os.readlink(dest / "etc/passwd-link") == "/etc/passwd"
    assert os.readlink(dest / "rel") == "bin/tool"
    assert (dest / "bin/tool2").stat().st_ino == (dest / "bin/tool").stat().st_ino


def test_gzip_digest_and_diff_id(dest: Path) -> None:
    data = tar(f("a", b"hello"))
    gz = gzip.compress(data)
    res = apply(gz, dest)
    assert res.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert res.digest == "sha256:" + hashlib.sha256(gz).hexdigest()
    assert res.size == len(data)
    assert (dest / "a").read_bytes() == b"hello"


def test_missing_parents_are_created(dest: Path) -> None:
    apply(tar(f("x/y/z", b"1")), dest)
    assert (dest / "x/y/z").read_bytes() == b"1"
    assert stat.S_IMODE((dest / "x").stat().st_mode) == 0o755


def test_empty_layer_and_root_entry(dest: Path) -> None:
    assert apply(tar(), dest).entries == 0
    res = apply(tar(d(".", mode=0o711)), dest)
    assert res.entries == 1
    assert stat.S_IMODE(dest.stat().st_mode) == 0o711


def test_tar_without_end_blocks_is_accepted(dest: Path) -> None:
    data = tar(f("a", b"x" * 10))
    # one header + one data block, then nothing (Go's archive/tar accepts this too)
    apply(data[:1024], dest)
    assert (dest / "a").read_bytes() == b"x" * 10


def test_readonly_dir_still_gets_children(dest: Path) -> None:
    apply(tar(d("ro", mode=0o555), f("ro/a", b"1")), dest)
    assert (dest / "ro/a").read_bytes() == b"1"
    assert stat.S_IMODE((dest / "ro").stat().st_mode) == 0o555
    (dest / "ro").chmod(0o755)


# -- replacing ---------------------------------------------------------------------

def test_dir_replaces_file_and_file_replaces_dir_tree(dest: Path) -> None:
    (dest / "was-file").write_bytes(b"old")
    (dest / "was-dir/deep").mkdir(parents=True)
    (dest / "was-dir/deep/f").write_bytes(b"old")
    apply(tar(d("was-file"), f("was-file/inner", b"new"), f("was-dir", b"now a file")), dest)
    assert (dest / "was-file/inner").read_bytes() == b"new"
    assert (dest / "was-dir").read_bytes() == b"now a file"


def test_later_entry_replaces_earlier(dest: Path) -> None:
    apply(tar(f("p", b"first"), d("p"), f("p/x", b"1"), f("p", b"last"),
              f("q", b"file"), sym("q", "p")), dest)
    assert (dest / "p").read_bytes() == b"last"
    assert os.readlink(dest / "q") == "p"


def test_dir_over_dir_keeps_lower_children(dest: Path) -> None:
    (dest / "d").mkdir(mode=0o700)
    (dest / "d/lower").write_bytes(b"l")
    apply(tar(d("d", mode=0o751), f("d/upper", b"u")), dest)
    assert tree(dest) == ["d", "d/lower", "d/upper"]
    assert stat.S_IMODE((dest / "d").stat().st_mode) == 0o751


def test_file_over_existing_symlink_replaces_the_link(dest: Path) -> None:
    os.symlink("../sentinel", dest / "f")
    apply(tar(f("f", b"pwned")), dest)
    assert not (dest / "f").is_symlink()
    assert (dest / "f").read_bytes() == b"pwned"
    untouched(dest)


# -- whiteouts ---------------------------------------------------------------------

def _lower(dest: Path) -> None:
    for p in ("a/b/c/bar", "a/other", "a/gone/deep/x", "keep"):
        (dest / p).parent.mkdir(parents=True, exist_ok=True)
        (dest / p).write_bytes(b"lower")


def test_whiteout_deletes_lower_entries(dest: Path) -> None:
    _lower(dest)
    res = apply(tar(f("a/.wh.other"), f("a/.wh.gone"), f("a/.wh.absent")), dest)
    assert res.entries == 3
    assert tree(dest) == ["a", "a/b", "a/b/c", "a/b/c/bar", "keep"]


def test_whiteout_does_not_hide_same_layer(dest: Path) -> None:
    apply(tar(f("n", b"mine"), f(".wh.n")), dest)
    assert (dest / "n").read_bytes() == b"mine"


@pytest.mark.parametrize("opq_first", [True, False])
def test_opaque_dir_either_order(dest: Path, opq_first: bool) -> None:
    _lower(dest)
    opq = [f("a/.wh..wh..opq")]
    body = [d("a/b"), d("a/b/c"), f("a/b/c/foo", b"new")]
    entries = [d("a"), *(opq + body if opq_first else body + opq)]
    apply(tar(*entries), dest)
    assert tree(dest) == ["a", "a/b", "a/b/c", "a/b/c/foo", "keep"]


def test_aufs_metadata_is_ignored(dest: Path) -> None:
    apply(tar(d(".wh..wh.plnk"), f(".wh..wh.aufs")), dest)
    assert tree(dest) == []


def test_bad_whiteout_names(dest: Path) -> None:
    _lower(dest)
    for name in ("a/.wh.", "a/.wh..", "a/.wh..."):
        with pytest.raises(InvalidArgument, match="whiteout"):
            apply(tar(f(name)), dest)
    assert (dest / "a/other").exists()


# -- escapes -----------------------------------------------------------------------

def test_absolute_paths_land_inside(dest: Path) -> None:
    sentinel = str(dest.parent / "sentinel")
    apply(tar(f(sentinel, b"pwned"), f("/abs", b"1")), dest)
    assert (dest / sentinel.lstrip("/")).read_bytes() == b"pwned"
    assert (dest / "abs").read_bytes() == b"1"
    untouched(dest)


@pytest.mark.parametrize("name", ["../sentinel", "../../x", "a/../../sentinel", "./.."])
def test_dotdot_is_refused(dest: Path, name: str) -> None:
    with pytest.raises(InvalidArgument, match=r"\.\."):
        apply(tar(f(name, b"pwned")), dest)
    untouched(dest)


@pytest.mark.parametrize("target", ["..", "../..", "/", "PARENT"])
def test_write_through_symlink_stays_inside(dest: Path, target: str) -> None:
    if target == "PARENT":
        target = str(dest.parent)
    apply(tar(sym("esc", target), f("esc/sentinel", b"pwned")), dest)
    untouched(dest)
    written = [p for p in dest.rglob("sentinel")]
    assert len(written) == 1 and written[0].read_bytes() == b"pwned"
    assert os.readlink(dest / "esc") == target


def test_write_through_symlink_already_in_dest(dest: Path) -> None:
    os.symlink(str(dest.parent), dest / "pre")
    apply(tar(f("pre/sentinel", b"pwned"), f("pre/new", b"1")), dest)
    untouched(dest)
    inside = dest / str(dest.parent).lstrip("/")
    assert (inside / "sentinel").read_bytes() == b"pwned"


def test_symlink_dir_chain_stays_inside(dest: Path) -> None:
    apply(tar(sym("a", "."), sym("b", "a/a/../../.."), sym("c", "b/../b/.."),
              f("c/sentinel", b"pwned"), f("b/a/c/b/sentinel2", b"pwned")), dest)
    untouched(dest)
    assert (dest / "sentinel").read_bytes() == b"pwned"
    assert (dest / "sentinel2").read_bytes() == b"pwned"


@pytest.mark.parametrize("target", ["/etc/passwd", "../sentinel", "ABS", "missing"])
def test_hardlink_outside_is_refused(dest: Path, target: str) -> None:
    if target == "ABS":
        target = str(dest.parent / "sentinel")
    with pytest.raises(InvalidArgument, match="hardlink target"):
        apply(tar(hard("pw", target)), dest)
    untouched(dest)
    assert not (dest / "pw").exists()


def test_hardlink_through_escaping_symlink(dest: Path) -> None:
    # the link names the symlink itself, never what it points to
    apply(tar(sym("s", str(dest.parent / "sentinel")), hard("h", "s"),
              sym("up", ".."), f("sentinel", b"inside"), hard("h2", "up/sentinel")), dest)
    untouched(dest)
    assert os.readlink(dest / "h") == str(dest.parent / "sentinel")
    assert (dest / "h2").read_bytes() == b"inside"
    with pytest.raises(InvalidArgument, match="directory"):
        apply(tar(d("dir"), hard("hd", "dir")), dest)


def test_nul_in_names_is_refused(dest: Path) -> None:
    ti, data = f("x")
    ti.pax_headers = {"path": "a\x00b"}
    with pytest.raises(InvalidArgument, match="NUL"):
        apply(tar((ti, data)), dest)
    ti, data = sym("s", "x")
    ti.pax_headers = {"linkpath": "../\x00"}
    with pytest.raises(InvalidArgument, match="symlink"):
        apply(tar((ti, data)), dest)
    untouched(dest)


def test_parent_that_is_a_file_is_refused(dest: Path) -> None:
    with pytest.raises(InvalidArgument, match="not a directory"):
        apply(tar(f("a", b"1"), f("a/b", b"2")), dest)


def test_devices_skipped_without_root(dest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    dev = _info("null", tarfile.CHRTYPE, devmajor=1, devminor=3)
    fifo = _info("pipe", tarfile.FIFOTYPE)
    res = apply(tar((dev, b""), (fifo, b""), f("ok", b"1")), dest)
    assert res.skipped == ("null",)
    assert not (dest / "null").exists()
    assert stat.S_ISFIFO((dest / "pipe").lstat().st_mode)
    assert (dest / "ok").read_bytes() == b"1"


# -- bad streams -------------------------------------------------------------------

def test_truncated_data(dest: Path) -> None:
    data = tar(f("a", b"x" * 5000))
    with pytest.raises(InvalidArgument, match="truncated"):
        apply(data[:512 + 2000], dest)


def test_truncated_or_corrupt_header(dest: Path) -> None:
    data = tar(f("a", b"x" * 10), f("b", b"y" * 10))
    off = _member_end(data)
    with pytest.raises(InvalidArgument, match="truncated"):
        apply(data[:off + 100], dest)
    corrupt = data[:off] + b"\xff" * 512 + data[off + 512:]
    with pytest.raises(InvalidArgument, match="header"):
        apply(corrupt, dest)


def _member_end(data: bytes) -> int:
    """Offset just past the first member of a tar."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        first = tf.next()
        assert first is not None
        return first.offset_data + ((first.size + 511) // 512) * 512


def test_truncated_gzip(dest: Path) -> None:
    gz = gzip.compress(tar(f("a", os.urandom(20000))))
    with pytest.raises(InvalidArgument, match="truncated"):
        apply(gz[: len(gz) // 2], dest)


def test_garbage_and_empty_streams(dest: Path) -> None:
    with pytest.raises(InvalidArgument, match="layer"):
        apply(b"not a tar at all" * 64, dest)
    with pytest.raises(InvalidArgument, match="layer"):
        apply(b"", dest)


@pytest.mark.parametrize("magic", [b"\x28\xb5\x2f\xfd", b"BZh91AY", b"\xfd7zXZ\x00"])
def test_other_compressions_not_implemented(dest: Path, magic: bytes) -> None:
    with pytest.raises(NotImplementedYet, match="not supported"):
        apply(magic + b"\x00" * 100, dest)


def test_bad_arguments(dest: Path) -> None:
    with pytest.raises(InvalidArgument, match="whiteouts"):
        apply(tar(), dest, whiteouts="aufs")
    with pytest.raises(InvalidArgument, match="not a directory"):
        apply(tar(), dest / "nope")


# -- streaming ---------------------------------------------------------------------

class _BigLayer(io.RawIOBase):
    """A tar with one file of ``size`` bytes, generated on the fly (never all in memory)."""

    def __init__(self, size: int) -> None:
        ti = tarfile.TarInfo("big")
        ti.size = size
        pad = (512 - size % 512) % 512
        self._parts: Iterator[bytes] = self._gen(ti.tobuf(tarfile.PAX_FORMAT), size, pad)
        self._buf = b""
        self.hash = hashlib.sha256()

    @staticmethod
    def _gen(header: bytes, size: int, pad: int) -> Iterator[bytes]:
        yield header
        block = b"\xa5" * (1 << 16)
        left = size
        while left:
            n = min(left, len(block))
            yield block[:n]
            left -= n
        yield b"\0" * (pad + 1024)

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            nxt = next(self._parts, None)
            if nxt is None:
                return 0
            self._buf = nxt
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self.hash.update(self._buf[:n])
        self._buf = self._buf[n:]
        return n


def test_50mb_layer_streams(dest: Path) -> None:
    size = 50 * 1024 * 1024
    src = _BigLayer(size)
    stream = io.BufferedReader(src)
    tracemalloc.start()
    try:
        res = apply_layer(stream, str(dest))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (dest / "big").stat().st_size == size
    assert res.diff_id == "sha256:" + src.hash.hexdigest()
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes"
