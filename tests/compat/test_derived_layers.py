"""COPY layers kept only as their snapshot until they leave the engine (ketch.engine.derived).

Against a private ketchd on overlay: a COPY layer's tar is not written when it is built;
``docker save`` writes it out, and its bytes are the layer the image names (sha256 =
the diff ID, the files as copied). A layer two images share from different parents
stays readable when one image and its snapshot go.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from tests.compat.conftest import Ketchd, ketch_build

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not os.path.exists("/bin/busybox"),
                                 reason="needs busybox-static")]


def context(tmp: Path, payload: bytes) -> Path:
    ctx = tmp / "ctx"
    (ctx / "data").mkdir(parents=True)
    (ctx / "data" / "a.bin").write_bytes(payload)
    (ctx / "data" / "b.txt").write_text("bee\n")
    (ctx / "Dockerfile").write_text("ARG BASE=busybox\nFROM $BASE\nCOPY data /data/\n")
    return ctx


def top_layer(d: Ketchd, image: str) -> str:
    r = d.docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", image)
    assert r.returncode == 0, r.stderr
    layers: list[str] = json.loads(r.stdout)
    return layers[-1]


def saved_layer(d: Ketchd, image: str, tmp: Path) -> bytes:
    """The top layer's bytes in ``docker save``'s archive."""
    out = tmp / f"{image.replace(':', '_')}.tar"
    r = d.docker("save", "-o", str(out), image)
    assert r.returncode == 0, r.stderr
    with tarfile.open(out) as ar:
        manifest = json.load(ar.extractfile("manifest.json"))  # type: ignore[arg-type]
        f = ar.extractfile(manifest[0]["Layers"][-1])
        assert f is not None
        return f.read()


def test_a_copy_layer_is_written_when_it_leaves(ketchd_busybox: Ketchd,
                                                tmp_path: Path) -> None:
    d = ketchd_busybox
    root = d.root
    payload = os.urandom(300_000)
    ketch_build(d, context(tmp_path, payload), tags=["derived-a:1"])
    diff_id = top_layer(d, "derived-a:1")
    hexd = diff_id.split(":", 1)[1]
    blob = root / "data" / "content" / "blobs" / "sha256" / hexd
    assert not blob.exists()  # built: only the snapshot has the files
    assert (root / "data" / "derived" / "sha256" / f"{hexd}.json").exists()
    assert d.docker("run", "--rm", "--network", "none", "derived-a:1",
                    "cat", "/data/b.txt").stdout == "bee\n"

    layer = saved_layer(d, "derived-a:1", tmp_path)
    assert "sha256:" + hashlib.sha256(layer).hexdigest() == diff_id
    with tarfile.open(fileobj=io.BytesIO(layer)) as t:
        a = t.extractfile("data/a.bin")
        assert a is not None and a.read() == payload
        assert t.getmember("data/b.txt").size == 4
    assert blob.exists()  # written out once, an ordinary blob from now on
    assert not (root / "data" / "derived" / "sha256" / f"{hexd}.json").exists()


def test_a_layer_shared_from_two_parents_outlives_one(ketchd_busybox: Ketchd,
                                                      tmp_path: Path) -> None:
    d = ketchd_busybox
    root = d.root
    base = tmp_path / "base"
    base.mkdir()
    (base / "Dockerfile").write_text("FROM busybox\nRUN echo other > /other\n")
    ketch_build(d, base, tags=["derived-base:1"])
    ctx = context(tmp_path, os.urandom(200_000))
    ketch_build(d, ctx, tags=["derived-one:1"])
    ketch_build(d, ctx, tags=["derived-two:1"], build_args={"BASE": "derived-base:1"})
    shared = top_layer(d, "derived-one:1")
    assert top_layer(d, "derived-two:1") == shared  # same bytes on two parents
    record = root / "data" / "derived" / "sha256" / f"{shared.split(':', 1)[1]}.json"
    assert len(json.loads(record.read_text())["chains"]) == 2

    assert d.docker("rmi", "derived-one:1").returncode == 0  # its snapshot goes
    assert len(json.loads(record.read_text())["chains"]) == 1
    layer = saved_layer(d, "derived-two:1", tmp_path)
    assert "sha256:" + hashlib.sha256(layer).hexdigest() == shared

    assert d.docker("rmi", "derived-two:1", "derived-base:1").returncode == 0
    assert not record.exists()
