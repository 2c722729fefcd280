"""After a push, the image is known as ``repo@<pushed manifest digest>``: RepoDigests
shows that digest for the repository (not the local manifest's), and a pull of that
reference is up to date at once. A real push to ketch's registry on loopback."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ketch.image import reference
from ketch.registry.storage import InMemoryDriver
from tests.unit.test_engine_images import Env
from tests.unit.test_registry_helpers import Server, serve

pytestmark = pytest.mark.skipif(not os.path.exists("/bin/busybox"),
                                reason="needs busybox-static")


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


@pytest.fixture
def registry() -> Iterator[Server]:
    yield from serve(InMemoryDriver())


def statuses(messages: list[dict[str, Any]]) -> list[str]:
    return [str(m.get("status", "")) for m in messages]


def pushed_digest(messages: list[dict[str, Any]]) -> str:
    (aux,) = [m["aux"] for m in messages if "aux" in m]
    return str(aux["Digest"])


def served_digest(registry: Server, repo: str, tag: str) -> str:
    c = registry.client()
    try:
        r = c.request("HEAD", f"/v2/{repo}/manifests/{tag}",
                      headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"
                                         ", application/vnd.oci.image.manifest.v1+json"})
    finally:
        c.close()
    assert r.status == 200, r
    return r.headers["docker-content-digest"]


def test_push_records_the_pushed_digest(env: Env, registry: Server) -> None:
    host = f"127.0.0.1:{registry.port}"
    repo = f"{host}/team/plain"
    image_id = env.imp(f"{repo}:v1")  # an uncompressed layer: gzip'd on the way out
    local = env.store.get(f"{repo}:v1").target.digest
    assert env.svc.inspect(image_id)["RepoDigests"] == [f"{repo}@{local}"]  # before

    digest = pushed_digest(env.svc.push(repo, "v1"))
    assert digest != str(local)
    assert served_digest(registry, "team/plain", "v1") == digest
    info = env.svc.inspect(f"{repo}:v1")
    assert info["RepoDigests"] == [f"{repo}@{digest}"]
    assert info["RepoTags"] == [f"{repo}:v1"]
    [summary] = [s for s in env.svc.list() if s["Id"] == image_id]
    assert summary["RepoDigests"] == [f"{repo}@{digest}"]
    assert env.svc.resolve(f"{repo}@{digest}").id == image_id

    # pushing again, and a second tag of the same repository: one digest, listed once
    env.svc.tag(image_id, repo, "v2")
    assert pushed_digest(env.svc.push(repo, "v2")) == digest
    assert pushed_digest(env.svc.push(repo, "v1")) == digest
    info = env.svc.inspect(image_id)
    assert info["RepoDigests"] == [f"{repo}@{digest}"]
    assert info["RepoTags"] == [f"{repo}:v1", f"{repo}:v2"]

    # another repository without a pushed digest keeps the local target's digest
    env.svc.tag(image_id, "local/only", "x")
    assert sorted(env.svc.inspect(image_id)["RepoDigests"]) == \
        sorted([f"local/only@{local}", f"{repo}@{digest}"])


def test_pull_of_the_pushed_digest_is_up_to_date(env: Env, registry: Server) -> None:
    host = f"127.0.0.1:{registry.port}"
    repo = f"{host}/team/plain"
    image_id = env.imp(f"{repo}:v1")
    digest = pushed_digest(env.svc.push(repo, "v1"))
    blobs = {str(i.digest) for i in env.content.walk()}

    out = env.svc.pull(f"{repo}@{digest}")
    said = statuses(out)
    assert said[-2:] == [f"Digest: {digest}", f"Status: Image is up to date for {repo}@{digest}"]
    assert not [s for s in said if s in ("Downloading", "Pull complete", "Pulling fs layer")]
    assert {str(i.digest) for i in env.content.walk()} == blobs  # nothing fetched
    assert env.svc.resolve(f"{repo}@{digest}").id == image_id
    assert ("pull", f"{repo}@{digest}") in env.actions()

    # a digest the registry does not have: the pull fails as before, nothing recorded
    missing = "sha256:" + hashlib.sha256(b"no such manifest").hexdigest()
    with pytest.raises(Exception, match="not found"):
        env.svc.pull(f"{repo}@{missing}")
    assert [r.name for r in env.store.list() if missing in r.name] == []


def test_pushed_name_is_not_recorded_for_a_removed_image(env: Env, registry: Server) -> None:
    repo = f"127.0.0.1:{registry.port}/team/gone"
    image_id = env.imp(f"{repo}:v1")
    rec = env.store.get(f"{repo}:v1")
    env.svc.remove(f"{repo}:v1")
    assert image_id not in {r.id for r in env.store.list()}
    digest = "sha256:" + "ab" * 32
    env.svc._record_pushed(rec, reference.normalize(f"{repo}@{digest}"))
    assert image_id not in {r.id for r in env.store.list()}


def test_pushed_name_keeps_a_pulled_target(env: Env, registry: Server) -> None:
    """A ``repo@digest`` name from a pull by digest points at the registry's manifest
    (its blobs are all here); recording the same name after a push leaves it so."""
    bb = env.busybox
    repo = f"127.0.0.1:{registry.port}/team/bb"
    pinned = reference.normalize(f"{repo}@{bb.target.digest}")
    env.svc.tag("busybox", repo, "v1")
    env.store.put(str(pinned), bb.target)
    before = env.store.get(str(pinned))
    env.svc._record_pushed(env.store.get(f"{repo}:v1"), pinned)
    assert env.store.get(str(pinned)) == before
    assert sorted(env.svc.inspect(bb.id)["RepoDigests"]) == \
        sorted([f"busybox@{bb.target.digest}", f"{repo}@{bb.target.digest}"])


# dockerd's rmi rules for digest names (daemon/images/image_delete.go): the last tag of a
# repository takes the repository's digest names with it, and an image ID removes one tag
# plus digest names of that repository without force.


def test_rmi_by_id_removes_the_pushed_names(env: Env, registry: Server) -> None:
    repo = f"127.0.0.1:{registry.port}/team/byid"
    image_id = env.imp(f"{repo}:v1")
    digest = pushed_digest(env.svc.push(repo, "v1"))
    assert env.svc.remove(image_id[7:19]) == [
        {"Untagged": f"{repo}:v1"}, {"Untagged": f"{repo}@{digest}"}, {"Deleted": image_id}]
    assert image_id not in {r.id for r in env.store.list()}


def test_rmi_of_a_repository_last_tag_drops_its_digest_names(env: Env,
                                                              registry: Server) -> None:
    repo = f"127.0.0.1:{registry.port}/team/last"
    image_id = env.imp(f"{repo}:v1")
    env.svc.tag(image_id, "elsewhere/app", "x")  # keeps the image
    env.svc.tag(image_id, repo, "v2")
    digest = pushed_digest(env.svc.push(repo, "v1"))
    assert env.svc.remove(f"{repo}:v1") == [{"Untagged": f"{repo}:v1"}]  # v2 is left
    assert f"{repo}@{digest}" in env.svc.inspect(image_id)["RepoDigests"]
    assert env.svc.remove(f"{repo}:v2") == [{"Untagged": f"{repo}:v2"},
                                            {"Untagged": f"{repo}@{digest}"}]
    info = env.svc.inspect(image_id)
    assert info["RepoTags"] == ["elsewhere/app:x"]
    assert [d for d in info["RepoDigests"] if d.startswith(repo)] == []
