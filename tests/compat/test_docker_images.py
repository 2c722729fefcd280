"""docker CLI and docker-py against a private ketchd: the images API end to end.

A busybox image is built on this host (bootstrap_busybox), saved with ketch's own
archive writer, and loaded with `docker load` first; everything else starts from it.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ketch.content.local import LocalContentStore
from ketch.image import archive
from ketch.image.bootstrap import bootstrap_busybox
from ketch.image.store import ImageStore
from tests.compat.conftest import DOCKER, Ketchd

pytestmark = pytest.mark.skipif(not os.path.exists("/bin/busybox"),
                                reason="needs busybox-static")


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o755
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stderr
    return r.stdout


def docker_bytes(d: Ketchd, *args: str, stdin: bytes | None = None
                 ) -> subprocess.CompletedProcess[bytes]:
    """The docker CLI with binary stdin/stdout (save to a pipe, import from one)."""
    if not os.path.exists(DOCKER):
        pytest.skip(f"{DOCKER} not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=d.url, DOCKER_CONFIG=str(d.root / "docker-config"))
    return subprocess.run([DOCKER, *args], input=stdin, env=env, capture_output=True,
                          timeout=60, check=False)


@pytest.fixture(scope="module")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bb")
    content = LocalContentStore(root / "content")
    store = ImageStore(str(root / "images"), content)
    bootstrap_busybox(store, content)
    path = root / "busybox.tar"
    with open(path, "wb") as f:
        archive.save(store, content, ["busybox:latest"], f)
    return path


@pytest.fixture(scope="module")
def bb(ketchd: Ketchd, busybox_tar: Path) -> str:
    """The busybox image ID, loaded into ketchd by `docker load`."""
    out = ok(ketchd.docker("load", "-i", str(busybox_tar)))
    assert out.strip() == "Loaded image: busybox:latest"
    return ok(ketchd.docker("image", "inspect", "-f", "{{.Id}}", "busybox")).strip()


def test_images_ls_and_filters(ketchd: Ketchd, bb: str) -> None:
    out = ok(ketchd.docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"))
    assert f"busybox:latest {bb[7:19]}" in out.splitlines()
    out = ok(ketchd.docker("images", "--digests", "--format", "{{.Digest}}", "busybox"))
    assert out.strip().startswith("sha256:") and len(out.strip()) == 71
    assert ok(ketchd.docker("images", "-q", "--filter", "reference=busy*")).strip() == \
        bb[7:19]
    assert ok(ketchd.docker("images", "-q", "--filter", "reference=nothing*")).strip() == ""
    assert ok(ketchd.docker("images", "-q", "--filter", "dangling=true")).strip() == ""
    r = ketchd.docker("images", "--filter", "colour=red")
    assert r.returncode != 0 and "invalid filter 'colour'" in r.stderr


def test_inspect_and_history(ketchd: Ketchd, bb: str) -> None:
    [info] = json.loads(ok(ketchd.docker("image", "inspect", "busybox")))
    assert info["Id"] == bb and info["RepoTags"] == ["busybox:latest"]
    assert info["Config"]["Cmd"] == ["sh"] and info["Os"] == "linux"
    assert info["RootFS"]["Layers"] and info["Size"] > 1_000_000
    out = ok(ketchd.docker("history", "--no-trunc", "--format", "{{.ID}} {{.CreatedBy}}",
                           "busybox"))
    assert out.strip() == f"{bb} ketch image bootstrap busybox"
    r = ketchd.docker("image", "inspect", "nope:nope")
    assert r.returncode != 0 and "No such image: nope:nope" in r.stderr


def test_tag_and_rmi_conflict(ketchd: Ketchd, bb: str) -> None:
    ok(ketchd.docker("tag", "busybox", "example.com/team/bb:1"))
    ok(ketchd.docker("tag", bb[7:19], "mybb"))
    out = ok(ketchd.docker("images", "--format", "{{.Repository}}:{{.Tag}}",
                           "--filter", "reference=*bb*"))
    assert sorted(out.split()) == ["mybb:latest"]  # "*" does not cross "/"
    r = ketchd.docker("rmi", bb[7:19])
    assert r.returncode != 0
    assert (f"conflict: unable to delete {bb[7:19]} (must be forced) - image is referenced "
            f"in multiple repositories") in r.stderr
    assert ok(ketchd.docker("rmi", "example.com/team/bb:1", "mybb")).split("\n")[:2] == \
        ["Untagged: example.com/team/bb:1", "Untagged: mybb:latest"]
    r = ketchd.docker("tag", "busybox", "Bad:Name")
    assert r.returncode != 0 and "invalid reference format" in r.stderr


def test_import_with_changes_and_prune(ketchd: Ketchd, bb: str, tmp_path: Path) -> None:
    data = tar_of({"hello": b"#!/bin/sh\necho hello\n"})
    (tmp_path / "root.tar.gz").write_bytes(gzip.compress(data))
    out = ok(ketchd.docker("import", "--change", 'CMD ["/hello"]', "--change", "ENV MODE=x",
                           "--change", "EXPOSE 8080", "-m", "made in a test",
                           str(tmp_path / "root.tar.gz"), "imported:1"))
    image_id = out.strip()
    assert image_id.startswith("sha256:")
    [info] = json.loads(ok(ketchd.docker("image", "inspect", "imported:1")))
    assert info["Id"] == image_id and info["Comment"] == "made in a test"
    assert info["Config"]["Cmd"] == ["/hello"] and info["Config"]["Env"] == ["MODE=x"]
    assert info["Config"]["ExposedPorts"] == {"8080/tcp": {}}
    r = ketchd.docker("import", "--change", "RUN rm -rf /", str(tmp_path / "root.tar.gz"))
    assert r.returncode != 0 and "run is not a valid change command" in r.stderr
    # from stdin, without a name: dangling, then pruned
    dangling = docker_bytes(ketchd, "import", "-", stdin=tar_of({"other": b"1"}))
    assert dangling.returncode == 0, dangling.stderr
    dangling_id = dangling.stdout.decode().strip()
    assert ok(ketchd.docker("images", "-q", "--no-trunc", "--filter",
                            "dangling=true")).split() == [dangling_id]
    out = ok(ketchd.docker("image", "prune", "-f"))
    assert dangling_id in out and "Total reclaimed space:" in out
    assert ok(ketchd.docker("images", "-q", "--filter", "dangling=true")).strip() == ""
    ok(ketchd.docker("rmi", "imported:1"))


def test_save_load_round_trip(ketchd: Ketchd, bb: str, tmp_path: Path) -> None:
    piped = docker_bytes(ketchd, "save", "busybox")
    assert piped.returncode == 0, piped.stderr
    listing = subprocess.run(["tar", "tf", "-"], input=piped.stdout, capture_output=True,
                             check=True).stdout.decode().split()
    assert {"index.json", "manifest.json", "oci-layout"} <= set(listing)
    r = ketchd.docker("save", "-o", str(tmp_path / "ghost.tar"), "ghost:1")
    assert r.returncode != 0 and "No such image: ghost:1" in r.stderr
    path = tmp_path / "saved.tar"
    ok(ketchd.docker("save", "-o", str(path), "busybox:latest"))
    assert path.read_bytes() == piped.stdout  # the archive is reproducible
    ok(ketchd.docker("tag", "busybox", "copy:1"))
    out = ok(ketchd.docker("rmi", "busybox", "copy:1"))
    assert f"Deleted: {bb}" in out
    assert ok(ketchd.docker("load", "-i", str(path))).strip() == "Loaded image: busybox:latest"
    assert ok(ketchd.docker("image", "inspect", "-f", "{{.Id}}", "busybox")).strip() == bb


def test_malformed_load_is_refused(ketchd: Ketchd, bb: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(tar_of({"manifest.json": b'[{"Config": "../../etc/passwd"}]'}))
    r = ketchd.docker("load", "-i", str(bad))
    assert r.returncode != 0 and "invalid archive" in r.stderr
    bad.write_bytes(b"definitely not a tar" * 100)
    r = ketchd.docker("load", "-i", str(bad))
    assert r.returncode != 0 and "invalid archive" in r.stderr


def test_search_and_pull_without_a_registry(ketchd: Ketchd, bb: str) -> None:
    # the daemon's network namespace has no way out: no registry answers
    r = ketchd.docker("search", "busybox")
    assert r.returncode == 0 and r.stdout.split() == ["NAME", "DESCRIPTION", "STARS",
                                                      "OFFICIAL"]
    r = ketchd.docker("pull", "someone/unknown:1")
    assert r.returncode != 0
    assert "registry-1.docker.io" in r.stderr, r.stderr  # names what it could not reach
    assert ok(ketchd.docker("images", "-q", "someone/unknown")) == ""


def _docker_py() -> Any:
    try:
        import docker  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        pytest.skip("docker-py is not installed in the venv (pip install docker)")
    return docker


@pytest.fixture
def client(ketchd: Ketchd, bb: str) -> Iterator[Any]:
    docker = _docker_py()
    c = docker.DockerClient(base_url=ketchd.url)
    try:
        yield c
    finally:
        c.close()


def test_docker_py_round_trip(client: Any, bb: str) -> None:
    docker = _docker_py()
    img = client.images.get("busybox")
    assert img.id == bb and img.tags == ["busybox:latest"]
    data = b"".join(img.save(named=True))
    assert img.tag("pyrepo", "v1")
    assert "pyrepo:v1" in client.images.get(bb).tags
    client.images.remove("pyrepo:v1")
    [loaded] = client.images.load(data)
    assert loaded.id == bb
    assert bb in [i.id for i in client.images.list()]
    assert [i.id for i in client.images.list(filters={"dangling": True})] == []
    with pytest.raises(docker.errors.ImageLoadError, match="invalid archive"):
        client.images.load(b"garbage")
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get("not-here")
    text = client.api.import_image_from_data(tar_of({"f": b"x"}), repository="pyimp",
                                             tag="2", changes=["CMD /f", "USER nobody"])
    imported = client.images.get("pyimp:2")
    assert json.loads(text.splitlines()[-1]) == {"status": imported.id}
    assert imported.attrs["Config"]["Cmd"] == ["/bin/sh", "-c", "/f"]
    assert imported.attrs["Config"]["User"] == "nobody"
    client.images.remove("pyimp:2")
    assert client.images.prune()["SpaceReclaimed"] >= 0
