"""ketch.engine.archive without root: Docker's path rules, PathStat, tar naming, errors.

Each test builds a small container tree in a temp dir ("root") beside host
directories that stand for the rest of the host ("outside", a volume "vol").
The attacks and ownership run as root in tests/integration/test_engine_archive.py.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from ketch.engine.archive import FsView, export, get_archive, put_archive, stat_header, stat_path
from ketch.errors import InvalidArgument, NotFound
from tests.unit.test_layer_apply import d, f, hard, sym, tar

SECRET = b"host secret\n"


@dataclass
class Box:
    root: Path
    vol: Path
    outside: Path
    view: FsView


@pytest.fixture
def box(tmp_path: Path) -> Box:
    root, vol, ro, outside = (tmp_path / n for n in ("root", "vol", "rovol", "outside"))
    for p in (root / "etc", root / "bin", root / "data", root / "tmp", vol, ro, outside):
        p.mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "bin/busybox").write_bytes(b"\x7fELF")
    os.symlink("busybox", root / "bin/sh")
    (vol / "v.txt").write_text("volume\n")
    (ro / "r.txt").write_text("ro\n")
    (outside / "shadow").write_bytes(SECRET)
    view = FsView(str(root), [("/data", str(vol), False), ("/ro", str(ro), True)], name="box")
    return Box(root, vol, outside, view)


def names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [ti.name for ti in tf]


def members(data: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for ti in tf:
            fo = tf.extractfile(ti) if ti.isreg() else None
            out[ti.name] = (ti, fo.read() if fo else b"")
    return out


def get(view: FsView, path: str) -> bytes:
    buf = io.BytesIO()
    get_archive(view, path, buf)
    return buf.getvalue()


def put(view: FsView, path: str, data: bytes, **kw: bool) -> None:
    put_archive(view, path, io.BytesIO(data), **kw)


# -- PathStat --------------------------------------------------------------------------------

def test_stat_file_dir_and_header(box: Box) -> None:
    os.chmod(box.root / "etc/passwd", 0o640)
    st = stat_path(box.view, "/etc/passwd")
    assert st["name"] == "passwd"
    assert st["size"] == len("root:x:0:0::/root:/bin/sh\n")
    assert st["mode"] == 0o640
    assert st["linkTarget"] == ""
    assert st["mtime"].endswith("Z") and st["mtime"][:4].isdigit()
    os.chmod(box.root / "tmp", 0o1777)
    tmp = stat_path(box.view, "/tmp")
    assert tmp["mode"] == (1 << 31) | (1 << 20) | 0o777  # Go's ModeDir | ModeSticky | perm
    decoded = json.loads(base64.b64decode(stat_header(tmp)))
    assert decoded == tmp


def test_stat_names_follow_docker(box: Box) -> None:
    assert stat_path(box.view, "/")["name"] == "/"
    assert stat_path(box.view, "/etc/")["name"] == "etc"
    assert stat_path(box.view, "/etc/.")["name"] == "."
    assert stat_path(box.view, "etc")["name"] == "etc"  # relative means from the root
    assert stat_path(box.view, "/bin/../etc/./passwd")["name"] == "passwd"


def test_stat_symlink_is_not_followed_and_names_its_target(box: Box) -> None:
    st = stat_path(box.view, "/bin/sh")
    assert st["mode"] & (1 << 27)  # ModeSymlink
    assert st["linkTarget"] == "/bin/busybox"
    os.symlink("/etc/../nowhere/x", box.root / "dangling")
    assert stat_path(box.view, "/dangling")["linkTarget"] == "/nowhere/x"
    os.symlink("/etc/passwd/x", box.root / "through-file")
    assert stat_path(box.view, "/through-file")["linkTarget"] == "/etc/passwd/x"
    os.symlink("loop", box.root / "loop")
    assert stat_path(box.view, "/loop")["linkTarget"] == ""
    with pytest.raises(InvalidArgument, match="too many levels of symbolic links"):
        stat_path(box.view, "/loop/")


def test_missing_path_uses_dockers_wording(box: Box) -> None:
    with pytest.raises(NotFound, match=r"^Could not find the file /nope in container box$"):
        stat_path(box.view, "/nope")
    with pytest.raises(NotFound, match="Could not find the file /etc/passwd/x"):
        get(box.view, "/etc/passwd/x")
    with pytest.raises(InvalidArgument, match="not a directory"):
        stat_path(box.view, "/etc/passwd/")


# -- GET -----------------------------------------------------------------------------------

def test_get_names_entries_after_the_base_name(box: Box) -> None:
    assert names(get(box.view, "/etc")) == ["etc", "etc/group", "etc/passwd"]
    assert names(get(box.view, "/etc/")) == ["etc", "etc/group", "etc/passwd"]
    assert names(get(box.view, "/etc/.")) == [".", "./group", "./passwd"]
    root = names(get(box.view, "/"))
    assert "/etc/passwd" in root and "/bin/busybox" in root


def test_get_symlink_follows_only_with_trailing_slash(box: Box) -> None:
    os.symlink("/etc", box.root / "cfg")
    (ti, _), = members(get(box.view, "/cfg")).values()
    assert ti.issym() and ti.linkname == "/etc"
    got = members(get(box.view, "/cfg/"))
    assert sorted(got) == ["cfg", "cfg/group", "cfg/passwd"]
    assert got["cfg/passwd"][1].startswith(b"root:x:0:0")


def test_get_crosses_into_volumes(box: Box) -> None:
    got = members(get(box.view, "/"))
    assert got["/data/v.txt"][1] == b"volume\n"
    assert got["/ro/r.txt"][1] == b"ro\n"
    assert members(get(box.view, "/data/v.txt"))["v.txt"][1] == b"volume\n"


def test_get_symlinks_resolve_inside_the_container(box: Box) -> None:
    # absolute targets mean the container's root, wherever the link is (even in a volume)
    os.symlink("/", box.root / "up")
    os.symlink("/etc", box.vol / "etc-link")
    os.symlink("../../../../../../../..", box.root / "climb")
    os.symlink(str(box.outside), box.root / "host")
    passwd = (box.root / "etc/passwd").read_bytes()
    for path in ("/up/etc/passwd", "/data/etc-link/passwd", "/climb/etc/passwd"):
        assert next(iter(members(get(box.view, path)).values()))[1] == passwd
    with pytest.raises(NotFound):
        get(box.view, str(box.outside / "shadow"))
    with pytest.raises(NotFound):
        get(box.view, "/host/shadow")


def test_hard_links_are_archived_once(box: Box) -> None:
    os.link(box.root / "bin/busybox", box.root / "bin/bb2")
    got = members(get(box.view, "/bin"))
    # the first name in walk order (sorted) carries the data
    assert got["bin/bb2"][0].isreg() and got["bin/bb2"][1] == b"\x7fELF"
    assert got["bin/busybox"][0].islnk() and got["bin/busybox"][0].linkname == "bin/bb2"


def test_export_is_the_root_without_volumes(box: Box) -> None:
    buf = io.BytesIO()
    export(box.view, buf)
    got = names(buf.getvalue())
    assert "bin/busybox" in got and "etc/passwd" in got
    assert "data" in got  # the mount point itself, as the root holds it
    assert not [n for n in got if n.startswith(("data/", "ro/"))]
    assert not [n for n in got if n in ("", ".", "/")]


# -- PUT -----------------------------------------------------------------------------------

def test_put_extracts_and_overwrites(box: Box) -> None:
    put(box.view, "/tmp", tar(d("app", mode=0o750), f("app/run", b"go", mode=0o755),
                              sym("app/cfg", "/etc/passwd"), hard("app/run2", "app/run")))
    app = box.root / "tmp/app"
    assert (app / "run").read_bytes() == b"go"
    assert oct((app / "run").stat().st_mode & 0o7777) == oct(0o755)
    assert oct(app.stat().st_mode & 0o7777) == oct(0o750)
    assert app.stat().st_mtime == 1_600_000_000
    assert os.readlink(app / "cfg") == "/etc/passwd"
    assert (app / "run2").stat().st_ino == (app / "run").stat().st_ino
    put(box.view, "/tmp/app", tar(f("run", b"again")))
    assert (app / "run").read_bytes() == b"again"
    assert (app / "run2").read_bytes() == b"go"  # the old inode is replaced, not written


def test_put_accepts_gzip_and_empty_bodies(box: Box) -> None:
    put(box.view, "/tmp", gzip.compress(tar(f("z", b"gz"))))
    assert (box.root / "tmp/z").read_bytes() == b"gz"
    put(box.view, "/tmp", b"")


def test_put_follows_the_destination_symlink(box: Box) -> None:
    os.symlink("/data", box.root / "v")
    put(box.view, "/v", tar(f("new", b"into the volume")))
    assert (box.vol / "new").read_bytes() == b"into the volume"


def test_put_destination_errors(box: Box) -> None:
    with pytest.raises(NotFound, match=r"^Could not find the file /nope in container box$"):
        put(box.view, "/nope", tar(f("x")))
    with pytest.raises(InvalidArgument, match=r"^extraction point is not a directory$"):
        put(box.view, "/etc/passwd", tar(f("x")))
    with pytest.raises(InvalidArgument, match=r"^mounted volume is marked read-only$"):
        put(box.view, "/ro", tar(f("x")))
    with pytest.raises(InvalidArgument, match="malformed archive"):
        put(box.view, "/tmp", b"not a tar at all" * 64)


def test_read_only_root_still_takes_writable_volumes(box: Box) -> None:
    view = FsView(box.view.root, box.view.mounts, read_only_root=True, name="box")
    with pytest.raises(InvalidArgument, match=r"^container rootfs is marked read-only$"):
        put(view, "/tmp", tar(f("x")))
    put(view, "/data", tar(f("ok", b"1")))
    assert (box.vol / "ok").read_bytes() == b"1"
    # ...but not an entry that climbs back into the root through a symlink
    with pytest.raises(InvalidArgument, match="container rootfs is marked read-only"):
        put(view, "/data", tar(sym("back", "/tmp"), f("back/x")))
    assert not (box.root / "tmp/x").exists()
    with pytest.raises(InvalidArgument, match="mounted volume is marked read-only"):
        put(box.view, "/", tar(f("ro/x")))


def test_no_overwrite_dir_non_dir(box: Box) -> None:
    with pytest.raises(InvalidArgument, match="cannot overwrite directory"):
        put(box.view, "/", tar(f("etc")), no_overwrite_dir_non_dir=True)
    with pytest.raises(InvalidArgument, match="cannot overwrite non-directory"):
        put(box.view, "/etc", tar(d("passwd")), no_overwrite_dir_non_dir=True)
    assert (box.root / "etc/passwd").is_file()
    put(box.view, "/etc", tar(d("passwd")))  # without the flag Docker replaces it
    assert (box.root / "etc/passwd").is_dir()


def test_put_entries_stay_below_the_destination(box: Box) -> None:
    with pytest.raises(InvalidArgument, match="outside of the extraction point"):
        put(box.view, "/tmp", tar(f("../../outside/pwned")))
    with pytest.raises(InvalidArgument, match="outside of the extraction point"):
        put(box.view, "/tmp", tar(f("a/../../b")))
    put(box.view, "/tmp", tar(f("/abs", b"1"), f("x/../y", b"2")))
    assert (box.root / "tmp/abs").read_bytes() == b"1"
    assert (box.root / "tmp/y").read_bytes() == b"2"
    assert sorted(os.listdir(box.outside)) == ["shadow"]


def test_round_trip_get_then_put(box: Box, tmp_path: Path) -> None:
    os.link(box.root / "bin/busybox", box.root / "bin/bb2")
    data = get(box.view, "/bin")
    other = tmp_path / "other"
    other.mkdir()
    view = FsView(str(other), name="other")
    put(view, "/", data)
    assert (other / "bin/busybox").read_bytes() == b"\x7fELF"
    assert os.readlink(other / "bin/sh") == "busybox"
    assert (other / "bin/bb2").stat().st_ino == (other / "bin/busybox").stat().st_ino
    assert get(view, "/bin") == data


def test_put_through_a_symlink_loop_is_refused(box: Box) -> None:
    os.symlink("loop", box.root / "tmp/loop")
    with pytest.raises(InvalidArgument, match="too many symlinks"):
        put(box.view, "/tmp", tar(f("loop/x")))
