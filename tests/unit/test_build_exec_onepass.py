"""The cold-build fast path: the context hashed while it is extracted, and a COPY's layer
tar and snapshot tree written in one pass — checked against the slow, obviously right
ways (hashing the extracted files again; applying the tar with ``apply_layer``)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import stat
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest

from ketch.api.routers.build import BodyReader, streams_body
from ketch.engine.build.files import CopySpec, _Out, _plan, _write_tar
from ketch.engine.build.intake import extract_context, forget
from ketch.engine.build.tree import TreeWriter
from ketch.errors import InvalidArgument
from ketch.httpserver import Headers, Request
from ketch.image.build.context import BuildContext
from ketch.image.layer import apply_layer


def _tar(entries: list[tuple[str, Any]], *, gz: bool = False) -> bytes:
    """(name, bytes | "dir" | ("sym", target) | ("link", target)) → a tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w",
                      format=tarfile.PAX_FORMAT) as tf:
        for name, what in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_600_000_000
            if what == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            elif isinstance(what, tuple):
                ti.type = tarfile.SYMTYPE if what[0] == "sym" else tarfile.LNKTYPE
                ti.linkname = what[1]
                tf.addfile(ti)
            else:
                ti.size, ti.mode = len(what), 0o640
                tf.addfile(ti, io.BytesIO(what))
    return buf.getvalue()


class _Unseekable(io.RawIOBase):
    """A socket-like body: read only, no seek (the streamed path)."""

    def __init__(self, data: bytes) -> None:
        self.src = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.src.read(min(len(b), 7000))  # short reads, as a socket gives
        b[:len(data)] = data
        return len(data)


_CONTEXT = [
    ("Dockerfile", b"FROM scratch\nCOPY . /\n"),
    ("app", "dir"),
    ("app/big.bin", os.urandom(3 << 20)),
    ("app/small.txt", b"small\n"),
    ("app/link", ("sym", "small.txt")),
    ("app/hard", ("link", "app/small.txt")),
    ("empty", b""),
]


@pytest.mark.parametrize("kind", ["seekable", "stream", "gzip"])
def test_extraction_hashes_what_a_fresh_digest_would(tmp_path: Path, kind: str) -> None:
    data = _tar(_CONTEXT, gz=kind == "gzip")
    body: Any = _Unseekable(data) if kind == "stream" else io.BytesIO(data)
    work = tmp_path / "ctx"
    work.mkdir()
    digests: dict[Any, str] = {}
    ctx = extract_context(body, str(work), digests)
    assert os.readlink(work / "app" / "link") == "small.txt"
    assert os.stat(work / "app" / "hard").st_ino == os.stat(work / "app" / "small.txt").st_ino
    assert stat.S_IMODE(os.stat(work / "app" / "small.txt").st_mode) == 0o640
    assert len(digests) == 5  # every regular file (the hard link is a second name)
    big = dict(_CONTEXT)["app/big.bin"]
    assert isinstance(big, bytes)
    assert (work / "app" / "big.bin").read_bytes() == big
    want = hashlib.sha256(big).hexdigest()
    assert f"sha256:{want}" in digests.values()
    srcs = ctx.resolve(["app", "empty"], line=1, dest="/x/")
    # the recorded digests are what hashing the files afresh gives, and they are used
    assert ctx.digest(srcs, cache=digests) == ctx.digest(srcs)
    key = next(k for k in digests if k[0].endswith("big.bin"))
    digests[key] = "sha256:" + "0" * 64
    assert ctx.digest(srcs, cache=digests) != ctx.digest(srcs)
    forget(digests, str(work))
    assert digests == {}


@pytest.mark.parametrize(("entries", "problem"), [
    ([("/etc/passwd", b"x")], "absolute path"),
    ([("a/../../x", b"x")], "climbs out"),
    ([("l", ("sym", "/etc")), ("l/passwd", b"x")], "non-directory"),
    ([("h", ("link", "../outside"))], "climbs out"),
    ([("s", ("sym", "/etc/passwd")), ("h", ("link", "s"))], "not to a file"),
    ([("d", "dir"), ("d", b"file over a dir")], "is a directory and a file"),
])
def test_extraction_refuses_what_the_front_end_refuses(tmp_path: Path, entries: list[Any],
                                                      problem: str) -> None:
    with pytest.raises(InvalidArgument, match=problem):
        extract_context(io.BytesIO(_tar(entries)), str(tmp_path), {})
    assert not any(p.is_file() and p.name == "passwd" for p in tmp_path.rglob("*"))


def test_a_broken_stream_is_a_context_error(tmp_path: Path) -> None:
    data = _tar([("f", os.urandom(100_000))])
    with pytest.raises(InvalidArgument, match="failed to read build context"):
        extract_context(_Unseekable(data[:50_000]), str(tmp_path), {})  # type: ignore[arg-type]


class _Sink:
    """A content Writer stand-in: keeps the bytes."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()

    def write(self, data: bytes) -> int:
        return self.buf.write(data)


def _image_tree(root: Path) -> None:
    """A parent image: a symlinked dir, a file where the copy puts a dir, and the
    reverse, so replacing and following are both exercised."""
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "opt").mkdir()
    (root / "opt" / "data").write_text("was a file\n")
    (root / "opt" / "tool").mkdir()
    (root / "opt" / "tool" / "old").write_text("old\n")


def _snapshot(root: Path, written: set[str]) -> dict[str, tuple[Any, ...]]:
    """Every path's kind, mode, owner, content; mtimes of what the copy wrote (a
    directory it only wrote into gets the time of that write, different each run)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode),
                            st.st_mtime_ns if rel in written else None, st.st_uid)
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_uid,
                            p.read_bytes())
    return out


def test_one_pass_copy_equals_writing_the_tar_then_applying_it(tmp_path: Path) -> None:
    src = tmp_path / "ctx"
    for name, data in (("opt/data/a.txt", b"a\n"), ("opt/tool", b"tool\n"),
                       ("lib/libx.so", os.urandom(300_000)), ("bin/run", b"#!/bin/sh\n")):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    os.chmod(src / "bin" / "run", 0o755)
    os.symlink("run", src / "bin" / "start")
    os.utime(src / "opt" / "tool", (1_500_000_000, 1_500_000_000))
    ctx = BuildContext.from_directory(str(src))
    one, two = tmp_path / "one", tmp_path / "two"
    for root in (one, two):
        _image_tree(root)
    spec = CopySpec(ctx, ctx.resolve(["."], line=1, dest="/"), "/", "/",
                    inline=(("inline.txt", "from a heredoc\n"),), chown="7:8", chmod=None)
    items = _plan(str(one), spec, (7, 8))
    assert items == _plan(str(two), spec, (7, 8))

    sink = _Sink()
    _write_tar(_Out(sink), items, TreeWriter(str(one)))  # type: ignore[arg-type]
    blob = sink.buf.getvalue()
    check = _Sink()
    _write_tar(_Out(check), items)  # type: ignore[arg-type]
    assert check.buf.getvalue() == blob  # the tree changes nothing in the tar
    res = apply_layer(io.BytesIO(blob), str(two))
    assert res.diff_id == "sha256:" + hashlib.sha256(blob).hexdigest()

    written = {it.name for it in items}
    assert _snapshot(one, written) == _snapshot(two, written)
    assert (one / "lib" / "libx.so").is_file()  # a copied dir replaces the image's symlink
    assert (one / "opt" / "data" / "a.txt").read_bytes() == b"a\n"  # file became a dir
    assert (one / "opt" / "tool").read_bytes() == b"tool\n"  # dir became a file
    assert (one / "inline.txt").read_text() == "from a heredoc\n"
    if os.geteuid() == 0:
        assert os.stat(one / "bin" / "run").st_uid == 7


def test_tree_writer_never_leaves_the_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "escape").symlink_to(str(outside))
    (root / "up").symlink_to("../../outside")
    t = TreeWriter(str(root))
    for name in ("escape/x", "up/y"):
        fd = t.create(name)
        t.close_file(fd, 0o644, os.getuid(), os.getgid(), 0)
    t.finish()
    assert list(outside.iterdir()) == []
    made = {p.name for p in root.rglob("*") if p.is_file() and not p.is_symlink()}
    assert made == {"x", "y"}  # followed inside the root, as the layer applier does
    with pytest.raises(InvalidArgument):
        t.create("../z")


def test_streamed_body_reader_and_route_predicate() -> None:
    class Body:
        def __init__(self, data: bytes) -> None:
            self.data = data

        async def read(self, n: int = 1 << 20) -> bytes:
            await asyncio.sleep(0)
            out, self.data = self.data[:n], self.data[n:]
            return out

    async def main() -> bytes:
        reader = BodyReader(Body(b"x" * 3_000_000), asyncio.get_running_loop())
        with pytest.raises(RuntimeError):
            reader.read(10)  # on the loop's thread: would deadlock
        got: list[bytes] = []
        t = threading.Thread(target=lambda: got.append(reader.read()))
        t.start()
        while t.is_alive():
            await asyncio.sleep(0.01)
        return got[0]

    assert asyncio.run(main()) == b"x" * 3_000_000

    def req(method: str, path: str) -> Request:
        return Request(method, path, "HTTP/1.1", Headers([]))

    assert streams_body(req("POST", "/build")) and streams_body(req("POST", "/v1.41/build"))
    assert streams_body(req("POST", "/v1.41/build?t=x"))
    assert not streams_body(req("POST", "/v1.41/images/load"))
    assert not streams_body(req("GET", "/build"))
