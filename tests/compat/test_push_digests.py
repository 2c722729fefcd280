"""After ``docker push``, the image's RepoDigests name the pushed manifest, as in dockerd.

ketchd gzips uncompressed layers on the way out, so the pushed manifest is not the
local one. The docker CLI drives a private ketchd pushing to Debian's docker-registry
(Distribution 2.8) and to ketch's own registry (the ``registry`` fixture of
test_docker_pull_push); the registry's own answer (``Docker-Content-Digest`` of a
manifest HEAD) is the independent check.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.compat.conftest import Ketchd
from tests.compat.test_docker_pull_push import (  # noqa: F401 - registry is a fixture
    REGISTRY,
    Registry,
    image_id,
    in_ns,
    ok,
    registry,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not os.path.exists(REGISTRY), reason="needs docker-registry"),
    pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="needs busybox-static"),
]

_ACCEPT = ("application/vnd.docker.distribution.manifest.v2+json, "
           "application/vnd.oci.image.manifest.v1+json")


def served_digest(d: Ketchd, reg: Registry, repo: str, tag: str) -> str:
    """``Docker-Content-Digest`` of a manifest HEAD, asked in the daemon's netns."""
    code = ("import http.client, sys\n"
            f"c = http.client.HTTPConnection('127.0.0.1', {reg.port}, timeout=10)\n"
            f"c.request('HEAD', '/v2/{repo}/manifests/{tag}', headers={{'Accept': {_ACCEPT!r}}})\n"
            "r = c.getresponse()\n"
            "print(r.status, r.getheader('Docker-Content-Digest'))\n")
    status, digest = ok(in_ns(d, [sys.executable, "-c", code])).split()
    assert status == "200", (status, digest)
    return digest


def repo_digests(d: Ketchd, name: str) -> list[str]:
    out: list[str] = json.loads(ok(d.docker("image", "inspect", "-f", "{{json .RepoDigests}}",
                                            name)))
    return out


def test_repo_digests_after_push(ketchd_busybox: Ketchd,
                                 registry: Registry) -> None:  # noqa: F811 - the fixture
    d = ketchd_busybox
    repo = f"{registry.host}/pd/app"
    name = f"{repo}:v1"
    box = f"pd-src-{registry.kind}"
    # a committed layer is stored uncompressed: the push gzips it
    ok(d.docker("run", "--name", box, "--network", "none", "busybox",
                "sh", "-c", "echo pushed-ok > /hello"))
    ok(d.docker("commit", box, name))
    ok(d.docker("rm", box))
    want_id = image_id(d, name)
    try:
        (local,) = repo_digests(d, name)  # before the push: the local manifest's digest
        out = ok(d.docker("push", name))
        digest = next(x for x in out.splitlines() if x.startswith("v1: digest: ")).split()[2]
        assert local != f"{repo}@{digest}", "the pushed manifest should differ (gzip'd layer)"

        assert repo_digests(d, name) == [f"{repo}@{digest}"]
        assert served_digest(d, registry, "pd/app", "v1") == digest
        rows = ok(d.docker("images", "--digests", "--format",
                           "{{.Repository}} {{.Tag}} {{.Digest}}")).splitlines()
        assert f"{repo} v1 {digest}" in rows, rows

        pulled = ok(d.docker("pull", f"{repo}@{digest}"))
        assert f"Digest: {digest}" in pulled, pulled
        assert "Image is up to date" in pulled, pulled
        assert not [w for w in ("Pulling fs layer", "Downloading", "Pull complete")
                    if w in pulled], pulled
        assert image_id(d, f"{repo}@{digest}") == want_id
        run = ok(d.docker("run", "--rm", "--network", "none", f"{repo}@{digest}",
                          "cat", "/hello"))
        assert run.strip() == "pushed-ok"

        again = ok(d.docker("push", name))  # the same digest, recorded once
        assert f"v1: digest: {digest}" in again
        assert repo_digests(d, name) == [f"{repo}@{digest}"]
    finally:
        d.docker("rmi", "-f", want_id)
    assert d.docker("image", "inspect", f"{repo}@{digest}").returncode != 0
