"""VolumeService with real mounts (root): tmpfs volumes mounted by the first holder and
released by the last, copy-up into them, sizes of mounted data, and holders that
outlive a daemon restart while the tmpfs stays mounted."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.engine.events import EventBus
from ketch.engine.volumes import VolumeService
from ketch.errors import Conflict, KetchError
from tests.conformance.snapshotter_suite import unmount_below

TMPFS = {"type": "tmpfs", "device": "tmpfs", "o": "size=10m"}


def mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "volumes")
    try:
        yield path
    finally:
        try:  # release every holder the tests used, through a fresh service
            svc = VolumeService(path, EventBus())
            for vol in svc.list()["Volumes"]:
                for cid in svc.users(vol["Name"]):
                    try:
                        svc.release(vol["Name"], cid)
                    except KetchError:
                        pass
        finally:
            unmount_below(tmp_path)


def test_tmpfs_volume_lifecycle(root: str) -> None:
    svc = VolumeService(root, EventBus())
    vol = svc.create("scratch", "local", TMPFS)
    assert not mounted(vol["Mountpoint"])
    path = svc.acquire("scratch", "c1")
    assert mounted(path)
    Path(path, "data").write_bytes(b"x" * 3000)
    svc.acquire("scratch", "c2")
    assert svc.inspect("scratch", usage=True)["UsageData"] == {"Size": 3000, "RefCount": 2}
    svc.release("scratch", "c1")
    assert mounted(path) and Path(path, "data").exists()
    with pytest.raises(Conflict, match=r"volume is in use - \[c2\]"):
        svc.remove("scratch")
    svc.release("scratch", "c2")
    assert not mounted(path)
    assert svc.inspect("scratch", usage=True)["UsageData"] == {"Size": 0, "RefCount": 0}
    svc.remove("scratch")


def test_copy_up_into_tmpfs_keeps_owner(root: str, tmp_path: Path) -> None:
    src = tmp_path / "image" / "var-lib-db"
    src.mkdir(parents=True)
    (src / "init.sql").write_text("create table t;")
    os.chown(src / "init.sql", 999, 999)
    os.chown(src, 999, 999)
    os.chmod(src, 0o700)
    svc = VolumeService(root, EventBus())
    svc.create("dbdata", "local", TMPFS)
    with pytest.raises(KetchError, match="not mounted"):
        svc.copy_up("dbdata", str(src))
    path = svc.acquire("dbdata", "c1")
    assert svc.copy_up("dbdata", str(src))
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (999, 999, 0o700)
    assert Path(path, "init.sql").read_text() == "create table t;"
    assert os.stat(Path(path, "init.sql")).st_uid == 999
    assert not svc.copy_up("dbdata", str(src))
    svc.release("dbdata", "c1")


def test_holders_and_mount_survive_restart(root: str) -> None:
    first = VolumeService(root, EventBus())
    anon = first.create(None, "local", TMPFS)["Name"]
    path = first.acquire(anon, "c1")
    Path(path, "kept").write_text("still here")
    again = VolumeService(root, EventBus())  # the daemon restarted
    assert again.users(anon) == ["c1"] and mounted(path)
    assert Path(path, "kept").read_text() == "still here"
    assert again.prune()["VolumesDeleted"] == []
    assert again.remove_anonymous_of("c1", [anon]) == [anon]
    assert not mounted(path) and not os.path.exists(path)
