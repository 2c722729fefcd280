"""skopeo (someone else's client) against ``ketch registry serve`` on 127.0.0.1.

The registry runs as a subprocess (the real composition root) on a free port with a
temporary storage root; skopeo gets its own policy, auth file and registries.conf so
nothing of the host's container configuration is read or written. The image is an OCI
layout made here by hand: one tar layer, a config and a manifest.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.compat.conftest import stop_process

SKOPEO = shutil.which("skopeo")
pytestmark = pytest.mark.skipif(SKOPEO is None, reason="skopeo not installed "
                                "(apt-get install skopeo)")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_oci_layout(dest: Path, tag: str, payload: bytes) -> str:
    """An OCI image layout at ``dest`` holding one image tagged ``tag``; its digest."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mtime, info.mode = len(payload), 0, 0o644
        tar.addfile(info, io.BytesIO(payload))
    # gzip: skopeo compresses plain tar layers on their way to a registry (new digests)
    layer = gzip.compress(buf.getvalue(), mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/hello"]},
                         "rootfs": {"type": "layers",
                                    "diff_ids": [_sha(buf.getvalue())]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _sha(layer), "size": len(layer)}]}).encode()
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for blob in (layer, config, manifest):
        (blobs / _sha(blob).split(":")[1]).write_bytes(blob)
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (dest / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": _sha(manifest), "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return _sha(manifest)


@dataclass
class RegistryProc:
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    tls: bool
    root: Path

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"

    def conn(self) -> http.client.HTTPConnection:
        if self.tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection(self.host, self.port, timeout=20, context=ctx)
        return http.client.HTTPConnection(self.host, self.port, timeout=20)


def start_registry(tmp: Path, *extra: str) -> RegistryProc:
    log_path = tmp / "registry.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ketch.cmd.registry", "serve", "--addr", "127.0.0.1:0",
             "--root", str(tmp / "storage"), *extra],
            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while True:
        m = re.search(r"listening on (https?)://127\.0\.0\.1:(\d+)", log_path.read_text())
        if m:
            return RegistryProc(proc, "127.0.0.1", int(m.group(2)), m.group(1) == "https",
                                tmp)
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"registry did not start: {log_path.read_text()}")
        time.sleep(0.02)


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "reg.crt", tmp / "reg.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module", params=["http", "https"])
def reg(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProc]:
    tmp = tmp_path_factory.mktemp("ketch-registry")
    extra: list[str] = []
    if request.param == "https":
        if shutil.which("openssl") is None:
            pytest.skip("openssl not installed (needed for a test certificate)")
        cert, key = _self_signed(tmp)
        extra = ["--tls-cert", str(cert), "--tls-key", str(key)]
    r = start_registry(tmp, *extra)
    try:
        yield r
    finally:
        stop_process(r.proc)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def skopeo_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("skopeo-config")
    (d / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    (d / "registries.conf").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "CONTAINERS_"))}
    env.update(REGISTRY_AUTH_FILE=str(d / "auth.json"),
               CONTAINERS_REGISTRIES_CONF=str(d / "registries.conf"),
               HOME=str(d), XDG_RUNTIME_DIR=str(d), POLICY=str(d / "policy.json"))
    return env


def skopeo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    assert SKOPEO is not None
    r = subprocess.run([SKOPEO, "--policy", env["POLICY"], *args], env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    return r


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, f"{r.args}: {r.stderr}"
    return r.stdout


def test_copy_in_and_out_digests_match(reg: RegistryProc, skopeo_env: dict[str, str],
                                       tmp_path: Path) -> None:
    src = tmp_path / "src"
    digest = make_oci_layout(src, "v1", b"hello from ketch\n" * 1000)
    ref = f"docker://{reg.hostport}/x/y:v1"
    ok(skopeo(skopeo_env, "copy", "--dest-tls-verify=false", f"oci:{src}:v1", ref))

    info = json.loads(ok(skopeo(skopeo_env, "inspect", "--tls-verify=false", ref)))
    assert info["Digest"] == digest
    raw = ok(skopeo(skopeo_env, "inspect", "--raw", "--tls-verify=false", ref))
    assert _sha(raw.encode()) == digest

    tags = json.loads(ok(skopeo(skopeo_env, "list-tags", "--tls-verify=false",
                                f"docker://{reg.hostport}/x/y")))
    assert tags["Tags"] == ["v1"]

    out_oci, out_dir = tmp_path / "out-oci", tmp_path / "out-dir"
    ok(skopeo(skopeo_env, "copy", "--src-tls-verify=false", ref, f"oci:{out_oci}:v1"))
    index = json.loads((out_oci / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [digest]
    ok(skopeo(skopeo_env, "copy", "--src-tls-verify=false", ref, f"dir:{out_dir}"))
    assert _sha((out_dir / "manifest.json").read_bytes()) == digest
    for blob in (src / "blobs" / "sha256").iterdir():
        copied = out_dir / blob.name
        if copied.exists():
            assert copied.read_bytes() == blob.read_bytes()


def test_second_push_and_cross_repo_copy(reg: RegistryProc, skopeo_env: dict[str, str],
                                         tmp_path: Path) -> None:
    src = tmp_path / "src"
    digest = make_oci_layout(src, "v2", os.urandom(3 << 20))
    ok(skopeo(skopeo_env, "copy", "--dest-tls-verify=false", f"oci:{src}:v2",
              f"docker://{reg.hostport}/x/y:v2"))
    # registry to registry: skopeo mounts or re-pushes; either way the digest holds
    ok(skopeo(skopeo_env, "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
              f"docker://{reg.hostport}/x/y:v2", f"docker://{reg.hostport}/other/repo:copy"))
    info = json.loads(ok(skopeo(skopeo_env, "inspect", "--tls-verify=false",
                                f"docker://{reg.hostport}/other/repo:copy")))
    assert info["Digest"] == digest


def test_plain_http_checks(reg: RegistryProc, skopeo_env: dict[str, str],
                           tmp_path: Path) -> None:
    """What crane-like clients do, with http.client: ping, catalog, tags, HEAD."""
    src = tmp_path / "src"
    digest = make_oci_layout(src, "plain", b"plain\n")
    ok(skopeo(skopeo_env, "copy", "--dest-tls-verify=false", f"oci:{src}:plain",
              f"docker://{reg.hostport}/crane/check:plain"))
    c = reg.conn()
    try:
        c.request("GET", "/v2/")
        r = c.getresponse()
        r.read()
        assert r.status == 200
        assert r.getheader("Docker-Distribution-API-Version") == "registry/2.0"
        c.request("GET", "/v2/_catalog")
        r = c.getresponse()
        assert "crane/check" in json.loads(r.read())["repositories"]
        c.request("HEAD", "/v2/crane/check/manifests/plain",
                  headers={"Accept": OCI_MANIFEST})
        r = c.getresponse()
        r.read()
        assert r.status == 200 and r.getheader("Docker-Content-Digest") == digest
        assert r.getheader("Content-Type") == OCI_MANIFEST
        c.request("GET", "/metrics")
        r = c.getresponse()
        assert b"ketch_registry_http_requests_total" in r.read()
        c.request("GET", "/health")
        r = c.getresponse()
        assert json.loads(r.read())["status"] == "ok"
    finally:
        c.close()


def test_delete(reg: RegistryProc, skopeo_env: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_oci_layout(src, "gone", b"to be deleted\n")
    ref = f"docker://{reg.hostport}/del/me:gone"
    ok(skopeo(skopeo_env, "copy", "--dest-tls-verify=false", f"oci:{src}:gone", ref))
    ok(skopeo(skopeo_env, "delete", "--tls-verify=false", ref))
    r = skopeo(skopeo_env, "inspect", "--tls-verify=false", ref)
    assert r.returncode != 0
    assert "manifest unknown" in r.stderr.lower()


def test_storage_layout_on_disk(reg: RegistryProc, skopeo_env: dict[str, str],
                                tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_oci_layout(src, "disk", b"on disk\n")
    ok(skopeo(skopeo_env, "copy", "--dest-tls-verify=false", f"oci:{src}:disk",
              f"docker://{reg.hostport}/disk/check:disk"))
    storage = reg.root / "storage"
    for blob in (src / "blobs" / "sha256").iterdir():
        stored = storage / "blobs" / "sha256" / blob.name[:2] / blob.name / "data"
        assert stored.read_bytes() == blob.read_bytes()
    repo = storage / "repositories" / "disk" / "check"
    assert (repo / "_manifests" / "tags" / "disk" / "link").is_file()
    leftovers = list((repo / "_uploads").glob("*")) if (repo / "_uploads").exists() else []
    assert leftovers == []


