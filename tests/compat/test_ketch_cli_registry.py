"""``ketch pull/push/login/logout`` against a private ketchd and Debian's docker-registry.

The registries and their fixtures are those of ``test_docker_pull_push.py`` (inside the
ketchd's throwaway network namespace, 127.0.0.1:<random port>, one with htpasswd auth);
the ketch CLI talks to ketchd over its unix socket, with its own credential file
(``$KETCH_CONFIG``) in a temp directory. skopeo is the independent check of what
reached the registry. Output is not a terminal, so progress comes as one line per
layer and status change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.compat.conftest import Ketchd
from tests.compat.test_docker_pull_push import (  # noqa: F401 - fixtures used by name
    REGISTRY,
    Registry,
    auth_registry,
    ok,
    registry,
    skopeo_digest,
)

pytestmark = [
    pytest.mark.skipif(not os.path.exists(REGISTRY), reason="needs docker-registry"),
    pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="needs busybox-static"),
]


def ketch(d: Ketchd, cfg: Path, *args: str, stdin: str | None = None
          ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "KETCH_HOST")}
    env.update(KETCH_HOST=d.url, KETCH_CONFIG=str(cfg))
    return subprocess.run([sys.executable, "-m", "ketch.cmd.ketch", *args], env=env,
                          input=stdin, capture_output=True, text=True, timeout=120,
                          check=False)


def test_push_then_pull_shows_progress_and_digest(ketchd_busybox: Ketchd,
                                                  registry: Registry,  # noqa: F811
                                                  tmp_path: Path) -> None:
    d = ketchd_busybox
    name = f"{registry.host}/cli/busybox"
    ok(ketch(d, tmp_path, "tag", "busybox:latest", f"{name}:latest"))
    out = ok(ketch(d, tmp_path, "push", f"{name}:latest"))
    assert f"The push refers to repository [{name}]" in out, out
    lines = out.splitlines()
    assert [x for x in lines if x.endswith(": Preparing")], out
    assert [x for x in lines if x.endswith((": Pushed", ": Layer already exists",
                                            ": Mounted from x/busybox"))], out
    digest = next(x for x in lines if x.startswith("latest: digest: ")).split()[2]
    assert skopeo_digest(d, f"{name}:latest") == digest
    again = ok(ketch(d, tmp_path, "push", f"{name}:latest"))
    assert ": Layer already exists" in again and ": Pushed" not in again, again

    image_id = ok(ketch(d, tmp_path, "image", "inspect", "-f", "{{.Id}}",
                        f"{name}:latest")).strip()
    try:
        ok(ketch(d, tmp_path, "rmi", "-f", image_id))  # every name: the layer comes again
        pulled = ok(ketch(d, tmp_path, "pull", name))  # no tag: latest, said so
        lines = pulled.splitlines()
        assert lines[0] == "Using default tag: latest", pulled
        assert f"latest: Pulling from {name}" in lines, pulled
        assert [x for x in lines if x.endswith(": Pull complete")], pulled
        assert f"Digest: {digest}" in lines
        assert f"Status: Downloaded newer image for {name}:latest" in lines
        assert ok(ketch(d, tmp_path, "image", "inspect", "-f", "{{.Id}}",
                        f"{name}:latest")).strip() == image_id
        up = ok(ketch(d, tmp_path, "pull", f"{name}:latest"))
        assert f"Status: Image is up to date for {name}:latest" in up
        quiet = ok(ketch(d, tmp_path, "pull", "-q", f"{name}@{digest}"))
        assert quiet.strip() == f"{name}@{digest}"
    finally:
        ok(ketch(d, tmp_path, "tag", image_id, "busybox:latest"))


def test_errors_are_clear(ketchd_busybox: Ketchd, registry: Registry,  # noqa: F811
                          tmp_path: Path) -> None:
    d = ketchd_busybox
    r = ketch(d, tmp_path, "pull", f"{registry.host}/cli/nothing:v9")
    assert r.returncode != 0
    assert "pull access denied for" in r.stderr or "manifest for" in r.stderr, r.stderr
    r = ketch(d, tmp_path, "pull", f"{registry.host}/x/busybox:nope")
    assert r.returncode != 0
    assert f"manifest for {registry.host}/x/busybox:nope not found" in r.stderr, r.stderr
    r = ketch(d, tmp_path, "push", f"{registry.host}/cli/never-tagged:v1")
    assert r.returncode != 0
    assert "does not exist locally" in r.stderr or "No such image" in r.stderr, r.stderr
    r = ketch(d, tmp_path, "tag", "busybox:latest", "127.0.0.1:9/cli/nowhere:v1")
    ok(r)
    r = ketch(d, tmp_path, "push", "127.0.0.1:9/cli/nowhere:v1")  # nothing listens
    assert r.returncode != 0
    assert "127.0.0.1:9" in r.stdout + r.stderr, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    ok(ketch(d, tmp_path, "rmi", "127.0.0.1:9/cli/nowhere:v1"))


def test_login_push_pull_logout(ketchd_busybox: Ketchd, auth_registry: Registry,  # noqa: F811
                                tmp_path: Path) -> None:
    d = ketchd_busybox
    host = auth_registry.host
    cfg_file = tmp_path / "config.json"
    bad = ketch(d, tmp_path, "login", "-u", "alice", "-p", "wrong", host)
    assert bad.returncode != 0
    if auth_registry.kind == "ketch":  # its token server refuses: its words
        assert "unauthorized: invalid username or password" in bad.stderr, bad.stderr
    else:  # Basic auth: dockerd's wording
        assert f"login attempt to http://{host}/v2/ failed with status: 401 Unauthorized" \
            in bad.stderr, bad.stderr
    assert not cfg_file.exists() or host not in json.loads(cfg_file.read_text()).get(
        "auths", {})
    name = f"{host}/cli/busybox:v1"
    ok(ketch(d, tmp_path, "tag", "busybox:latest", name))
    denied = ketch(d, tmp_path, "push", name)
    assert denied.returncode != 0
    assert "unauthorized" in (denied.stdout + denied.stderr).lower(), denied

    out = ok(ketch(d, tmp_path, "login", "-u", "alice", "--password-stdin", host,
                   stdin="s3cret\n"))
    assert "Login Succeeded" in out
    auths = json.loads(cfg_file.read_text())["auths"]
    assert host in auths and auths[host].get("auth")
    pushed = ok(ketch(d, tmp_path, "push", name))
    digest = next(x for x in pushed.splitlines() if x.startswith("v1: digest: ")).split()[2]
    assert skopeo_digest(d, name, "--creds", "alice:s3cret") == digest
    ok(ketch(d, tmp_path, "rmi", name))
    pulled = ok(ketch(d, tmp_path, "pull", name))
    assert f"Digest: {digest}" in pulled

    out = ok(ketch(d, tmp_path, "logout", host))
    assert f"Removing login credentials for {host}" in out
    assert host not in json.loads(cfg_file.read_text()).get("auths", {})
    assert f"Not logged in to {host}" in ok(ketch(d, tmp_path, "logout", host))
    ok(ketch(d, tmp_path, "rmi", name))
    anon = ketch(d, tmp_path, "pull", name)
    assert anon.returncode != 0
    assert "pull access denied" in anon.stderr or "unauthorized" in anon.stderr.lower(), \
        anon.stderr
