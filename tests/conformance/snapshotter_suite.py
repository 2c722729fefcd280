"""The conformance suite of the ``Snapshotter`` seam.

Subclass ``SnapshotterSuite`` in a test module and provide one fixture:

``new_snapshotter``
    ``new_snapshotter(root) -> Snapshotter``: an implementation on directory
    ``root``. Called again with the same root it must see what the first
    instance made (a daemon restart).

The suite's own ``snap`` fixture makes one on a private root and, afterwards,
unmounts anything still mounted under the test's temp dir and removes every
snapshot, children first, even when the test failed. Tests mount for real, so
they need root (tests/integration/ runs them). Every mount a test makes goes
through ``mounted``, which unmounts it however the block ends.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ketch.errors import Conflict, FailedPrecondition, KetchError, NotFound
from ketch.snapshot import Kind, Mount, Snapshotter, mount_all, unmount

__all__ = ["NewSnapshotter", "SnapshotterSuite", "mounted", "unmount_below"]

NewSnapshotter = Callable[[str], Snapshotter]


@contextlib.contextmanager
def mounted(mounts: list[Mount], target: Path) -> Iterator[Path]:
    """``mounts`` performed at ``target`` (made if missing) for the block; unmounted after."""
    target.mkdir(parents=True, exist_ok=True)
    mount_all(mounts, str(target))
    try:
        yield target
    finally:
        for _ in mounts:
            unmount(str(target))


def unmount_below(top: Path) -> None:
    """Detach every mount at or below ``top``, deepest first (teardown's safety net)."""
    prefix = str(top.resolve())
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    for point in sorted(points, key=len, reverse=True):
        with contextlib.suppress(OSError):
            unmount(point, detach=True)


def remove_all(s: Snapshotter) -> None:
    """Remove every snapshot, children before parents."""
    for info in reversed(s.walk()):
        with contextlib.suppress(KetchError):
            s.remove(info.key)


class SnapshotterSuite:
    """What every ``Snapshotter`` must do; subclass it and provide ``new_snapshotter``."""

    # -- fixtures and helpers -----------------------------------------------------------

    @pytest.fixture
    def root(self, tmp_path: Path) -> str:
        return str(tmp_path / "snapshotter")

    @pytest.fixture
    def snap(self, new_snapshotter: NewSnapshotter, root: str,
             tmp_path: Path) -> Iterator[Snapshotter]:
        s = new_snapshotter(root)
        try:
            yield s
        finally:
            unmount_below(tmp_path)
            remove_all(s)
            shutil.rmtree(tmp_path, ignore_errors=True)

    @pytest.fixture
    def mnt(self, tmp_path: Path) -> Callable[[], Path]:
        """mnt() -> a fresh empty directory to mount at."""
        def make() -> Path:
            p = tmp_path / "mnt" / uuid.uuid4().hex[:8]
            p.mkdir(parents=True)
            return p
        return make

    def layer(self, s: Snapshotter, mnt: Callable[[], Path], name: str, parent: str | None,
              write: Callable[[Path], object]) -> str:
        """Prepare on ``parent``, run ``write`` on the mounted tree, commit as ``name``."""
        key = f"active-{name}"
        with mounted(s.prepare(key, parent), mnt()) as root:
            write(root)
        s.commit(name, key)
        return name

    # -- lifecycle ----------------------------------------------------------------------

    def test_prepare_commit_child_sees_parent(self, snap: Snapshotter,
                                              mnt: Callable[[], Path]) -> None:
        def base(root: Path) -> None:
            (root / "etc").mkdir()
            (root / "etc" / "hostname").write_text("base\n")
            (root / "keep").write_text("keep\n")

        self.layer(snap, mnt, "base", None, base)
        with pytest.raises(NotFound):
            snap.stat("active-base")  # the active key is gone after commit
        with mounted(snap.prepare("child", "base"), mnt()) as root:
            assert (root / "etc" / "hostname").read_text() == "base\n"
            (root / "etc" / "hostname").write_text("child\n")
            (root / "new").write_text("new\n")
            assert (root / "keep").read_text() == "keep\n"
        with mounted(snap.mounts("child"), mnt()) as root:  # writes persist in the active one
            assert (root / "etc" / "hostname").read_text() == "child\n"
            assert (root / "new").read_text() == "new\n"
        with mounted(snap.view("look", "base"), mnt()) as root:  # and never reach the parent
            assert (root / "etc" / "hostname").read_text() == "base\n"
            assert not (root / "new").exists()

    def test_delete_in_child_is_hidden_in_child_only(self, snap: Snapshotter,
                                                     mnt: Callable[[], Path]) -> None:
        def base(root: Path) -> None:
            (root / "gone").write_text("x")
            (root / "dir").mkdir()
            (root / "dir" / "f").write_text("y")

        self.layer(snap, mnt, "base", None, base)

        def child(root: Path) -> None:
            (root / "gone").unlink()
            (root / "dir" / "f").unlink()
            (root / "dir").rmdir()

        self.layer(snap, mnt, "child", "base", child)
        with mounted(snap.prepare("on-child", "child"), mnt()) as root:
            assert sorted(os.listdir(root)) == []
        with mounted(snap.view("on-base", "base"), mnt()) as root:
            assert sorted(os.listdir(root)) == ["dir", "gone"]
            assert (root / "dir" / "f").read_text() == "y"

    @pytest.mark.parametrize("depth", [0, 1, 3])
    def test_view_is_read_only(self, snap: Snapshotter, mnt: Callable[[], Path],
                               depth: int) -> None:
        parent = None
        for i in range(depth):
            def write(root: Path, i: int = i) -> None:
                (root / f"f{i}").write_text(str(i))
            parent = self.layer(snap, mnt, f"l{i}", parent, write)
        with mounted(snap.view("v", parent), mnt()) as root:
            assert sorted(os.listdir(root)) == [f"f{i}" for i in range(depth)]
            with pytest.raises(OSError) as e:
                (root / "new").write_text("no")
            assert e.value.errno == errno.EROFS
        assert snap.stat("v").kind is Kind.VIEW
        with mounted(snap.mounts("v"), mnt()) as root, pytest.raises(OSError) as e2:
            (root / "again").mkdir()
        assert e2.value.errno == errno.EROFS

    def test_attributes_survive_layers(self, snap: Snapshotter,
                                       mnt: Callable[[], Path]) -> None:
        def base(root: Path) -> None:
            f = root / "suid"
            f.write_bytes(b"\x7fELF")
            os.chown(f, 1234, 5678)
            os.chmod(f, 0o4751)
            os.setxattr(f, "user.ketch", b"value")
            os.link(f, root / "hard")
            os.symlink("suid", root / "link")
            os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
            os.mkfifo(root / "fifo", 0o640)
            (root / "d").mkdir(mode=0o710)
            os.chown(root / "d", 7, 8)
            os.utime(f, ns=(1_000_000_000, 2_000_000_000))

        self.layer(snap, mnt, "base", None, base)
        with mounted(snap.prepare("c", "base"), mnt()) as root:
            st = os.lstat(root / "suid")
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o4751)
            assert st.st_mtime_ns == 2_000_000_000
            assert os.getxattr(root / "suid", "user.ketch") == b"value"
            assert os.lstat(root / "hard").st_ino == st.st_ino
            assert os.readlink(root / "link") == "suid"
            null = os.lstat(root / "null")
            assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
            assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)
            d = os.lstat(root / "d")
            assert (d.st_uid, d.st_gid, stat.S_IMODE(d.st_mode)) == (7, 8, 0o710)

    def test_ten_layer_chain(self, snap: Snapshotter, mnt: Callable[[], Path]) -> None:
        parent = None
        for i in range(10):
            def write(root: Path, i: int = i) -> None:
                (root / f"layer{i}").write_text(str(i))
                (root / "top").write_text(str(i))
            parent = self.layer(snap, mnt, f"l{i}", parent, write)
        with mounted(snap.prepare("top", parent), mnt()) as root:
            assert sorted(os.listdir(root)) == sorted([*(f"layer{i}" for i in range(10)), "top"])
            assert (root / "top").read_text() == "9"
        with mounted(snap.view("v", "l4"), mnt()) as root:
            assert (root / "top").read_text() == "4"
            assert not (root / "layer5").exists()

    # -- removal ------------------------------------------------------------------------

    def test_remove_order(self, snap: Snapshotter, mnt: Callable[[], Path]) -> None:
        self.layer(snap, mnt, "base", None, lambda r: (r / "f").write_text("x"))
        self.layer(snap, mnt, "mid", "base", lambda r: (r / "g").write_text("y"))
        snap.view("v", "mid")
        snap.prepare("c", "base")
        for key in ("base", "mid"):
            with pytest.raises(Conflict, match="snapshot has children"):
                snap.remove(key)
        snap.remove("v")
        snap.remove("mid")
        with pytest.raises(Conflict, match="snapshot has children"):
            snap.remove("base")
        snap.remove("c")
        snap.remove("base")
        assert snap.walk() == []
        with pytest.raises(NotFound):
            snap.remove("base")

    # -- stat, walk, usage --------------------------------------------------------------

    def test_stat_walk_usage(self, snap: Snapshotter, mnt: Callable[[], Path]) -> None:
        with mounted(snap.prepare("a", labels={"app": "x"}), mnt()) as root:
            (root / "big").write_bytes(os.urandom(1 << 20))
            (root / "small").write_text("s")
            active_usage = snap.usage("a")
        assert active_usage.size >= 1 << 20
        assert active_usage.inodes >= 3  # the root directory and two files
        info = snap.stat("a")
        assert (info.key, info.parent, info.kind, dict(info.labels)) == (
            "a", None, Kind.ACTIVE, {"app": "x"})
        assert info.created.tzinfo is not None
        snap.commit("A", "a", labels={"more": "y"})
        info = snap.stat("A")
        assert (info.kind, dict(info.labels)) == (Kind.COMMITTED, {"app": "x", "more": "y"})
        usage = snap.usage("A")
        assert usage.size >= 1 << 20 and usage.inodes >= 3
        snap.prepare("b", "A")
        snap.view("v", "A")
        walked = {i.key: (i.kind, i.parent) for i in snap.walk()}
        assert walked == {"A": (Kind.COMMITTED, None), "b": (Kind.ACTIVE, "A"),
                          "v": (Kind.VIEW, "A")}
        assert next(i.key for i in snap.walk()) == "A"  # parents come first
        assert snap.stat("b").parent == "A"

    # -- errors -------------------------------------------------------------------------

    def test_not_found(self, snap: Snapshotter) -> None:
        for call in (lambda: snap.stat("nope"), lambda: snap.mounts("nope"),
                     lambda: snap.commit("x", "nope"), lambda: snap.remove("nope"),
                     lambda: snap.usage("nope"), lambda: snap.prepare("k", "nope"),
                     lambda: snap.view("k2", "nope")):
            with pytest.raises(NotFound):
                call()
        assert snap.walk() == []  # failed calls leave nothing behind

    def test_conflicts_and_preconditions(self, snap: Snapshotter) -> None:
        snap.prepare("a")
        with pytest.raises(Conflict):
            snap.prepare("a")
        with pytest.raises(Conflict):
            snap.view("a")
        with pytest.raises(FailedPrecondition):
            snap.prepare("b", "a")  # parent is active, not committed
        snap.commit("A", "a")
        snap.prepare("a2")
        with pytest.raises(Conflict):
            snap.commit("A", "a2")  # the name is taken
        snap.view("v", "A")
        with pytest.raises(FailedPrecondition):
            snap.prepare("c", "v")  # a view cannot be a parent
        with pytest.raises(FailedPrecondition):
            snap.commit("V", "v")  # only active snapshots commit
        assert {i.key for i in snap.walk()} == {"A", "a2", "v"}

    # -- persistence and sharing --------------------------------------------------------

    def test_survives_restart(self, snap: Snapshotter, new_snapshotter: NewSnapshotter,
                              root: str, mnt: Callable[[], Path]) -> None:
        self.layer(snap, mnt, "base", None, lambda r: (r / "f").write_text("x"))
        with mounted(snap.prepare("c", "base", labels={"l": "1"}), mnt()) as r:
            (r / "g").write_text("y")
        again = new_snapshotter(root)
        assert [(i.key, i.kind) for i in again.walk()] == [
            ("base", Kind.COMMITTED), ("c", Kind.ACTIVE)]
        assert dict(again.stat("c").labels) == {"l": "1"}
        with mounted(again.mounts("c"), mnt()) as r:
            assert (r / "f").read_text() == "x" and (r / "g").read_text() == "y"
        again.commit("C", "c")
        assert snap.stat("C").parent == "base"  # the first instance sees it too
        with mounted(snap.prepare("d", "C"), mnt()) as r:
            assert sorted(os.listdir(r)) == ["f", "g"]

    def test_concurrent_prepares(self, snap: Snapshotter) -> None:
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for j in range(5):
                    snap.prepare(f"t{n}-{j}")
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(snap.walk()) == 30
