"""skopeo through ``ketch registry serve`` with htpasswd (Basic) and token (Bearer) auth,
online GC while serving, and webhooks — the real composition root as a subprocess on
127.0.0.1, with its own config file, htpasswd and token key in a temp directory.

docker-py's ``login`` goes through a daemon's ``/auth`` endpoint, so it belongs with the
engine half of issue 5; here skopeo (containers/image, the same Bearer flow docker's
distribution client follows) and http.client speak to the registry directly.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ketch.registry.passwords import bcrypt_supported, hash_password
from tests.compat.conftest import stop_process
from tests.compat.test_skopeo_registry import (
    RegistryProc,
    make_oci_layout,
    ok,
    skopeo,
    skopeo_env,
    start_registry,
)

pytestmark = [
    pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed"),
    pytest.mark.skipif(not bcrypt_supported(), reason="libcrypt without bcrypt"),
]

__all__ = ["skopeo_env"]  # the fixture, re-used

ACCESS = """
[[access]]
users = ["alice"]
repositories = ["*"]
actions = ["*"]
[[access]]
users = ["bob"]
repositories = ["*"]
actions = ["pull"]
"""


def _setup(tmp: Path, method: str, extra: str = "") -> Path:
    (tmp / "htpasswd").write_text(f"alice:{hash_password('alice-pw', cost=5)}\n"
                                  f"bob:{hash_password('bob-pw', cost=5, prefix='$2b$')}\n")
    conf = f'[auth]\nmethod = "{method}"\nhtpasswd = "{tmp / "htpasswd"}"\n'
    if method == "token":
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                        "rsa_keygen_bits:2048", "-out", str(tmp / "token.key")],
                       check=True, capture_output=True)
        conf += f'[token]\nkey = "{tmp / "token.key"}"\nservice = "ketch-test"\n'
    (tmp / "registry.toml").write_text(conf + ACCESS + extra)
    return tmp / "registry.toml"


@pytest.fixture(scope="module", params=["basic", "token"])
def reg(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProc]:
    tmp = tmp_path_factory.mktemp(f"ketch-registry-{request.param}")
    r = start_registry(tmp, "--config", str(_setup(tmp, request.param)))
    try:
        yield r
    finally:
        stop_process(r.proc)
        shutil.rmtree(tmp, ignore_errors=True)


def test_push_pull_with_credentials(reg: RegistryProc, skopeo_env: dict[str, str],
                                    tmp_path: Path) -> None:
    src = tmp_path / "src"
    digest = make_oci_layout(src, "v1", b"authenticated\n" * 500)
    ref = f"docker://{reg.hostport}/team/app:v1"
    r = skopeo(skopeo_env, "copy", "--dest-tls-verify=false", f"oci:{src}:v1", ref)
    assert r.returncode != 0 and "unauthorized" in r.stderr.lower()
    r = skopeo(skopeo_env, "copy", "--dest-tls-verify=false", "--dest-creds", "alice:wrong",
               f"oci:{src}:v1", ref)
    assert r.returncode != 0
    ok(skopeo(skopeo_env, "copy", "--dest-tls-verify=false", "--dest-creds", "alice:alice-pw",
              f"oci:{src}:v1", ref))
    info = json.loads(ok(skopeo(skopeo_env, "inspect", "--tls-verify=false",
                                "--creds", "bob:bob-pw", ref)))
    assert info["Digest"] == digest
    out = tmp_path / "out"
    ok(skopeo(skopeo_env, "copy", "--src-tls-verify=false", "--src-creds", "bob:bob-pw",
              ref, f"oci:{out}:v1"))
    assert [m["digest"] for m in json.loads((out / "index.json").read_text())["manifests"]] \
        == [digest]
    r = skopeo(skopeo_env, "inspect", "--tls-verify=false", ref)  # anonymous: refused
    assert r.returncode != 0
    # bob may pull but not push: denied, and nothing is stored under the new tag
    r = skopeo(skopeo_env, "copy", "--dest-tls-verify=false", "--dest-creds", "bob:bob-pw",
               f"oci:{src}:v1", f"docker://{reg.hostport}/team/app:by-bob")
    assert r.returncode != 0 and "denied" in r.stderr.lower(), r.stderr
    tags = json.loads(ok(skopeo(skopeo_env, "list-tags", "--tls-verify=false",
                                "--creds", "alice:alice-pw",
                                f"docker://{reg.hostport}/team/app")))
    assert tags["Tags"] == ["v1"]


def _get(reg: RegistryProc, path: str, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, str], bytes]:
    c = reg.conn()
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def test_challenge_on_the_wire(reg: RegistryProc) -> None:
    status, headers, body = _get(reg, "/v2/team/app/tags/list")
    assert status == 401
    assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
    challenge = headers["www-authenticate"]
    if "token" in str(reg.root):
        assert challenge == (f'Bearer realm="http://{reg.hostport}/token",'
                             'service="ketch-test",scope="repository:team/app:pull"')
        creds = base64.b64encode(b"bob:bob-pw").decode()
        status, _, body = _get(reg, "/token?service=ketch-test&scope=repository:team/app:pull",
                               {"Authorization": f"Basic {creds}"})
        assert status == 200
        token = json.loads(body)["token"]
        status, _, _ = _get(reg, "/v2/team/app/tags/list", {"Authorization": f"Bearer {token}"})
        assert status in (200, 404)  # authorised (the repository may not exist yet)
    else:
        assert challenge.startswith('Basic realm="ketch-registry"')


def test_gc_while_serving_keeps_what_is_referenced(reg: RegistryProc,
                                                   skopeo_env: dict[str, str],
                                                   tmp_path: Path) -> None:
    src = tmp_path / "src"
    digest = make_oci_layout(src, "keep", b"keep me\n" * 100)
    ref = f"docker://{reg.hostport}/gc/kept:keep"
    ok(skopeo(skopeo_env, "copy", "--dest-tls-verify=false", "--dest-creds", "alice:alice-pw",
              f"oci:{src}:keep", ref))
    gone = tmp_path / "gone"
    make_oci_layout(gone, "gone", b"delete me\n" * 100)
    gone_ref = f"docker://{reg.hostport}/gc/gone:gone"
    ok(skopeo(skopeo_env, "copy", "--dest-tls-verify=false", "--dest-creds", "alice:alice-pw",
              f"oci:{gone}:gone", gone_ref))
    ok(skopeo(skopeo_env, "delete", "--tls-verify=false", "--creds", "alice:alice-pw",
              gone_ref))
    r = subprocess.run([sys.executable, "-m", "ketch.cmd.registry", "gc", "--root",
                        str(reg.root / "storage"), "--grace", "0", "--format", "json"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert len(report["blobs_deleted"]) == 3  # the deleted image's layer, config, manifest
    info = json.loads(ok(skopeo(skopeo_env, "inspect", "--tls-verify=false",
                                "--creds", "alice:alice-pw", ref)))
    assert info["Digest"] == digest
    ok(skopeo(skopeo_env, "copy", "--src-tls-verify=false", "--src-creds", "alice:alice-pw",
              ref, f"dir:{tmp_path / 'out'}"))


def test_webhook_on_push(skopeo_env: dict[str, str], tmp_path: Path) -> None:
    got: list[dict[str, Any]] = []
    arrived = threading.Event()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            if got[-1]["events"][0]["target"].get("tag"):  # the manifest push (blobs first)
                arrived.set()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{hook.server_address[1]}/events"
    conf = _setup(tmp_path, "basic", f'[notifications]\nendpoints = ["{url}"]\n')
    reg = start_registry(tmp_path, "--config", str(conf))
    try:
        src = tmp_path / "src"
        digest = make_oci_layout(src, "hooked", b"hook\n")
        ok(skopeo(skopeo_env, "copy", "--dest-tls-verify=false", "--dest-creds",
                  "alice:alice-pw", f"oci:{src}:hooked",
                  f"docker://{reg.hostport}/hooks/app:hooked"))
        assert arrived.wait(10)
    finally:
        stop_process(reg.proc)
        hook.shutdown()
        hook.server_close()
    event = next(b["events"][0] for b in got if b["events"][0]["target"].get("tag"))
    assert event["action"] == "push" and event["actor"] == {"name": "alice"}
    assert event["target"]["digest"] == digest and event["target"]["tag"] == "hooked"
    assert event["target"]["repository"] == "hooks/app"
