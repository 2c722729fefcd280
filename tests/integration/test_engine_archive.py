"""docker cp / export on a busybox container tree, as root: owners, devices, and the attacks.

The container's root is a busybox rootfs in a temp dir; beside it, "outside"
stands for the host (a secret file no operation may read, a directory nothing
may be written to) and "vol" for a volume. Every attack test ends by checking
the host side is exactly as it was.
"""

from __future__ import annotations

import base64
import ctypes
import io
import json
import os
import stat
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ketch.engine.archive import FsView, export, get_archive, put_archive, stat_header, stat_path
from ketch.errors import InvalidArgument, KetchError
from ketch.runtime.busybox import make_rootfs
from ketch.sys.libc import libc
from tests.unit.test_layer_apply import _info, d, f, hard, sym, tar

SECRET = b"root:$6$host-only-hash:19000:0:99999:7:::\n"


@dataclass
class Box:
    root: Path
    vol: Path
    outside: Path
    view: FsView

    def host_untouched(self) -> None:
        assert sorted(os.listdir(self.outside)) == ["shadow"]
        shadow = self.outside / "shadow"
        assert shadow.read_bytes() == SECRET
        assert shadow.stat().st_nlink == 1
        assert (shadow.stat().st_uid, stat.S_IMODE(shadow.stat().st_mode)) == (0, 0o600)


@pytest.fixture
def box(tmp_path: Path) -> Box:
    root, vol, outside = tmp_path / "rootfs", tmp_path / "vol", tmp_path / "outside"
    make_rootfs(str(root))
    (root / "data").mkdir()
    vol.mkdir()
    (vol / "volume-only.txt").write_text("volume content\n")
    outside.mkdir()
    (outside / "shadow").write_bytes(SECRET)
    os.chmod(outside / "shadow", 0o600)
    return Box(root, vol, outside, FsView(str(root), [("/data", str(vol), False)], name="box"))


def get(view: FsView, path: str) -> bytes:
    buf = io.BytesIO()
    get_archive(view, path, buf)
    return buf.getvalue()


def put(view: FsView, path: str, data: bytes, **kw: bool) -> None:
    put_archive(view, path, io.BytesIO(data), **kw)


def members(data: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for ti in tf:
            fo = tf.extractfile(ti) if ti.isreg() else None
            out[ti.name] = (ti, fo.read() if fo else b"")
    return out


def inside(box: Box, host_path: Path) -> Path:
    """Where a host absolute path lands when taken as a container path."""
    return box.root / str(host_path).lstrip("/")


# -- ordinary use ---------------------------------------------------------------------------

def test_head_stat_of_busybox(box: Box) -> None:
    sh = stat_path(box.view, "/bin/sh")
    assert sh["linkTarget"] == "/bin/busybox" and sh["mode"] & (1 << 27)
    bb = stat_path(box.view, "/bin/busybox")
    assert bb["size"] == os.path.getsize("/bin/busybox")
    assert bb["mode"] == 0o755
    tmp = stat_path(box.view, "/tmp")
    assert tmp["mode"] == (1 << 31) | (1 << 20) | 0o777
    header = json.loads(base64.b64decode(stat_header(tmp)))  # X-Docker-Container-Path-Stat
    assert header == {"name": "tmp", "size": tmp["size"], "mode": tmp["mode"],
                      "mtime": tmp["mtime"], "linkTarget": ""}


def test_export_has_busybox_but_no_volume_content(box: Box) -> None:
    buf = io.BytesIO()
    export(box.view, buf)
    got = members(buf.getvalue())
    assert got["bin/busybox"][1] == Path("/bin/busybox").read_bytes()
    assert got["bin/sh"][0].issym()
    assert got["data"][0].isdir()
    assert not [n for n in got if n.startswith("data/")]
    assert "/data/volume-only.txt" in members(get(box.view, "/"))  # cp does cross volumes


def test_owners_devices_and_copy_uid_gid(box: Box, tmp_path: Path) -> None:
    layer = tar(d("srv", uid=42, gid=43, mode=0o2750),
                f("srv/tool", b"x", uid=1234, gid=5678, mode=0o4755),
                (_info("srv/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666), b""),
                (_info("srv/fifo", tarfile.FIFOTYPE, mode=0o620, uid=7), b""))
    put(box.view, "/", layer)
    srv = box.root / "srv"
    st = (srv / "tool").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o4755)
    assert (srv.stat().st_uid, stat.S_IMODE(srv.stat().st_mode)) == (42, 0o2750)
    null = (srv / "null").lstat()
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(null.st_mode) == 0o666
    assert stat.S_ISFIFO((srv / "fifo").lstat().st_mode) and (srv / "fifo").lstat().st_uid == 7

    put(box.view, "/tmp", layer, copy_uid_gid=True)
    for p in (box.root / "tmp/srv", box.root / "tmp/srv/tool", box.root / "tmp/srv/fifo"):
        assert (p.lstat().st_uid, p.lstat().st_gid) == (0, 0)
    assert stat.S_IMODE((box.root / "tmp/srv/tool").stat().st_mode) == 0o4755

    # and back out: GET keeps numeric owners, modes and device numbers
    got = members(get(box.view, "/srv"))
    assert (got["srv/tool"][0].uid, got["srv/tool"][0].mode) == (1234, 0o4755)
    assert got["srv/null"][0].ischr() and got["srv/null"][0].devminor == 3
    assert got["srv/fifo"][0].isfifo()


def test_round_trip_between_two_containers(box: Box, tmp_path: Path) -> None:
    other = tmp_path / "other"
    make_rootfs(str(other))
    view = FsView(str(other), name="other")
    (box.root / "etc/motd").write_text("hello\n")
    os.chown(box.root / "etc/motd", 99, 98)
    data = get(box.view, "/etc")
    put(view, "/tmp", data)
    motd = other / "tmp/etc/motd"
    assert motd.read_text() == "hello\n" and (motd.stat().st_uid, motd.stat().st_gid) == (99, 98)
    assert get(view, "/tmp/etc") == data
    put(view, "/", get(box.view, "/bin/."))  # "dir/." copies the contents
    assert (other / "busybox").read_bytes() == Path("/bin/busybox").read_bytes()


# -- attacks: none may read or write anything outside the root and its mounts --------------

def test_attack_tar_entry_with_dotdot(box: Box) -> None:
    for name in ("../outside/pwned", "../../outside/pwned", "tmp/../../../outside/pwned"):
        with pytest.raises(InvalidArgument, match="outside of the extraction point"):
            put(box.view, "/", tar(f(name, b"pwned")))
    with pytest.raises(InvalidArgument):
        put(box.view, "/tmp", tar(hard("h", "../../../outside/shadow")))
    box.host_untouched()


def test_attack_absolute_entry_name(box: Box) -> None:
    target = box.outside / "pwned"
    put(box.view, "/", tar(f(str(target), b"pwned")))
    assert inside(box, target).read_bytes() == b"pwned"  # made inside the container
    box.host_untouched()


@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_attack_symlink_out_then_write_through(box: Box, how: str) -> None:
    link = str(box.outside) if how == "absolute" else "../../../../../../../../" + str(
        box.outside).lstrip("/")
    put(box.view, "/tmp", tar(sym("evil", link), f("evil/pwned", b"pwned"),
                              d("evil/sub"), f("evil/sub/deeper", b"pwned")))
    assert inside(box, box.outside / "pwned").read_bytes() == b"pwned"
    assert inside(box, box.outside / "sub/deeper").read_bytes() == b"pwned"
    # a symlink already in the container, as the destination itself, too
    os.symlink(str(box.outside), box.root / "outlink")
    put(box.view, "/outlink", tar(f("pwned2", b"pwned")))
    assert inside(box, box.outside / "pwned2").exists()
    box.host_untouched()


def test_attack_hardlink_to_host_file(box: Box) -> None:
    shadow = str(box.outside / "shadow")
    os.symlink(str(box.outside), box.root / "tmp/out")
    for linkname in (shadow, "tmp/out/shadow", "../outside/shadow"):
        with pytest.raises(InvalidArgument):
            put(box.view, "/", tar(hard("stolen", linkname)))
    assert not (box.root / "stolen").exists()
    box.host_untouched()


def test_attack_parent_symlink_to_root(box: Box) -> None:
    (box.root / "etc/shadow").write_text("container shadow\n")
    os.symlink("/", box.root / "hostroot")
    os.symlink(str(box.outside), box.root / "etc/secrets")
    got = members(get(box.view, "/hostroot/etc/shadow"))
    assert got["shadow"][1] == b"container shadow\n"
    for path in ("/etc/secrets/shadow", "/hostroot" + str(box.outside) + "/shadow",
                 "/etc/secrets/."):
        with pytest.raises(KetchError):
            get(box.view, path)
    assert stat_path(box.view, "/etc/secrets")["linkTarget"] == str(box.outside)
    put(box.view, "/hostroot/tmp", tar(f("via-root", b"x")))
    assert (box.root / "tmp/via-root").exists()
    box.host_untouched()


def test_attack_symlink_swapped_in_during_copy(box: Box) -> None:
    """A container flips /swap between a real directory and a symlink to the host.

    renameat2(RENAME_EXCHANGE) makes each flip atomic, so every lookup meets one or
    the other; the relative link "../outside" is the host's outside directory when
    followed from the host. Many GETs and PUTs run meanwhile.
    """
    swap, link = box.root / "swap", box.root / "swap.link"
    swap.mkdir()
    (swap / "shadow").write_bytes(b"container file\n")
    os.symlink("../outside", link)
    renameat2 = libc.renameat2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    stop = threading.Event()
    flips = 0

    def flip() -> None:
        nonlocal flips
        while not stop.is_set():
            if renameat2(at_fdcwd, bytes(swap), at_fdcwd, bytes(link), rename_exchange) != 0:
                raise OSError(ctypes.get_errno(), "renameat2")
            flips += 1

    attacks: list[Callable[[], object]] = [
        lambda: put(box.view, "/swap", tar(f("pwned", b"x"))),
        lambda: put(box.view, "/", tar(f("swap/pwned", b"x"), f("swap/d/pwned", b"x"))),
        lambda: put(box.view, "/swap/", tar(hard("stolen", "shadow"))),
        lambda: get(box.view, "/swap/shadow"),
        lambda: get(box.view, "/swap/"),
        lambda: get(box.view, "/swap/."),
    ]
    leaked: list[bytes] = []
    t = threading.Thread(target=flip, daemon=True)
    t.start()
    try:
        for _ in range(150):
            for attack in attacks:
                try:
                    out = attack()
                except (KetchError, FileNotFoundError, NotADirectoryError):
                    continue
                if isinstance(out, bytes) and SECRET in out:
                    leaked.append(out)
    finally:
        stop.set()
        t.join()
    assert flips > 100
    assert not leaked
    box.host_untouched()
