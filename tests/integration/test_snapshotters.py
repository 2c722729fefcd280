"""The Snapshotter conformance suite on overlayfs and on native copies, plus overlay's
own case: a parent chain too long for one page of mount options."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ketch.snapshot import Mount, Snapshotter
from ketch.snapshot.native import NativeSnapshotter
from ketch.snapshot.overlay import OverlaySnapshotter
from ketch.sys.mount import MS
from tests.conformance.snapshotter_suite import (
    NewSnapshotter,
    SnapshotterSuite,
    mounted,
    remove_all,
    unmount_below,
)

IMPLEMENTATIONS: dict[str, Callable[[str], Snapshotter]] = {
    "overlay": OverlaySnapshotter,
    "native": NativeSnapshotter,
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def new_snapshotter(request: pytest.FixtureRequest) -> NewSnapshotter:
    return IMPLEMENTATIONS[request.param]


class TestSnapshotterConformance(SnapshotterSuite):
    """Every suite test once per implementation."""


def test_implementations_satisfy_protocol(tmp_path: Path) -> None:
    for make in IMPLEMENTATIONS.values():
        assert isinstance(make(str(tmp_path / make.__name__)), Snapshotter)


@pytest.fixture
def overlay(tmp_path: Path) -> Iterator[OverlaySnapshotter]:
    s = OverlaySnapshotter(str(tmp_path / "snapshotter"))
    try:
        yield s
    finally:
        unmount_below(tmp_path)
        remove_all(s)
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_overlay_mount_shapes(overlay: OverlaySnapshotter) -> None:
    (m,) = overlay.prepare("a")
    assert (m.type, m.options) == ("bind", ("rbind", "rw"))
    overlay.commit("A", "a")
    (m,) = overlay.view("v", "A")
    assert (m.type, m.options) == ("bind", ("rbind", "ro"))
    (m,) = overlay.prepare("b", "A")
    assert m.type == "overlay"
    assert any(o.startswith("upperdir=") for o in m.options)


def test_overlay_lowerdir_longer_than_a_page(overlay: OverlaySnapshotter,
                                             tmp_path: Path) -> None:
    parent = None
    for i in range(150):
        key = f"a{i}"
        (m,) = overlay.prepare(key, parent)
        if i in (0, 149):  # empty middle layers need no mount to be committed
            with mounted([m], tmp_path / "w") as root:
                (root / f"f{i}").write_text(str(i))
        overlay.commit(f"l{i}", key)
        parent = f"l{i}"
    mounts = overlay.prepare("top", parent)
    assert len(",".join(mounts[0].options)) >= os.sysconf("SC_PAGE_SIZE")
    with mounted(mounts, tmp_path / "top") as root:
        assert sorted(os.listdir(root)) == ["f0", "f149"]
        (root / "new").write_text("ok")
    mounts = overlay.view("v", parent)
    with mounted(mounts, tmp_path / "view") as root:
        assert sorted(os.listdir(root)) == ["f0", "f149"]


def test_mount_unknown_flag_words_are_data() -> None:
    flags, data = Mount("overlay", "overlay", ("ro", "lowerdir=/a:/b", "nodev")).flags_and_data()
    assert data == "lowerdir=/a:/b"
    assert flags == MS.RDONLY | MS.NODEV
    flags, data = Mount("bind", "/src", ("rbind", "ro")).flags_and_data()
    assert (flags, data) == (MS.BIND | MS.REC | MS.RDONLY, "")
