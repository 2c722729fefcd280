"""Images on one host, as root: bootstrap busybox, unpack it into overlay snapshots, run it.

Everything lives under the test's tmp_path; whatever is still mounted there is
unmounted at the end, whether the test passed or not.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft4Validator, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from ketch.content.local import LocalContentStore
from ketch.errors import InvalidArgument
from ketch.image.bootstrap import bootstrap_busybox
from ketch.image.store import Image, ImageStore
from ketch.image.unpack import chain_ids, prepare_rootfs, unpack
from ketch.oci.digest import Digest
from ketch.runtime.specgen import default_spec
from ketch.snapshot import Kind, mount_all, unmount
from ketch.snapshot.overlay import OverlaySnapshotter
from ketch.sys.mount import umount
from tests.conftest import SPECS
from tests.integration.runtime_helpers import Ctl

IMAGE_SCHEMAS = SPECS / "oci-image-spec"

pytestmark = pytest.mark.skipif(not os.path.exists("/bin/busybox"),
                                reason="needs busybox-static")


@cache
def image_schema(top: str) -> Draft4Validator:
    """A validator for ``top``. The schemas' ids put their relative $refs under several
    base URIs (…/schema/image/, …/schema/descriptor/…), so any URI is served by the
    local file of the same base name."""
    def retrieve(uri: str) -> Resource[Any]:
        path = IMAGE_SCHEMAS / uri.rstrip("/").rsplit("/", 1)[-1]
        return Resource.from_contents(json.loads(path.read_text()),
                                      default_specification=DRAFT4)

    registry: Registry[Any] = Registry(retrieve=retrieve)  # type: ignore[call-arg]
    return Draft4Validator(json.loads((IMAGE_SCHEMAS / top).read_text()), registry=registry)


def _mounts_under(root: Path) -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4].replace("\\040", " ")
        if target == str(root) or target.startswith(f"{root}/"):
            out.append(target)
    return out


@pytest.fixture
def tmp(tmp_path: Path) -> Iterator[Path]:
    try:
        yield tmp_path
    finally:
        for target in reversed(_mounts_under(tmp_path)):
            umount(target, 2)  # MNT_DETACH


@pytest.fixture
def stores(tmp: Path) -> tuple[LocalContentStore, ImageStore, Image, float]:
    content = LocalContentStore(str(tmp / "content"))
    images = ImageStore(str(tmp / "images"), content)
    t0 = time.monotonic()
    img = bootstrap_busybox(images, content)
    return content, images, img, time.monotonic() - t0


def test_bootstrap_matches_the_image_spec(
        stores: tuple[LocalContentStore, ImageStore, Image, float]) -> None:
    content, images, img, took = stores
    print(f"bootstrap: {took * 1000:.0f} ms")
    manifest = json.loads(content.read(img.target.digest))
    image_schema("image-manifest-schema.json").validate(manifest)
    cfg = images.config(img)
    image_schema("config-schema.json").validate(cfg)
    assert cfg["history"][0]["created_by"] == "ketch image bootstrap busybox"
    assert cfg["config"]["Env"][0].startswith("PATH=")
    # a broken manifest is caught by the same validator (so the check above means something)
    with pytest.raises(ValidationError, match="'mediaType' is a required property"):
        image_schema("image-manifest-schema.json").validate({**manifest, "config": {}})
    with pytest.raises(ValidationError, match="does not match"):  # via defs-descriptor.json
        image_schema("image-manifest-schema.json").validate(
            {**manifest, "config": {**manifest["config"], "digest": "nope"}})
    # the layer is a plain reproducible tar: sorted, owned by 0, one mtime
    with content.open(images.layers(img)[0].digest) as f, \
            tarfile.open(fileobj=f, mode="r:gz") as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert "bin/busybox" in names and "etc/passwd" in names
    assert {(m.uid, m.gid) for m in members} == {(0, 0)}
    assert len({m.mtime for m in members}) == 1
    assert not any(m.pax_headers for m in members)


def _upperdir(mounts: list[Any]) -> Path:
    for opt in mounts[0].options:
        if opt.startswith("upperdir="):
            return Path(opt.removeprefix("upperdir="))
    raise AssertionError(f"no upperdir in {mounts}")


def test_unpack_and_run(tmp: Path, stores: tuple[LocalContentStore, ImageStore, Image, float],
                        cid: str) -> None:
    content, _, img, _ = stores
    snap = OverlaySnapshotter(str(tmp / "snapshots"))
    t0 = time.monotonic()
    top = unpack(img, content, snap)
    took = time.monotonic() - t0
    print(f"unpack: {took * 1000:.0f} ms")
    manifest = json.loads(content.read(img.target.digest))
    assert top is not None
    before = snap.walk()
    assert [i.key for i in before] == [top]
    assert before[0].kind is Kind.COMMITTED
    cfg = json.loads(content.read(Digest.parse(manifest["config"]["digest"])))
    assert chain_ids(cfg["rootfs"]["diff_ids"])[-1] == top
    # again: reused, nothing new
    t0 = time.monotonic()
    assert unpack(img, content, snap) == top
    print(f"unpack again: {(time.monotonic() - t0) * 1000:.1f} ms")
    assert snap.walk() == before

    mounts = prepare_rootfs(img, "ctr1", content, snap)
    rootfs = tmp / "rootfs"
    rootfs.mkdir()
    mount_all(mounts, str(rootfs))
    ctl = Ctl(tmp / "state")
    try:
        bundle = tmp / "bundle"
        bundle.mkdir()
        spec = default_spec(args=["/bin/sh", "-c", "echo hi > /tmp/x; cat /etc/passwd | head -1"],
                            terminal=False)
        spec["root"] = {"path": str(rootfs), "readonly": False}
        (bundle / "config.json").write_text(json.dumps(spec))
        p = ctl("run", "--bundle", str(bundle), cid)
        assert p.returncode == 0, p.stderr
        assert p.stdout == "root:x:0:0:root:/root:/bin/sh\n"
    finally:
        ctl.cleanup()
        unmount(str(rootfs))
    upper = _upperdir(mounts)
    assert (upper / "tmp" / "x").read_text() == "hi\n"
    lower = upper.parent.parent / str(snap_id(snap, top)) / "fs"
    assert (lower / "bin" / "busybox").is_file()
    assert not (lower / "tmp" / "x").exists()
    snap.remove("ctr1")
    assert snap.walk() == before


def snap_id(snap: OverlaySnapshotter, key: str) -> str:
    doc = json.loads((Path(snap.root) / "metadata.json").read_text())
    return str(doc["snapshots"][key]["id"])


def _other_layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo("not-busybox")
        tf.addfile(ti)
    return gzip.compress(buf.getvalue(), mtime=0)


@pytest.mark.parametrize(("blob", "error"), [
    (_other_layer(), r"^layer 0: diff_id mismatch"),
    (b"\x1f\x8b garbage that is no gzip stream", r"^layer 0: "),
])
def test_tampered_layer_leaves_nothing(
        tmp: Path, stores: tuple[LocalContentStore, ImageStore, Image, float],
        blob: bytes, error: str) -> None:
    content, images, img, _ = stores
    path = Path(content.blob_path(images.layers(img)[0].digest))
    path.chmod(0o644)
    path.write_bytes(blob)
    snap = OverlaySnapshotter(str(tmp / "snapshots"))
    with pytest.raises(InvalidArgument, match=error):
        unpack(img, content, snap)
    assert snap.walk() == []
    assert list((tmp / "snapshots" / "snapshots").iterdir()) == []
    assert _mounts_under(tmp) == []
