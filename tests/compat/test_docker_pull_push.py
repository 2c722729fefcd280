"""docker CLI, docker-py and skopeo against a private ketchd and Debian's docker-registry.

The registry (Distribution 2.8) runs inside the ketchd's throwaway network namespace
on 127.0.0.1:<random port> with a temp root: a loopback registry, so ketchd speaks
plain HTTP to it as dockerd would. A second one has htpasswd (bcrypt) auth for login.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.compat.conftest import Ketchd, in_netns, stop_process

REGISTRY = "/usr/bin/docker-registry"
pytestmark = [
    pytest.mark.skipif(not os.path.exists(REGISTRY), reason="needs docker-registry"),
    pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="needs busybox-static"),
]


@dataclass
class Registry:
    proc: subprocess.Popen[bytes]
    root: Path
    port: int
    kind: str = "distribution"  # Debian's docker-registry, or "ketch" (ketch registry serve)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def blob_data(self, digest: str) -> Path:
        """Where the registry keeps the bytes of blob ``digest`` (to corrupt them)."""
        hexd = digest.split(":")[1]
        if self.kind == "ketch":
            return self.root / "data/blobs/sha256" / hexd[:2] / hexd / "data"
        return self.root / "data/docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"


def bcrypt(password: str) -> str:
    """A bcrypt hash from libcrypt (libxcrypt), as htpasswd files want."""
    lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1", use_errno=True)
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = lib.crypt_gensalt(b"$2b$", 5, None, 0)
    out: bytes = lib.crypt(password.encode(), salt)
    return out.decode()


def in_ns(d: Ketchd, argv: list[str], timeout: float = 30
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(in_netns(d.root, argv), capture_output=True, text=True,
                          timeout=timeout, check=False)


def start_ketch_registry(d: Ketchd, root: Path, htpasswd: str | None = None) -> Registry:
    """``ketch registry serve`` in the daemon's netns; with ``htpasswd``, the Docker token
    flow (this registry issues the tokens, from an RSA key made here)."""
    root.mkdir(parents=True, exist_ok=True)
    port = random.randint(20000, 60000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KETCH_REGISTRY_")}
    if htpasswd:
        key = root / "token.pem"
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True,
                       capture_output=True)
        env.update(KETCH_REGISTRY_AUTH_METHOD="token", KETCH_REGISTRY_AUTH_HTPASSWD=htpasswd,
                   KETCH_REGISTRY_TOKEN_KEY=str(key))
    log = open(root / "registry.log", "wb")  # noqa: SIM115 - lives with the process
    proc = subprocess.Popen(in_netns(d.root, [
        sys.executable, "-m", "ketch.cmd.ketch", "registry", "serve",
        "--addr", f"127.0.0.1:{port}", "--root", str(root / "data")]),
        stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    _wait_listening(d, proc, root, port)
    return Registry(proc, root, port, "ketch")


def _wait_listening(d: Ketchd, proc: subprocess.Popen[bytes], root: Path, port: int) -> None:
    probe = ("import socket,sys,time\nfor _ in range(400):\n  try:\n"
             f"    socket.create_connection(('127.0.0.1',{port}),0.2).close(); sys.exit(0)\n"
             "  except OSError: time.sleep(0.025)\nsys.exit(1)")
    if in_ns(d, [sys.executable, "-c", probe]).returncode != 0:
        stop_process(proc)
        raise RuntimeError(f"registry did not start: {(root / 'registry.log').read_text()}")


def start_registry(d: Ketchd, root: Path, htpasswd: str | None = None) -> Registry:
    root.mkdir(parents=True, exist_ok=True)
    port = random.randint(20000, 60000)
    auth = f"auth:\n  htpasswd:\n    realm: ketch-test\n    path: {htpasswd}\n" \
        if htpasswd else ""
    (root / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth}")
    log = open(root / "registry.log", "wb")  # noqa: SIM115 - lives with the process
    proc = subprocess.Popen(in_netns(d.root, [REGISTRY, "serve", str(root / "config.yml")]),
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    _wait_listening(d, proc, root, port)
    return Registry(proc, root, port)


@pytest.fixture(scope="module", params=["distribution", "ketch"])
def registry(request: pytest.FixtureRequest, ketchd_busybox: Ketchd,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Debian's docker-registry (Distribution 2.8), then ketch's own registry."""
    start = start_ketch_registry if request.param == "ketch" else start_registry
    r = start(ketchd_busybox, tmp_path_factory.mktemp("registry"))
    try:
        yield r
    finally:
        stop_process(r.proc)
        shutil.rmtree(r.root, ignore_errors=True)


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def skopeo_digest(d: Ketchd, ref: str, *extra: str) -> str:
    out = ok(in_ns(d, ["skopeo", "inspect", "--tls-verify=false", *extra, f"docker://{ref}"]))
    return str(json.loads(out)["Digest"])


def image_id(d: Ketchd, name: str) -> str:
    return ok(d.docker("image", "inspect", "-f", "{{.Id}}", name)).strip()


@pytest.fixture(scope="module")
def pushed(ketchd_busybox: Ketchd, registry: Registry) -> tuple[str, str]:
    """busybox pushed as <registry>/x/busybox:latest by `docker push`: (name, digest)."""
    d = ketchd_busybox
    name = f"{registry.host}/x/busybox:latest"
    ok(d.docker("tag", "busybox:latest", name))
    out = ok(d.docker("push", name))
    assert "Pushed" in out
    line = next(x for x in out.splitlines() if x.startswith("latest: digest: "))
    return name, line.split()[2]


def test_push_digest_matches_skopeo_and_repush_is_noop(ketchd_busybox: Ketchd,
                                                       pushed: tuple[str, str]) -> None:
    d = ketchd_busybox
    name, digest = pushed
    assert skopeo_digest(d, name) == digest
    again = ok(d.docker("push", name))
    assert "Layer already exists" in again
    assert "Pushed" not in again
    assert f"latest: digest: {digest}" in again


def test_pull_after_removal_downloads_and_runs(ketchd_busybox: Ketchd,
                                               pushed: tuple[str, str]) -> None:
    d = ketchd_busybox
    name, digest = pushed
    want_id = image_id(d, "busybox:latest")
    ok(d.docker("rmi", "-f", want_id))  # every name of it (busybox:latest comes back below)
    assert d.docker("image", "inspect", name).returncode != 0
    out = ok(d.docker("pull", name))
    assert "Pulling fs layer" in out or "Download complete" in out, out
    assert "Pull complete" in out, out
    assert f"Digest: {digest}" in out
    assert f"Status: Downloaded newer image for {name}" in out
    assert image_id(d, name) == want_id
    run = ok(d.docker("run", "--rm", "--network", "none", name, "echo", "pulled-ok"))
    assert run.strip() == "pulled-ok"
    again = ok(d.docker("pull", name))
    assert f"Status: Image is up to date for {name}" in again
    ok(d.docker("tag", name, "busybox:latest"))


def test_pull_by_digest(ketchd_busybox: Ketchd, pushed: tuple[str, str]) -> None:
    d = ketchd_busybox
    name, digest = pushed
    repo = name.rsplit(":", 1)[0]
    out = ok(d.docker("pull", f"{repo}@{digest}"))
    assert f"Digest: {digest}" in out
    assert image_id(d, f"{repo}@{digest}") == image_id(d, name)
    digests = ok(d.docker("image", "inspect", "-f", "{{json .RepoDigests}}", name))
    assert f"{repo}@{digest}" in json.loads(digests)


def test_digest_pull_is_a_repo_digest_not_a_tag(ketchd_busybox: Ketchd, registry: Registry,
                                                pushed: tuple[str, str]) -> None:
    """As dockerd: ``repo@digest`` is in RepoDigests, never in RepoTags; ``docker
    images`` shows the repository with a ``<none>`` tag."""
    d = ketchd_busybox
    name, digest = pushed
    repo = f"{registry.host}/dg/busybox"
    ok(d.docker("tag", name, f"{repo}:only"))
    ok(d.docker("push", f"{repo}:only"))
    ok(d.docker("rmi", f"{repo}:only"))
    out = ok(d.docker("pull", f"{repo}@{digest}"))
    assert f"Digest: {digest}" in out
    info = json.loads(ok(d.docker("image", "inspect", f"{repo}@{digest}")))[0]
    assert not [t for t in info["RepoTags"] if "@" in t or t.startswith(repo)], info
    assert f"{repo}@{digest}" in info["RepoDigests"]
    rows = ok(d.docker("images", "--digests", "--format",
                       "{{.Repository}} {{.Tag}} {{.Digest}}")).splitlines()
    assert f"{repo} <none> {digest}" in rows, rows
    listed = json.loads(ok(in_ns(d, ["curl", "-s", "--unix-socket", str(d.sock),
                                     "http://d/images/json"])).strip() or "[]") \
        if shutil.which("curl") else []
    for img in listed:
        assert not [t for t in img["RepoTags"] or [] if "@" in t], img
    ok(d.docker("rmi", f"{repo}@{digest}"))
    assert f"{repo}@{digest}" not in ok(d.docker("image", "inspect", "-f",
                                                 "{{json .RepoDigests}}", name))


def test_pull_unknown_tag_is_docker_error(ketchd_busybox: Ketchd, registry: Registry) -> None:
    r = ketchd_busybox.docker("pull", f"{registry.host}/x/busybox:nope")
    assert r.returncode != 0
    assert "manifest for" in r.stderr and "not found" in r.stderr, r.stderr


def _put_platform_index(d: Ketchd, registry: Registry, name: str) -> None:
    """An index at :multi with linux/amd64 (busybox) and a linux/arm64 image (busybox's
    layer under an arm64 config), written with ketch's registry client in the netns."""
    code = f"""
import json, sys
from ketch.distribution.client import Registry
from ketch.oci.digest import digest_of
from ketch.oci.descriptor import Descriptor
import io
r = Registry({registry.host!r})
data, media, dig = r.get_manifest("x/busybox", "latest")
m = json.loads(data)
cfg = json.loads(r.fetch_blob("x/busybox", Descriptor.from_json(m["config"]).digest))
cfg["architecture"] = "arm64"
raw = json.dumps(cfg).encode()
cd = Descriptor(m["config"]["mediaType"], digest_of(raw), len(raw))
r.upload_blob("x/busybox", cd, io.BytesIO(raw))
m["config"] = cd.to_json()
arm = json.dumps(m).encode()
r.put_manifest("x/busybox", str(digest_of(arm)), arm, media)
index = {{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
  "manifests": [
    {{"mediaType": media, "digest": str(dig), "size": len(data),
      "platform": {{"architecture": "amd64", "os": "linux"}}}},
    {{"mediaType": media, "digest": str(digest_of(arm)), "size": len(arm),
      "platform": {{"architecture": "arm64", "os": "linux", "variant": "v8"}}}}]}}
r.put_manifest("x/busybox", "multi", json.dumps(index).encode(), index["mediaType"])
"""
    ok(in_ns(d, [sys.executable, "-c", code]))


def test_platform_choice_from_an_index(ketchd_busybox: Ketchd, registry: Registry,
                                       pushed: tuple[str, str]) -> None:
    d = ketchd_busybox
    name, _ = pushed
    repo = name.rsplit(":", 1)[0]
    _put_platform_index(d, registry, name)
    ok(d.docker("pull", "--platform", "linux/arm64", f"{repo}:multi"))
    arch = ok(d.docker("image", "inspect", "-f", "{{.Architecture}}", f"{repo}:multi"))
    assert arch.strip() == "arm64"
    ok(d.docker("rmi", f"{repo}:multi"))
    ok(d.docker("pull", f"{repo}:multi"))
    if os.uname().machine == "x86_64":
        assert image_id(d, f"{repo}:multi") == image_id(d, name)


def test_docker_py_pull_and_push(ketchd_busybox: Ketchd, registry: Registry,
                                 pushed: tuple[str, str]) -> None:
    docker = pytest.importorskip("docker")
    d = ketchd_busybox
    name, digest = pushed
    repo = name.rsplit(":", 1)[0]
    client = docker.DockerClient(base_url=d.url, version="1.43")
    try:
        img = client.images.pull(repo, tag="latest")
        assert img.id == image_id(d, name)
        img.tag(f"{registry.host}/py/busybox", "v1")
        lines = list(client.images.push(f"{registry.host}/py/busybox", tag="v1", stream=True,
                                        decode=True))
        assert not [x for x in lines if "error" in x], lines
        aux = [x["aux"] for x in lines if "aux" in x]
        assert aux and aux[0]["Digest"] == digest
        statuses = {str(x.get("status")) for x in lines}
        assert "Layer already exists" in statuses or \
            [s for s in statuses if s.startswith("Mounted from ")], statuses
    finally:
        client.close()
    assert skopeo_digest(d, f"{registry.host}/py/busybox:v1") == digest


def test_corrupt_blob_is_refused_and_leaves_nothing(ketchd_busybox: Ketchd,
                                                    registry: Registry) -> None:
    d = ketchd_busybox
    name = f"{registry.host}/bad/busybox:latest"
    ok(d.docker("tag", "busybox:latest", name))
    ok(d.docker("push", name))
    layer = json.loads(ok(in_ns(d, ["skopeo", "inspect", "--raw", "--tls-verify=false",
                                    f"docker://{name}"])))["layers"][0]["digest"]
    data = registry.blob_data(layer)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bb = image_id(d, "busybox:latest")
    images = {x for x in ok(d.docker("images", "-q", "--no-trunc")).split()} - {bb}
    try:
        ok(d.docker("rmi", "-f", bb))  # every name: the layer blob must be fetched again
        data.write_bytes(bytes(raw))
        r = d.docker("pull", name)
        assert r.returncode != 0
        assert "verification failed" in (r.stdout + r.stderr), r.stdout + r.stderr
        assert d.docker("image", "inspect", name).returncode != 0
        after = {x for x in ok(d.docker("images", "-q", "--no-trunc")).split()}
        assert after <= images
        meta = json.loads((d.root / "data/snapshots/overlay/metadata.json").read_text())
        assert not [k for k in meta["snapshots"] if k.startswith("pull-")]
        ingests = list((d.root / "data/content/ingest").iterdir())
        assert ingests == []
    finally:
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
        ok(d.docker("pull", name))
        ok(d.docker("tag", name, "busybox:latest"))


@pytest.fixture(scope="module", params=["distribution", "ketch"])
def auth_registry(request: pytest.FixtureRequest, ketchd_busybox: Ketchd,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """docker-registry with htpasswd (Basic), then ketch's registry with the token flow."""
    root = tmp_path_factory.mktemp("authreg")
    (root / "htpasswd").write_text(f"alice:{bcrypt('s3cret')}\n")
    start = start_ketch_registry if request.param == "ketch" else start_registry
    r = start(ketchd_busybox, root / "reg", str(root / "htpasswd"))
    try:
        yield r
    finally:
        stop_process(r.proc)
        shutil.rmtree(root, ignore_errors=True)


def test_login_push_pull_with_credentials(ketchd_busybox: Ketchd,
                                          auth_registry: Registry) -> None:
    d = ketchd_busybox
    host = auth_registry.host
    bad = d.docker("login", "-u", "alice", "-p", "wrong", host)
    assert bad.returncode != 0
    if auth_registry.kind == "ketch":  # its token server refuses; dockerd relays the words
        assert "unauthorized: invalid username or password" in bad.stderr, bad.stderr
    else:  # Basic auth: dockerd's own wording
        assert f"login attempt to http://{host}/v2/ failed with status: 401 Unauthorized" \
            in bad.stderr, bad.stderr
    name = f"{host}/private/busybox:latest"
    ok(d.docker("tag", "busybox:latest", name))
    denied = docker_closed_stdin(d, "push", name)
    assert denied.returncode != 0
    out = ok(d.docker("login", "-u", "alice", "-p", "s3cret", host))
    assert "Login Succeeded" in out
    cfg = json.loads((d.root / "docker-config" / "config.json").read_text())
    assert host in cfg["auths"]
    ok(d.docker("push", name))
    ok(d.docker("rmi", name))
    pulled = ok(d.docker("pull", name))
    assert "Status: Downloaded newer image" in pulled or "Image is up to date" in pulled
    ok(d.docker("logout", host))
    ok(d.docker("rmi", name))
    anon = docker_closed_stdin(d, "pull", name)  # the CLI offers a login prompt on 401
    assert anon.returncode != 0
    assert "unauthorized" in (anon.stdout + anon.stderr).lower()


def docker_closed_stdin(d: Ketchd, *args: str) -> subprocess.CompletedProcess[str]:
    from tests.compat.conftest import DOCKER

    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=d.url, DOCKER_CONFIG=str(d.root / "docker-config"))
    return subprocess.run(in_netns(d.root, [DOCKER, *args]), env=env, capture_output=True,
                          text=True, timeout=30, check=False, stdin=subprocess.DEVNULL)


def _plain_layer_tar(path: Path) -> None:
    """A tar for ``docker import``: ketch stores such a layer uncompressed."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tf:
        for name, data in (("hello.txt", b"hello\n" * 5000), ("rand.bin", os.urandom(65536))):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), 1_700_000_000
            tf.addfile(ti, io.BytesIO(data))


def test_uncompressed_layer_is_gzipped_on_push_and_repush_is_noop(
        ketchd_busybox: Ketchd, registry: Registry, tmp_path: Path) -> None:
    import gzip
    import hashlib

    d = ketchd_busybox
    _plain_layer_tar(tmp_path / "plain.tar")
    name = f"{registry.host}/gz/plain:v1"
    ok(d.docker("import", str(tmp_path / "plain.tar"), name))
    diff_id = json.loads(ok(d.docker("image", "inspect", "-f", "{{json .RootFS.Layers}}",
                                     name)))[0]
    out = ok(d.docker("push", name))
    assert "Pushed" in out, out
    digest = next(x for x in out.splitlines() if x.startswith("v1: digest: ")).split()[2]
    assert skopeo_digest(d, name) == digest
    manifest = json.loads(ok(in_ns(d, ["skopeo", "inspect", "--raw", "--tls-verify=false",
                                       f"docker://{name}"])))
    (lay,) = manifest["layers"]
    assert lay["mediaType"].endswith("tar+gzip"), lay
    blob = registry.blob_data(lay["digest"]).read_bytes()
    assert blob[:2] == b"\x1f\x8b" and len(blob) == lay["size"]
    assert "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest() == diff_id

    again = ok(d.docker("push", name))
    assert "Layer already exists" in again and "Pushed" not in again, again
    assert f"v1: digest: {digest}" in again
    other = f"{registry.host}/gz/other:v1"
    ok(d.docker("tag", name, other))
    moved = ok(d.docker("push", other))
    assert "Mounted from gz/plain" in moved, moved
    assert f"v1: digest: {digest}" in moved

    ok(d.docker("rmi", name, other))  # and back: the pulled image is the imported one
    pulled = ok(d.docker("pull", name))
    assert "Pull complete" in pulled, pulled
    assert json.loads(ok(d.docker("image", "inspect", "-f", "{{json .RootFS.Layers}}",
                                  name))) == [diff_id]
    ok(d.docker("rmi", name))
