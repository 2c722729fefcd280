"""Image archives: save writes docker-archive + OCI layout in one tar; load reads either,
checks every digest and refuses unsafe or inconsistent archives without leaving images."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import tarfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft4Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from ketch.content import ContentStore, write_blob
from ketch.content.local import LocalContentStore
from ketch.errors import InvalidArgument, NotFound
from ketch.image import archive, blobs
from ketch.image.store import Image, ImageStore, host_platform
from ketch.oci import mediatypes as mt
from ketch.oci.descriptor import Descriptor
from ketch.oci.digest import digest_of
from tests.conftest import SPECS


@cache
def schema(top: str) -> Draft4Validator:
    def retrieve(uri: str) -> Resource[Any]:
        path = SPECS / "oci-image-spec" / uri.rstrip("/").rsplit("/", 1)[-1]
        return Resource.from_contents(json.loads(path.read_text()),
                                      default_specification=DRAFT4)

    registry: Registry[Any] = Registry(retrieve=retrieve)  # type: ignore[call-arg]
    return Draft4Validator(json.loads((SPECS / "oci-image-spec" / top).read_text()),
                           registry=registry)


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def make_image(store: ImageStore, content: ContentStore, name: str,
               files: dict[str, bytes], *, gz: bool = True) -> Image:
    """A one-layer image holding ``files`` (no busybox needed)."""
    layer = tar_of(files)
    blob = gzip.compress(layer, mtime=0) if gz else layer
    ldesc = Descriptor(mt.OCI_LAYER_GZIP if gz else mt.OCI_LAYER,
                       write_blob(content, "t-layer", blob), len(blob))
    plat = host_platform()
    cfg = json.dumps({"architecture": plat.architecture, "os": "linux",
                      "created": "2024-01-02T03:04:05Z", "config": {"Cmd": ["/x"]},
                      "rootfs": {"type": "layers",
                                 "diff_ids": [str(digest_of(layer))]}}).encode()
    cdesc = Descriptor(mt.OCI_CONFIG, write_blob(content, "t-cfg", cfg), len(cfg))
    man = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                      "config": cdesc.to_json(), "layers": [ldesc.to_json()]}).encode()
    return store.put(name, Descriptor(mt.OCI_MANIFEST, write_blob(content, "t-man", man),
                                      len(man)))


class Box:
    """A content store and an image store under one temp dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.content = LocalContentStore(root / "content")
        self.store = ImageStore(str(root / "images"), self.content)

    def blobs(self) -> set[str]:
        return {str(i.digest) for i in self.content.walk()}

    def save(self, *names: str) -> bytes:
        out = io.BytesIO()
        archive.save(self.store, self.content, list(names), out)
        return out.getvalue()

    def load(self, data: bytes) -> list[str]:
        return archive.load(self.store, self.content, io.BytesIO(data))


@pytest.fixture
def src(tmp_path: Path) -> Box:
    box = Box(tmp_path / "src")
    make_image(box.store, box.content, "app:1", {"etc/app.conf": b"x=1\n", "bin/app": b"#!"})
    return box


@pytest.fixture
def dst(tmp_path: Path) -> Box:
    return Box(tmp_path / "dst")


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: (tf.extractfile(m).read() if m.isfile() else b"")  # type: ignore[union-attr]
                for m in tf.getmembers()}


def rewrite(data: bytes, edit: Callable[[dict[str, bytes]], None]) -> bytes:
    files = {k: v for k, v in members(data).items() if v or not k.startswith("blobs")}
    files = {k: v for k, v in files.items() if not (k in ("blobs", "blobs/sha256") and not v)}
    edit(files)
    return tar_of(files)


def test_save_writes_both_layouts(src: Box) -> None:
    img = src.store.get("app:1")
    files = members(src.save("app:1"))
    assert {"index.json", "manifest.json", "oci-layout", "repositories"} <= set(files)
    for name, data in files.items():  # every blob is named by its digest
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    index = json.loads(files["index.json"])
    schema("image-index-schema.json").validate(index)
    schema("image-layout-schema.json").validate(json.loads(files["oci-layout"]))
    [desc] = index["manifests"]
    assert desc["digest"] == str(img.target.digest)
    assert desc["annotations"] == {"io.containerd.image.name": "docker.io/library/app:1",
                                   "org.opencontainers.image.ref.name": "1"}
    schema("image-manifest-schema.json").validate(
        json.loads(files[f"blobs/sha256/{img.target.digest.hex}"]))
    [entry] = json.loads(files["manifest.json"])
    assert entry["RepoTags"] == ["app:1"]
    assert entry["Config"] == f"blobs/sha256/{img.id.removeprefix('sha256:')}"
    assert all(p in files for p in [entry["Config"], *entry["Layers"]])
    assert json.loads(files["repositories"])["app"]["1"]
    assert not any(n.startswith("/") or ".." in n for n in files)


def test_round_trip_keeps_ids_and_digests(src: Box, dst: Box) -> None:
    img = src.store.get("app:1")
    assert dst.load(src.save("app")) == ["docker.io/library/app:1"]
    got = dst.store.get("app:1")
    assert (got.id, got.target) == (img.id, img.target)
    assert dst.blobs() == src.blobs()


def test_docker_archive_only_and_oci_only_both_load(src: Box, tmp_path: Path) -> None:
    data = src.save("app:1")
    img = src.store.get("app:1")

    def drop(*names: str) -> Callable[[dict[str, bytes]], None]:
        return lambda files: [files.pop(n) for n in names]  # type: ignore[func-returns-value]

    docker_only = Box(tmp_path / "d")
    assert docker_only.load(rewrite(data, drop("index.json", "oci-layout"))) == \
        ["docker.io/library/app:1"]
    assert docker_only.store.get("app:1").id == img.id
    oci_only = Box(tmp_path / "o")
    assert oci_only.load(rewrite(data, drop("manifest.json", "repositories"))) == \
        ["docker.io/library/app:1"]
    assert oci_only.store.get("app:1").target == img.target


def test_gzipped_archive_and_unnamed_images(src: Box, dst: Box) -> None:
    img = src.store.get("app:1")
    by_id = src.save(img.id)
    assert json.loads(members(by_id)["manifest.json"])[0]["RepoTags"] is None
    assert "annotations" not in json.loads(members(by_id)["index.json"])["manifests"][0]
    assert dst.load(gzip.compress(by_id)) == [img.id]
    assert dst.store.list() == []  # nothing named: the caller decides what to keep


def test_names_from_manifest_json_when_the_index_only_has_a_tag(src: Box, dst: Box) -> None:
    def strip(files: dict[str, bytes]) -> None:
        index = json.loads(files["index.json"])
        index["manifests"][0]["annotations"] = {"org.opencontainers.image.ref.name": "1"}
        files["index.json"] = json.dumps(index).encode()

    assert dst.load(rewrite(src.save("app:1"), strip)) == ["docker.io/library/app:1"]


def test_legacy_docker_archive_with_plain_layer(dst: Box) -> None:
    layer = tar_of({"hello": b"hi\n"})
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers",
                                 "diff_ids": [str(digest_of(layer))]}}).encode()
    cfg_name = f"{digest_of(cfg).hex}.json"
    data = tar_of({cfg_name: cfg, "abc123/layer.tar": layer, "abc123/VERSION": b"1.0",
                   "manifest.json": json.dumps([{"Config": cfg_name,
                                                 "RepoTags": ["old:v1", "old:v2"],
                                                 "Layers": ["abc123/layer.tar"]}]).encode()})
    assert dst.load(data) == ["docker.io/library/old:v1", "docker.io/library/old:v2"]
    img = dst.store.get("old:v2")
    assert img.id == str(digest_of(cfg))
    assert dst.store.layers(img)[0].media_type == mt.OCI_LAYER
    # loading the same archive again makes the same manifest
    dst.load(data)
    assert dst.store.get("old:v1").target == img.target


def test_every_image_of_a_bare_repository_is_saved(src: Box) -> None:
    make_image(src.store, src.content, "app:2", {"two": b"2"})
    make_image(src.store, src.content, "other:1", {"o": b"o"})
    [*entries] = json.loads(members(src.save("app"))["manifest.json"])
    assert sorted(t for e in entries for t in e["RepoTags"]) == ["app:1", "app:2"]
    with pytest.raises(NotFound, match="No such image: nothing"):
        src.save("nothing")


def _index(files: dict[str, bytes]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(files["index.json"])
    return out


def _flip(data: bytes) -> bytes:
    return data[:-9] + bytes([data[-9] ^ 0xFF]) + data[-8:]


def _layer_path(files: dict[str, bytes]) -> str:
    entry = json.loads(files["manifest.json"])[0]
    path: str = entry["Layers"][0]
    return path


BAD: dict[str, tuple[Callable[[dict[str, bytes]], None], str]] = {
    "corrupt layer": (lambda f: f.__setitem__(_layer_path(f), _flip(f[_layer_path(f)])),
                      "digest mismatch"),
    "short layer": (lambda f: f.__setitem__(_layer_path(f), b"\x1f\x8bjunk"),
                    "size 6 but its descriptor says"),
    "missing blob": (lambda f: f.pop(_layer_path(f)), "is missing"),
    "dotdot": (lambda f: f.__setitem__("blobs/../../etc/passwd", b"x"), "escapes"),
    "absolute": (lambda f: f.__setitem__("/etc/evil", b"x"), "absolute path"),
    "bad index": (lambda f: f.__setitem__("index.json", b"{"), "invalid JSON"),
    "no manifests": (lambda f: f.__setitem__("index.json", b"{}"), "'manifests'"),
    "nothing": (lambda f: [f.pop("index.json"), f.pop("manifest.json")],
                "neither index.json"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_archives_are_refused_and_leave_nothing(src: Box, dst: Box, case: str) -> None:
    edit, message = BAD[case]
    data = rewrite(src.save("app:1"), edit)
    with pytest.raises(InvalidArgument, match=message) as e:
        dst.load(data)
    assert str(e.value).startswith("invalid archive")
    assert dst.store.list() == [] and dst.blobs() == set()


def test_docker_archive_diff_id_mismatch(src: Box, dst: Box) -> None:
    def only_docker(files: dict[str, bytes]) -> None:
        files.pop("index.json")
        entry = json.loads(files["manifest.json"])[0]
        cfg = json.loads(files[entry["Config"]])
        cfg["rootfs"]["diff_ids"] = ["sha256:" + "0" * 64]
        data = json.dumps(cfg).encode()
        files.pop(entry["Config"])
        entry["Config"] = f"{digest_of(data).hex}.json"
        files[entry["Config"]] = data
        files["manifest.json"] = json.dumps([entry]).encode()

    with pytest.raises(InvalidArgument, match=r"diff_id .* but the config says"):
        dst.load(rewrite(src.save("app:1"), only_docker))
    assert dst.store.list() == [] and dst.blobs() == set()


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_links_and_special_files_are_refused(src: Box, dst: Box, kind: str) -> None:
    buf = io.BytesIO(src.save("app:1"))
    raw = buf.getvalue()
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf, tarfile.open(fileobj=out, mode="w") as tw:
        for m in tf.getmembers():
            tw.addfile(m, tf.extractfile(m) if m.isfile() else None)
        ti = tarfile.TarInfo("blobs/sha256/evil")
        ti.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                   "fifo": tarfile.FIFOTYPE}[kind]
        ti.linkname = "/etc/shadow"
        tw.addfile(ti)
    with pytest.raises(InvalidArgument, match=r"is a link|not a regular file"):
        dst.load(out.getvalue())
    assert dst.store.list() == []


def test_not_a_tar(dst: Box) -> None:
    with pytest.raises(InvalidArgument, match="not a tar file"):
        dst.load(b"this is not a tarball" * 100)
    with pytest.raises(InvalidArgument, match="invalid archive"):
        dst.load(gzip.compress(b"still not a tarball" * 100))


@pytest.mark.parametrize("compress", ["none", "gzip", "bzip2", "xz"])
def test_ingest_layer(tmp_path: Path, compress: str) -> None:
    content = LocalContentStore(tmp_path / "c")
    plain = tar_of({"a": b"A" * 5000, "dir/b": b"B"})
    data = {"none": plain, "gzip": gzip.compress(plain), "bzip2": bz2.compress(plain),
            "xz": lzma.compress(plain)}[compress]
    got = blobs.ingest_layer(content, io.BytesIO(data))
    assert got.diff_id == str(digest_of(plain)) and got.uncompressed_size == len(plain)
    stored = content.read(got.descriptor.digest)
    assert stored == (data if compress == "gzip" else plain)  # gzip kept, others plain
    assert got.descriptor.media_type == (mt.OCI_LAYER_GZIP if compress == "gzip"
                                         else mt.OCI_LAYER)
    info = content.info(got.descriptor.digest)
    assert info.labels[blobs.LABEL_UNCOMPRESSED] == str(len(plain)) and got.created
    assert not blobs.ingest_layer(content, io.BytesIO(data)).created  # same blob again


def test_ingest_layer_refuses_what_is_not_a_tar(tmp_path: Path) -> None:
    content = LocalContentStore(tmp_path / "c")
    with pytest.raises(InvalidArgument, match="invalid tar archive"):
        blobs.ingest_layer(content, io.BytesIO(gzip.compress(b"\x01" * 2048)))
    assert list(content.walk()) == [] and content.statuses() == []


def test_closure_strict_reports_missing_content(src: Box) -> None:
    img = src.store.get("app:1")
    descs = blobs.closure(src.content, img.target)
    assert [d.media_type for d in descs] == [mt.OCI_MANIFEST, mt.OCI_CONFIG, mt.OCI_LAYER_GZIP]
    src.content.delete(descs[-1].digest)
    assert len(blobs.closure(src.content, img.target)) == 2
    with pytest.raises(NotFound):
        blobs.closure(src.content, img.target, strict=True)


def test_nested_index_with_a_missing_platform(src: Box, dst: Box) -> None:
    img = src.store.get("app:1")
    plat = host_platform()

    def nest(files: dict[str, bytes]) -> None:
        files.pop("manifest.json")
        here = img.target.to_json()
        here["platform"] = {"architecture": plat.architecture, "os": "linux"}
        elsewhere = {"mediaType": mt.OCI_MANIFEST, "digest": "sha256:" + "e" * 64,
                     "size": 10, "platform": {"architecture": "s390x", "os": "linux"}}
        inner = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                            "manifests": [elsewhere, here]}).encode()
        files[f"blobs/sha256/{digest_of(inner).hex}"] = inner
        files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [{
            "mediaType": mt.OCI_INDEX, "digest": str(digest_of(inner)), "size": len(inner),
            "annotations": {"io.containerd.image.name": "docker.io/library/multi:1"}}]}).encode()

    assert dst.load(rewrite(src.save("app:1"), nest)) == ["docker.io/library/multi:1"]
    multi = dst.store.get("multi:1")
    assert multi.target.media_type == mt.OCI_INDEX and multi.id == img.id
    assert dst.store.config(multi)["config"] == {"Cmd": ["/x"]}
    # saving it again writes the index and what of it is here
    files = members(dst.save("multi:1"))
    assert f"blobs/sha256/{multi.target.digest.hex}" in files
    assert json.loads(files["manifest.json"])[0]["RepoTags"] == ["multi:1"]
