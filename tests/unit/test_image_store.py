"""ImageStore: names, lookups in Docker's spellings, content checks; bootstrap reproducibility."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest

from ketch.content import ContentStore, write_blob
from ketch.content.memory import MemoryContentStore
from ketch.errors import Conflict, InvalidArgument, NotFound
from ketch.image.store import Image, ImageStore, host_platform
from ketch.oci import mediatypes as mt
from ketch.oci.descriptor import Descriptor, Platform
from ketch.oci.digest import digest_of


def _blob(content: ContentStore, media_type: str, data: bytes) -> Descriptor:
    d = write_blob(content, f"t-{digest_of(data).hex}", data)
    return Descriptor(media_type, d, len(data))


def _json(content: ContentStore, media_type: str, obj: dict[str, Any]) -> Descriptor:
    return _blob(content, media_type, json.dumps(obj, sort_keys=True).encode())


def make_image(content: ContentStore, seed: str = "x", *, arch: str | None = None) -> Descriptor:
    """A one-layer manifest whose layer is not a real tar (the store never reads layers)."""
    layer = _blob(content, mt.OCI_LAYER_GZIP, f"layer {seed}".encode())
    config = _blob(content, mt.OCI_CONFIG, _config_bytes(seed, arch))
    return _json(content, mt.OCI_MANIFEST, {
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": config.to_json(), "layers": [layer.to_json()],
    })


@pytest.fixture
def content() -> MemoryContentStore:
    return MemoryContentStore()


@pytest.fixture
def store(tmp_path: Path, content: MemoryContentStore) -> ImageStore:
    return ImageStore(str(tmp_path / "images"), content)


def test_put_get_spellings(store: ImageStore, content: ContentStore) -> None:
    target = make_image(content)
    img = store.put("busybox", target, labels={"a": "b"})
    assert img.name == "docker.io/library/busybox:latest"
    cfg_digest = store.manifest(img)["config"]["digest"]
    assert img.id == cfg_digest
    hexid = cfg_digest.removeprefix("sha256:")
    for spelling in ("busybox", "busybox:latest", "docker.io/library/busybox:latest",
                     "library/busybox", f"busybox@{target.digest}", cfg_digest, hexid,
                     hexid[:12], hexid[:4], f"sha256:{hexid[:6]}"):
        got = store.get(spelling)
        assert got.name == img.name, spelling
        assert got.target == target
        assert dict(got.labels) == {"a": "b"}
    for missing in ("busybox:1", "other", hexid[:3], "ffff" if not hexid.startswith("ffff")
                    else "eeee", f"busybox@sha256:{'0' * 64}"):
        with pytest.raises(NotFound, match=rf"^No such image: {missing}$"):
            store.get(missing)
    with pytest.raises(InvalidArgument, match="invalid reference format"):
        store.get("Bad/Name")


def test_persisted_and_listed(tmp_path: Path, store: ImageStore, content: ContentStore) -> None:
    store.put("b", make_image(content, "b"))
    store.put("a", make_image(content, "a"))
    again = ImageStore(store.root, content)
    assert [i.name for i in again.list()] == ["docker.io/library/a:latest",
                                              "docker.io/library/b:latest"]
    doc = json.loads((tmp_path / "images" / "images.json").read_text())
    assert doc["version"] == 1


def test_create_conflicts_put_replaces(store: ImageStore, content: ContentStore) -> None:
    t1, t2 = make_image(content, "1"), make_image(content, "2")
    store.create("app:1", t1)
    with pytest.raises(Conflict):
        store.create("docker.io/library/app:1", t2)
    store.put("app:1", t2)
    assert store.get("app:1").target == t2


def test_tag_and_delete(store: ImageStore, content: ContentStore) -> None:
    img = store.put("busybox", make_image(content))
    tagged = store.tag("busybox", "localhost:5000/mine:v1")
    assert tagged.name == "localhost:5000/mine:v1"
    assert tagged.id == img.id
    # by ID, two names: Docker refuses without force
    with pytest.raises(Conflict, match="referenced in multiple repositories"):
        store.delete(img.id)
    assert store.delete("busybox") == ["docker.io/library/busybox:latest"]
    with pytest.raises(NotFound, match=r"^No such image: busybox$"):
        store.delete("busybox")
    assert store.delete(img.id[7:19]) == ["localhost:5000/mine:v1"]
    assert store.list() == []


def _config_bytes(seed: str, arch: str | None = None) -> bytes:
    return json.dumps({
        "architecture": arch or host_platform().architecture, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [str(digest_of(seed.encode()))]},
    }, sort_keys=True).encode()


def test_ambiguous_prefix(store: ImageStore, content: ContentStore) -> None:
    seen: dict[str, str] = {}
    i = 0
    while True:  # find two configs whose digests share 4 hex digits (~300 tries)
        seed = str(i)
        prefix = digest_of(_config_bytes(seed)).hex[:4]
        if prefix in seen:
            break
        seen[prefix] = seed
        i += 1
    a = store.put("a", make_image(content, seen[prefix]))
    b = store.put("b", make_image(content, seed))
    with pytest.raises(InvalidArgument, match=f"short ID {prefix} is ambiguous"):
        store.get(prefix)
    n = next(i for i, (x, y) in enumerate(zip(a.id, b.id, strict=True)) if x != y)
    assert store.get(a.id[: n + 1]).name == a.name
    store.tag("a", "a2")  # one ID under two names is not ambiguous
    assert store.get(b.id[7:19]).name == b.name


def test_manifest_config_layers_checked(store: ImageStore, content: MemoryContentStore) -> None:
    img = store.put("x", make_image(content))
    assert store.config(img)["os"] == "linux"
    assert [d.media_type for d in store.layers("x")] == [mt.OCI_LAYER_GZIP]
    # a descriptor whose digest the content does not match
    bad = Descriptor(mt.OCI_MANIFEST, img.target.digest, img.target.size + 1)
    with pytest.raises(InvalidArgument, match="does not match its descriptor"):
        store.manifest(Image("x", bad, img.created))
    # wrong media types
    cfg = _json(content, mt.OCI_CONFIG, {"architecture": "amd64", "os": "linux",
                                         "rootfs": {"type": "layers", "diff_ids": []}})
    wrong = _json(content, mt.OCI_MANIFEST, {
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": cfg.to_json(), "layers": [cfg.to_json()]})
    with pytest.raises(InvalidArgument, match="is not a layer"):
        store.put("wrong", wrong)  # content that is present is checked on put
    with pytest.raises(InvalidArgument, match="is not a layer"):
        store.layers(Image("wrong", wrong, img.created))
    short = _json(content, mt.OCI_MANIFEST, {
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": cfg.to_json(),
        "layers": store.manifest("x")["layers"]})
    store.put("short", short)  # put reads the manifest only, not the config
    with pytest.raises(InvalidArgument, match="0 diff_ids for 1 layers"):
        store.config("short")
    mislabelled = Descriptor(mt.OCI_INDEX, img.target.digest, img.target.size)
    with pytest.raises(InvalidArgument, match="mediaType"):
        store.manifest(Image("m", mislabelled, img.created))


def test_index_resolves_this_platform(store: ImageStore, content: ContentStore) -> None:
    here = host_platform()
    mine = make_image(content, "mine")
    other = make_image(content, "other", arch="s390x" if here.architecture != "s390x"
                       else "amd64")
    entries = []
    for desc, arch in ((other, "s390x" if here.architecture != "s390x" else "amd64"),
                       (mine, here.architecture)):
        d = desc.to_json()
        d["platform"] = {"architecture": arch, "os": "linux"}
        entries.append(d)
    index = _json(content, mt.OCI_INDEX, {"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                                         "manifests": entries})
    img = store.put("multi", index)
    assert store.resolve_platform(img).digest == mine.digest
    assert img.id == store.manifest(img)["config"]["digest"]
    with pytest.raises(NotFound, match="no manifest for platform linux/mips64"):
        store.resolve_platform(img, Platform("mips64", "linux"))


def test_missing_content_id_falls_back_to_target(store: ImageStore) -> None:
    target = Descriptor(mt.OCI_MANIFEST, digest_of(b"absent"), 6)
    assert store.put("ghost", target).id == str(target.digest)


def _put_many(root: str, prefix: str) -> None:
    s = ImageStore(root, MemoryContentStore())
    for i in range(20):
        s.put(f"{prefix}{i}", Descriptor(mt.OCI_MANIFEST, digest_of(f"{prefix}{i}".encode()), 1))


def test_multi_process_writers(tmp_path: Path) -> None:
    root = str(tmp_path / "images")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_put_many, args=(root, p)) for p in ("a", "b", "c")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(ImageStore(root, MemoryContentStore()).list()) == 60


@pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="needs busybox-static")
def test_bootstrap_is_reproducible(tmp_path: Path) -> None:
    from ketch.content.local import LocalContentStore
    from ketch.image.bootstrap import bootstrap_busybox

    digests = []
    for n in ("one", "two"):
        content = LocalContentStore(str(tmp_path / n / "content"))
        store = ImageStore(str(tmp_path / n / "images"), content)
        img = bootstrap_busybox(store, content)
        assert img.name == "docker.io/library/busybox:latest"
        cfg = store.config(img)
        assert cfg["config"]["Cmd"] == ["sh"]
        assert cfg["architecture"] == host_platform().architecture
        digests.append((img.target.digest, img.id, store.layers(img)[0].digest))
    assert digests[0] == digests[1]
