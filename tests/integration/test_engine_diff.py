"""docker diff and commit's layer on real snapshots: overlay (mounted) and native copies.

An image of two layers is built with the snapshotter: L1 is a busybox rootfs plus
some files, L2 deletes and adds on top (so the overlay lower layers hold whiteouts
of their own). A container snapshot on L2 then adds, modifies, deletes, replaces a
directory (overlay makes it opaque), links and chmods. Both snapshotters must report
the same changes, and the layer diff_tar writes, applied on L2 with apply_layer,
must give back the container's tree.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.engine.diff import changes, diff_tar
from ketch.image.layer import apply_layer
from ketch.runtime.busybox import make_rootfs
from ketch.snapshot import Snapshotter
from ketch.snapshot.native import NativeSnapshotter
from ketch.snapshot.overlay import OverlaySnapshotter
from tests.conformance.snapshotter_suite import mounted, remove_all, unmount_below

EXPECTED = [
    ("/etc", 0), ("/etc/app.conf", 0), ("/etc/group", 2),
    ("/opt", 0), ("/opt/old", 1), ("/opt/old/again", 1),
    ("/root", 0), ("/root/f", 1), ("/root/f2", 1), ("/root/link", 1),
    ("/srv", 0), ("/srv/data", 0), ("/srv/data/a", 0), ("/srv/data/b", 2), ("/srv/data/c", 2),
    ("/srv/keep", 0),
    ("/tmp", 0), ("/tmp/new.txt", 1),
    ("/usr", 2),
]


def _write(p: Path, data: str) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(data)


def image_layer_1(root: Path) -> None:
    make_rootfs(str(root))
    _write(root / "etc/app.conf", "v=1\n")
    for rel in ("srv/data/a", "srv/data/b", "srv/keep", "opt/old/x", "var/lib/thing"):
        _write(root / rel, rel)


def image_layer_2(root: Path) -> None:
    (root / "var/lib/thing").unlink()  # a whiteout in L2
    shutil.rmtree(root / "opt/old")  # another, for a directory
    _write(root / "srv/data/c", "c")  # srv/data merges L1 and L2


def container_changes(root: Path) -> None:
    _write(root / "tmp/new.txt", "new")
    _write(root / "etc/app.conf", "v=2\n")
    (root / "etc/group").unlink()
    shutil.rmtree(root / "srv/data")  # gone, then made again: opaque on overlay
    (root / "srv/data").mkdir()
    _write(root / "srv/data/a", "A again")
    os.chmod(root / "srv/keep", 0o600)
    os.symlink("/etc/shadow", root / "root/link")  # a host path: never read through
    _write(root / "root/f", "linked")
    os.link(root / "root/f", root / "root/f2")
    (root / "usr").rmdir()
    _write(root / "opt/old/again", "back")  # under a directory L2 deleted


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a user would compare: type, mode, owner, content or link target."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                body: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                body = p.read_bytes()
            else:
                body = None
            out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                             st.st_uid, st.st_gid, body)
    return out


def tar_names(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {ti.name: ti for ti in tf}


@pytest.fixture(params=["overlay", "native"])
def snap(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Snapshotter]:
    cls = OverlaySnapshotter if request.param == "overlay" else NativeSnapshotter
    s: Snapshotter = cls(str(tmp_path / "snapshots"))
    try:
        yield s
    finally:
        unmount_below(tmp_path)
        remove_all(s)


def build(s: Snapshotter, tmp_path: Path) -> None:
    """L1, L2 committed; container "c" prepared on L2 and changed."""
    for key, parent, fill in (("l1", None, image_layer_1), ("l2", "L1", image_layer_2)):
        with mounted(s.prepare(key, parent), tmp_path / key) as root:
            fill(root)
        s.commit(key.upper(), key)
    with mounted(s.prepare("c", "L2"), tmp_path / "c") as root:
        container_changes(root)


def test_changes_after_add_modify_delete(snap: Snapshotter, tmp_path: Path) -> None:
    build(snap, tmp_path)
    got = changes(snap, "c")
    assert [(c["Path"], c["Kind"]) for c in got] == EXPECTED
    # while the container runs (mounted) the answer is the same
    with mounted(snap.mounts("c"), tmp_path / "c"):
        assert changes(snap, "c") == got


def test_diff_tar_reproduces_the_container(snap: Snapshotter, tmp_path: Path) -> None:
    build(snap, tmp_path)
    buf = io.BytesIO()
    diff_tar(snap, "c", buf)
    layer = buf.getvalue()

    names = tar_names(layer)
    assert "srv/data/.wh..wh..opq" in names or isinstance(snap, NativeSnapshotter)
    assert "etc/.wh.group" in names and ".wh.usr" in names
    assert names["root/link"].issym() and names["root/link"].linkname == "/etc/shadow"
    assert names["root/f2"].islnk() and names["root/f2"].linkname == "root/f"
    assert not [n for n in names if n.startswith(("bin/", "var/"))]  # untouched paths

    again = io.BytesIO()
    diff_tar(snap, "c", again)
    assert again.getvalue() == layer  # deterministic

    with mounted(snap.mounts("c"), tmp_path / "c") as want, \
            mounted(snap.prepare("r", "L2"), tmp_path / "r") as got:
        apply_layer(io.BytesIO(layer), str(got))
        assert tree(got) == tree(want)
