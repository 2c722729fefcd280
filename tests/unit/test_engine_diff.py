"""ketch.engine.diff on native snapshots, written directly (no mounts, no root needed).

The overlay snapshotter, the busybox image and the apply round trip on both
snapshotters are in tests/integration/test_engine_diff.py.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from ketch.engine.diff import changes, diff_tar
from ketch.errors import NotFound, NotImplementedYet
from ketch.image.layer import apply_layer
from ketch.snapshot.native import NativeSnapshotter


def fs(s: NativeSnapshotter, key: str) -> Path:
    with s.store.transaction(write=False) as tx:
        return Path(s.snapshots_dir) / tx.get(key).id / "fs"


def build(tmp_path: Path) -> NativeSnapshotter:
    s = NativeSnapshotter(str(tmp_path / "snapshots"))
    s.prepare("base")
    root = fs(s, "base")
    for rel, body in (("a/b", "b"), ("a-b", "x"), ("kind/dir2file/x", "x"), ("kind/file2dir", "f"),
                      ("link", None), ("same", "same"), ("mode", "m"), ("gone/deep/x", "x")):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if body is None:
            os.symlink("same", p)
        else:
            p.write_text(body)
    # old times everywhere, so any later write shows even with a coarse clock
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(Path(dirpath) / name, ns=(1_600_000_000_000_000_000,) * 2,
                     follow_symlinks=False)
    s.commit("BASE", "base")
    s.prepare("c", "BASE")
    return s


def test_native_changes_compare_the_two_trees(tmp_path: Path) -> None:
    s = build(tmp_path)
    root = fs(s, "c")
    (root / "a/b").write_text("B")  # same size, new mtime and content
    (root / "a-b").write_text("x")  # rewritten with the same bytes: mtime still changes
    (root / "kind/dir2file/x").unlink()
    (root / "kind/dir2file").rmdir()
    (root / "kind/dir2file").write_text("now a file")
    (root / "kind/file2dir").unlink()
    (root / "kind/file2dir").mkdir()
    (root / "kind/file2dir/inner").write_text("i")
    os.unlink(root / "link")
    os.symlink("mode", root / "link")  # same length target: only the target differs
    os.chmod(root / "mode", 0o600)
    (root / "gone/deep/x").unlink()
    (root / "gone/deep").rmdir()
    (root / "gone").rmdir()
    got = [(c["Path"], c["Kind"]) for c in changes(s, "c")]
    assert got == [
        ("/a", 0), ("/a/b", 0),  # a directory right before its contents...
        ("/a-b", 0),  # ...so /a/b sorts before /a-b
        ("/gone", 2),  # what it held is not listed again
        ("/kind", 0), ("/kind/dir2file", 0), ("/kind/file2dir", 0),
        ("/kind/file2dir/inner", 1),
        ("/link", 0), ("/mode", 0),
    ]


def test_native_diff_tar_applies_back(tmp_path: Path) -> None:
    s = build(tmp_path)
    root = fs(s, "c")
    (root / "kind/file2dir").unlink()
    (root / "kind/file2dir").mkdir()
    (root / "kind/file2dir/inner").write_text("i")
    os.unlink(root / "a/b")
    buf = io.BytesIO()
    diff_tar(s, "c", buf)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        assert [ti.name for ti in tf] == ["a", "a/.wh.b", "kind", "kind/file2dir",
                                          "kind/file2dir/inner"]
    s.prepare("r", "BASE")
    apply_layer(io.BytesIO(buf.getvalue()), str(fs(s, "r")))
    for rel in ("kind/file2dir/inner", "same", "link"):
        assert (fs(s, "r") / rel).lstat().st_mode == (root / rel).lstat().st_mode
    assert not (fs(s, "r") / "a/b").exists()
    assert changes(s, "r") == changes(s, "c")


def test_no_parent_means_everything_added(tmp_path: Path) -> None:
    s = NativeSnapshotter(str(tmp_path / "snapshots"))
    s.prepare("c")
    (fs(s, "c") / "d").mkdir()
    (fs(s, "c") / "d/f").write_text("f")
    assert changes(s, "c") == [{"Path": "/d", "Kind": 1}, {"Path": "/d/f", "Kind": 1}]


def test_errors(tmp_path: Path) -> None:
    s = NativeSnapshotter(str(tmp_path / "snapshots"))
    with pytest.raises(NotFound):
        changes(s, "nope")

    class Other:
        pass

    with pytest.raises(NotImplementedYet):
        changes(Other(), "c")  # type: ignore[arg-type]
