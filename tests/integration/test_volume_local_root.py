"""LocalDriver with real mounts (root): tmpfs and bind options, reference counts,
restart reconciliation with the kernel's mount table, and copy-up's ownership."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.errors import Conflict, FailedPrecondition
from ketch.sys.mount import MNT_DETACH, umount
from ketch.volume.copyup import copy_up
from ketch.volume.local import LocalDriver
from tests.conformance.snapshotter_suite import unmount_below
from tests.conformance.volume_driver_suite import NewDriver, VolumeDriverSuite, release_all

TMPFS = {"type": "tmpfs", "device": "tmpfs", "o": "size=16m,uid=1000,mode=0750"}


def mount_entry(path: str) -> tuple[str, str] | None:
    """(fstype, super options) of the top mount at ``path``, or None if not a mount point."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == path:
                sep = fields.index("-")
                found = (fields[sep + 1], fields[sep + 3])
    return found


@pytest.fixture
def new_driver() -> NewDriver:
    return LocalDriver


class TestTmpfsConformance(VolumeDriverSuite):
    """Every suite test on tmpfs-backed volumes."""

    @pytest.fixture
    def volume_opts(self) -> dict[str, str]:
        return dict(TMPFS)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "volumes")
    try:
        yield path
    finally:
        try:
            if os.path.isdir(path):
                release_all(LocalDriver(path))
        finally:
            unmount_below(tmp_path)


def test_tmpfs_mounted_by_first_and_released_by_last(root: str) -> None:
    d = LocalDriver(root)
    vol = d.create("scratch", TMPFS)
    assert mount_entry(vol.mountpoint) is None
    path = d.mount("scratch", "c1")
    entry = mount_entry(path)
    assert entry is not None and entry[0] == "tmpfs"
    assert "size=16384k" in entry[1] and "uid=1000" in entry[1] and "mode=750" in entry[1]
    assert os.stat(path).st_uid == 1000
    Path(path, "f").write_text("x")
    assert d.mount("scratch", "c2") == path
    d.unmount("scratch", "c1")
    assert mount_entry(path) is not None and Path(path, "f").exists()
    with pytest.raises(Conflict, match="volume is in use"):
        d.remove("scratch")
    d.unmount("scratch", "c2")
    assert mount_entry(path) is None
    assert d.path("scratch") is None
    assert os.listdir(path) == []
    d.remove("scratch")


def test_bind_volume_and_remove_keeps_host_data(root: str, tmp_path: Path) -> None:
    host = tmp_path / "host-dir"
    host.mkdir()
    (host / "existing").write_text("host")
    d = LocalDriver(root)
    d.create("bound", {"type": "none", "o": "bind", "device": str(host)})
    path = d.mount("bound", "c1")
    assert Path(path, "existing").read_text() == "host"
    Path(path, "written").write_text("via volume")
    assert (host / "written").read_text() == "via volume"
    with pytest.raises(Conflict):
        d.remove("bound")
    d.unmount("bound", "c1")
    assert mount_entry(path) is None
    d.remove("bound")
    assert sorted(os.listdir(host)) == ["existing", "written"]


def test_read_only_bind(root: str, tmp_path: Path) -> None:
    host = tmp_path / "ro-src"
    host.mkdir()
    d = LocalDriver(root)
    d.create("robind", {"type": "none", "o": "bind,ro", "device": str(host)})
    path = d.mount("robind", "c1")
    with pytest.raises(OSError) as err:
        Path(path, "f").write_text("x")
    assert err.value.errno == errno.EROFS
    d.unmount("robind", "c1")


def test_mount_failure_is_reported_and_not_held(root: str, tmp_path: Path) -> None:
    d = LocalDriver(root)
    d.create("broken", {"type": "none", "o": "bind", "device": str(tmp_path / "missing")})
    with pytest.raises(FailedPrecondition, match="error while mounting volume"):
        d.mount("broken", "c1")
    assert d.mount_ids("broken") == []
    d.remove("broken")


def test_restart_keeps_live_mounts(root: str) -> None:
    d = LocalDriver(root)
    d.create("live", TMPFS)
    path = d.mount("live", "c1")
    Path(path, "f").write_text("kept")
    again = LocalDriver(root)
    assert again.mount_ids("live") == ["c1"]
    assert again.path("live") == path and Path(path, "f").read_text() == "kept"
    with pytest.raises(Conflict):
        again.remove("live")
    again.unmount("live", "c1")
    assert mount_entry(path) is None


def test_restart_drops_holders_of_vanished_mount(root: str) -> None:
    d = LocalDriver(root)
    d.create("gone", TMPFS)
    path = d.mount("gone", "c1")
    umount(path, MNT_DETACH)  # someone else took it away while we were down
    again = LocalDriver(root)
    assert again.mount_ids("gone") == []
    again.remove("gone")


def test_restart_unmounts_unheld_mount(root: str) -> None:
    d = LocalDriver(root)
    d.create("leak", TMPFS)
    path = d.mount("leak", "c1")
    # a crash after mount(2) but before the holder was recorded
    record = Path(root, "leak", "mounts.json")
    record.write_text(json.dumps({**json.loads(record.read_text()), "IDs": []}))
    LocalDriver(root)
    assert mount_entry(path) is None


def test_remove_never_walks_into_a_stale_mount(root: str, tmp_path: Path) -> None:
    host = tmp_path / "precious"
    host.mkdir()
    (host / "keep").write_text("x")
    d = LocalDriver(root)
    vol = d.create("stale", {"type": "none", "o": "bind", "device": str(host)})
    d.mount("stale", "c1")
    record = Path(root, "stale", "mounts.json")
    record.write_text(json.dumps({**json.loads(record.read_text()), "IDs": []}))
    d.remove("stale")  # not held, still mounted: unmounted before deleting
    assert (host / "keep").read_text() == "x"
    assert mount_entry(vol.mountpoint) is None


def test_copy_up_into_tmpfs_volume_keeps_owners_modes_xattrs(root: str,
                                                             tmp_path: Path) -> None:
    src = tmp_path / "image" / "var-lib-app"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "conf").write_text("conf")
    (src / "tool").write_text("#!/bin/sh\n")
    (src / "rel").symlink_to("sub/conf")
    os.chown(src / "sub" / "conf", 1234, 5678)
    os.chmod(src / "tool", 0o4711)
    os.chown(src / "sub", 33, 33)
    os.chmod(src / "sub", 0o1770)
    os.lchown(src / "rel", 42, 43)
    os.chown(src, 999, 998)
    os.chmod(src, 0o700)
    try:
        os.setxattr(src / "sub" / "conf", "trusted.ketch-test", b"v")
        with_xattr = True
    except OSError:
        with_xattr = False

    d = LocalDriver(root)
    d.create("seeded", {"type": "tmpfs", "device": "tmpfs"})
    path = Path(d.mount("seeded", "c1"))
    try:
        assert copy_up(str(src), str(path))
        st = os.stat(path / "sub" / "conf")
        assert (st.st_uid, st.st_gid) == (1234, 5678)
        assert (path / "sub" / "conf").read_text() == "conf"
        assert stat.S_IMODE(os.stat(path / "tool").st_mode) == 0o4711
        st = os.stat(path / "sub")
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (33, 33, 0o1770)
        assert os.readlink(path / "rel") == "sub/conf"
        st = os.lstat(path / "rel")
        assert (st.st_uid, st.st_gid) == (42, 43)
        st = os.stat(path)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (999, 998, 0o700)
        if with_xattr:
            assert os.getxattr(path / "sub" / "conf", "trusted.ketch-test") == b"v"
        (path / "sub" / "conf").write_text("changed by the container")
        assert not copy_up(str(src), str(path))
        assert (path / "sub" / "conf").read_text() == "changed by the container"
    finally:
        d.unmount("seeded", "c1")
