"""Pull into real overlay snapshots (root): parallel staging gives the same tree as a
layer-by-layer unpack, and a puller killed mid-download leaves no image and resumes.

The registry is the in-process fake of ``tests/unit/test_distribution_client.py``
(loopback HTTP), because it can stall a blob on demand; the docker CLI against
Debian's docker-registry is in ``tests/compat/test_docker_pull_push.py``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ketch.content.local import LocalContentStore
from ketch.engine.events import EventBus
from ketch.engine.images import ImageService
from ketch.image.store import ImageStore
from ketch.image.unpack import unpack
from ketch.oci import mediatypes as mt
from ketch.oci.digest import digest_of
from ketch.snapshot import mount_all, unmount
from ketch.snapshot.overlay import OverlaySnapshotter
from tests.unit.test_distribution_client import FakeRegistry

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (overlay, mknod)")]


def layer(entries: list[tuple[str, str, Any]]) -> bytes:
    """A gzip layer: (name, kind, arg) with kind file/dir/symlink/link."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, arg in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            if kind == "file":
                data = arg if isinstance(arg, bytes) else str(arg).encode()
                ti.size, ti.mode = len(data), 0o644
                tf.addfile(ti, io.BytesIO(data))
                continue
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, arg
            elif kind == "symlink":
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, arg, 0o777
            tf.addfile(ti)
    return gzip.compress(buf.getvalue(), mtime=0)


def serve_image(fake: FakeRegistry, repo: str, tag: str, layers: list[bytes]) -> str:
    diff_ids = [str(digest_of(gzip.decompress(x))) for x in layers]
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                      "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    c = fake.add_blob(cfg)
    descs = [fake.add_blob(x) for x in layers]
    m = fake.add_manifest(repo, tag, {
        "schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST,
        "config": {"mediaType": mt.DOCKER_CONFIG, "digest": str(c.digest), "size": c.size},
        "layers": [{"mediaType": mt.DOCKER_LAYER_GZIP, "digest": str(d.digest),
                    "size": d.size} for d in descs]})
    return str(m.digest)


def service(root: Path) -> ImageService:
    content = LocalContentStore(root / "content")
    return ImageService(ImageStore(str(root / "images"), content), content,
                        OverlaySnapshotter(str(root / "snap")), EventBus())


def tree(svc: ImageService, top: str) -> dict[str, tuple[Any, ...]]:
    """Every path of the snapshot ``top`` as mounted: type, mode, owner, content."""
    key = f"view-{time.monotonic_ns()}"
    mounts = svc.snapshotter.view(key, top)
    target = tempfile.mkdtemp()
    out: dict[str, tuple[Any, ...]] = {}
    try:
        mount_all(mounts, target)
        try:
            for dirpath, dirs, files in os.walk(target):
                for name in dirs + files:
                    p = os.path.join(dirpath, name)
                    st = os.lstat(p)
                    extra: Any = None
                    if stat.S_ISLNK(st.st_mode):
                        extra = os.readlink(p)
                    elif stat.S_ISREG(st.st_mode):
                        extra = Path(p).read_bytes()
                    out[os.path.relpath(p, target)] = (stat.S_IFMT(st.st_mode),
                                                       stat.S_IMODE(st.st_mode), st.st_uid,
                                                       extra)
        finally:
            unmount(target)
    finally:
        os.rmdir(target)
        svc.snapshotter.remove(key)
    return out


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    f = FakeRegistry()
    try:
        yield f
    finally:
        f.close()


LAYERS = [
    layer([("usr", "dir", 0o755), ("usr/lib", "dir", 0o755), ("lib", "symlink", "usr/lib"),
           ("etc", "dir", 0o755), ("etc/a.conf", "file", "a"), ("tmp", "dir", 0o1777),
           ("d", "dir", 0o755), ("d/x", "file", "x"), ("d/y", "file", "y"),
           ("opq", "dir", 0o755), ("opq/old", "file", "old")]),
    # whiteouts, an opaque dir, and an implicit etc/ (same mode below: staged as is)
    layer([("d/.wh.x", "file", b""), ("opq/.wh..wh..opq", "file", b""),
           ("opq/new", "file", "new"), ("etc/b.conf", "file", "b")]),
    # tmp/ not listed (0755 if made here, 1777 below) and a path through lib -> usr/lib:
    # both depend on the lower layers, so this one must be applied in place
    layer([("tmp/file", "file", "t"), ("lib/libz.so", "file", "z")]),
    layer([("etc/c.conf", "file", "c" * 100_000)]),
]


def test_parallel_pull_equals_layer_by_layer_unpack(fake: FakeRegistry, tmp_path: Path
                                                    ) -> None:
    digest = serve_image(fake, "x/app", "v1", LAYERS)
    svc = service(tmp_path / "a")
    msgs = svc.pull(f"{fake.host}/x/app", "v1")
    statuses = [m.get("status") for m in msgs]
    assert statuses.count("Pull complete") == len(LAYERS)
    assert f"Digest: {digest}" in statuses
    img = svc.store.get(f"{fake.host}/x/app:v1")
    top = svc.snapshotter.walk()[-1].key
    pulled = tree(svc, unpack(img, svc.content, svc.snapshotter) or top)
    assert not [i.key for i in svc.snapshotter.walk() if i.key.startswith("pull-")]

    ref = service(tmp_path / "b")  # the same image unpacked the plain way
    ref.pull(f"{fake.host}/x/app", "v1")
    for info in ref.snapshotter.walk()[::-1]:
        ref.snapshotter.remove(info.key)
    plain = tree(ref, unpack(ref.store.get(f"{fake.host}/x/app:v1"), ref.content,
                             ref.snapshotter) or "")
    assert pulled == plain
    assert "d/x" not in pulled and pulled["d/y"][3] == b"y"
    assert "opq/old" not in pulled and pulled["opq/new"][3] == b"new"
    assert pulled["tmp"][1] == 0o1777 and pulled["tmp/file"][3] == b"t"
    assert pulled["lib"][3] == "usr/lib" and pulled["usr/lib/libz.so"][3] == b"z"


def test_bad_layer_digest_leaves_nothing(fake: FakeRegistry, tmp_path: Path) -> None:
    serve_image(fake, "x/bad", "v1", LAYERS[:2])
    good = LAYERS[1]
    fake.blobs[str(digest_of(good))] = good[:-8] + bytes(8)  # same size, wrong bytes
    svc = service(tmp_path)
    with pytest.raises(Exception, match=r"verification failed|malformed|truncated"):
        svc.pull(f"{fake.host}/x/bad", "v1")
    assert svc.store.list() == []
    assert not [i.key for i in svc.snapshotter.walk() if i.key.startswith("pull-")]
    assert [s.ref for s in svc.content.statuses()] == []


_PULL = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from tests.integration.test_pull_push_registry import service
service(Path({root!r})).pull({image!r}, "v1")
"""


def test_killed_pull_leaves_no_image_and_resumes(fake: FakeRegistry, tmp_path: Path) -> None:
    big = layer([("blob", "file", os.urandom(4 << 20))])
    serve_image(fake, "x/big", "v1", [LAYERS[0], big])
    fake.stall_after[str(digest_of(big))] = len(big) // 2
    image = f"{fake.host}/x/big"
    repo_root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen([sys.executable, "-c", _PULL.format(
        tests=repo_root, root=str(tmp_path), image=image)], cwd=repo_root)
    content = LocalContentStore(tmp_path / "content")
    try:
        deadline = time.monotonic() + 30
        while not any(s.offset >= len(big) // 2 for s in content.statuses()):
            assert time.monotonic() < deadline, "the pull never got half the layer"
            assert proc.poll() is None
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    partial = [s for s in content.statuses() if s.offset]
    assert partial and partial[0].offset == len(big) // 2

    svc = service(tmp_path)  # a restarted daemon
    assert svc.store.list() == []
    assert not [i.key for i in svc.snapshotter.walk() if i.key.startswith("pull-")]
    del fake.stall_after[str(digest_of(big))]
    fake.ranges.clear()
    msgs = svc.pull(image, "v1")
    assert f"bytes={len(big) // 2}-" in fake.ranges
    assert [m for m in msgs if m.get("status", "").startswith("Status: Downloaded")]
    assert svc.inspect(f"{image}:v1")["RootFS"]["Layers"]
    assert content.statuses() == []
