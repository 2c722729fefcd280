"""apply_layer as root: owners, setuid, xattrs, device nodes, overlayfs whiteouts."""

from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
from pathlib import Path

import pytest

from ketch.image.layer import apply_layer
from ketch.sys.mount import mount, umount
from tests.unit.test_layer_apply import _info, d, f, tar

# vfs_cap_data v2, effective flag set, permitted = CAP_NET_BIND_SERVICE (10)
CAP = struct.pack("<IIIII", 0x02000000 | 1, 1 << 10, 0, 0, 0)


def _xattrs(entry: tuple[tarfile.TarInfo, bytes], **attrs: bytes) -> tuple[tarfile.TarInfo, bytes]:
    ti, data = entry
    ti.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                      for k, v in attrs.items()}
    return ti, data


def test_owners_modes_xattrs(tmp_path: Path) -> None:
    binary = b"\xff\x00\xfe bin"
    layer = tar(
        d("srv", uid=42, gid=43, mode=0o2775),
        _xattrs(f("srv/ping", b"\x7fELF", uid=1234, gid=5678, mode=0o4755),
                **{"security.capability": CAP, "user.note": binary,
                   "trusted.overlay.opaque": b"y", "system.posix_acl_access": b"\x02"}),
        (_info("srv/link", tarfile.SYMTYPE, linkname="ping", uid=7, gid=8), b""),
    )
    res = apply_layer(io.BytesIO(layer), str(tmp_path))
    assert res.skipped == ()
    srv = (tmp_path / "srv").stat()
    assert (srv.st_uid, srv.st_gid, stat.S_IMODE(srv.st_mode)) == (42, 43, 0o2775)
    ping = tmp_path / "srv/ping"
    st = ping.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o4755)
    assert os.getxattr(ping, "security.capability") == CAP
    assert os.getxattr(ping, "user.note") == binary
    names = os.listxattr(ping)
    assert "trusted.overlay.opaque" not in names
    assert "system.posix_acl_access" not in names
    link = (tmp_path / "srv/link").lstat()
    assert (link.st_uid, link.st_gid) == (7, 8)


def test_device_nodes(tmp_path: Path) -> None:
    layer = tar(
        (_info("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666), b""),
        (_info("dev/loop0", tarfile.BLKTYPE, devmajor=7, devminor=0, mode=0o660, gid=6), b""),
        (_info("dev/fifo", tarfile.FIFOTYPE, mode=0o620), b""),
    )
    res = apply_layer(io.BytesIO(layer), str(tmp_path))
    assert res.skipped == ()
    null = (tmp_path / "dev/null").lstat()
    assert stat.S_ISCHR(null.st_mode) and stat.S_IMODE(null.st_mode) == 0o666
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    loop = (tmp_path / "dev/loop0").lstat()
    assert stat.S_ISBLK(loop.st_mode) and loop.st_gid == 6
    assert (os.major(loop.st_rdev), os.minor(loop.st_rdev)) == (7, 0)
    assert stat.S_ISFIFO((tmp_path / "dev/fifo").lstat().st_mode)


def _is_whiteout(p: Path) -> bool:
    st = p.lstat()
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


@pytest.mark.parametrize("opq_first", [True, False])
def test_overlay_whiteouts(tmp_path: Path, opq_first: bool) -> None:
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    for p in (upper, work, merged):
        p.mkdir()
    for rel in ("a/old", "a/keep", "opq/x/y", "opq/z"):
        (lower / rel).parent.mkdir(parents=True, exist_ok=True)
        (lower / rel).write_bytes(b"lower")
    opq = [f("opq/.wh..wh..opq")]
    body = [d("opq"), f("opq/new", b"upper")]
    layer = tar(d("a"), f("a/.wh.old"), f("a/.wh.never-existed"),
                *(opq + body if opq_first else body + opq))
    apply_layer(io.BytesIO(layer), str(upper), whiteouts="overlay")

    assert _is_whiteout(upper / "a/old")
    assert _is_whiteout(upper / "a/never-existed")  # lower layers are not visible here
    assert os.getxattr(upper / "opq", "trusted.overlay.opaque") == b"y"
    assert (upper / "opq/new").read_bytes() == b"upper"
    assert not list(upper.rglob(".wh.*"))

    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    mount("overlay", str(merged), "overlay", 0, opts)
    try:
        assert sorted(os.listdir(merged / "a")) == ["keep"]
        assert sorted(os.listdir(merged / "opq")) == ["new"]
    finally:
        umount(str(merged))
