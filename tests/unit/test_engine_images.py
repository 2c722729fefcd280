"""ImageService over a real content store, native snapshots and a bootstrap busybox image:
Docker's shapes, filters, names, removal rules and messages, garbage, import/commit,
load/save and events."""

from __future__ import annotations

import gzip
import io
import json
import os
import socket
import tarfile
import threading
import time
from pathlib import Path

import pytest

from ketch.content.local import LocalContentStore
from ketch.engine.events import EventBus
from ketch.engine.images import DANGLING_REPO, ImageService
from ketch.errors import Conflict, InvalidArgument, KetchError, NotFound
from ketch.image.bootstrap import bootstrap_busybox
from ketch.image.store import ImageStore
from ketch.image.unpack import chain_ids
from ketch.snapshot.native import NativeSnapshotter

pytestmark = pytest.mark.skipif(not os.path.exists("/bin/busybox"),
                                reason="needs busybox-static")


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


class Env:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.content = LocalContentStore(root / "content")
        self.store = ImageStore(str(root / "images"), self.content)
        self.snapshotter = NativeSnapshotter(str(root / "snapshots"))
        self.events = EventBus()
        self.svc = ImageService(self.store, self.content, self.snapshotter, self.events)
        self.busybox = bootstrap_busybox(self.store, self.content)
        self.users: dict[str, list[str]] = {}
        self.running: dict[str, list[str]] = {}
        self.svc.in_use = lambda image_id: self.users.get(image_id, [])
        self.svc.running = lambda image_id: self.running.get(image_id, [])

    def imp(self, repo: str | None = None, files: dict[str, bytes] | None = None,
            changes: list[str] | None = None) -> str:
        data = tar_of(files or {"file": repo.encode() if repo else b"anon"})
        return self.svc.import_image(io.BytesIO(data), repo, None, changes or [])

    def blobs(self) -> set[str]:
        return {str(i.digest) for i in self.content.walk()}

    def tags(self) -> list[list[str]]:
        return [i["RepoTags"] for i in self.svc.list(all=True)]

    def actions(self) -> list[tuple[str, str]]:
        return [(e.action, e.attributes.get("name", "")) for e in self.events.history()]


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def test_list_and_inspect_shapes(env: Env) -> None:
    [s] = env.svc.list()
    bb = env.busybox
    assert s == {"Id": bb.id, "ParentId": "", "RepoTags": ["busybox:latest"],
                 "RepoDigests": [f"busybox@{bb.target.digest}"], "Created": s["Created"],
                 "Size": s["Size"], "SharedSize": -1, "Labels": {}, "Containers": -1}
    assert s["Size"] > 1_000_000 and s["Created"] == int(os.stat("/bin/busybox").st_mtime)
    info = env.svc.inspect("busybox")
    assert info["Id"] == bb.id and info["RepoTags"] == ["busybox:latest"]
    assert info["Config"]["Cmd"] == ["sh"] and info["Os"] == "linux"
    assert info["RootFS"]["Type"] == "layers" and len(info["RootFS"]["Layers"]) == 1
    assert info["GraphDriver"]["Name"] == "overlayfs" and info["Size"] == s["Size"]
    assert info["Metadata"]["LastTagTime"].endswith("Z")
    for spelling in (bb.id, bb.id[7:19], "docker.io/library/busybox:latest"):
        assert env.svc.inspect(spelling)["Id"] == bb.id
    with pytest.raises(NotFound, match=r"^No such image: nope:1$"):
        env.svc.inspect("nope:1")
    hist = env.svc.history("busybox")
    assert hist == [{"Id": bb.id, "Created": s["Created"], "CreatedBy":
                     "ketch image bootstrap busybox", "Tags": ["busybox:latest"],
                     "Size": s["Size"], "Comment": ""}]
    assert env.svc.search("busybox") == []


def test_filters(env: Env) -> None:
    a = env.imp("app/a", changes=["LABEL tier=web color=red"])
    time.sleep(1.1)  # Created has one-second resolution
    b = env.imp("app/b", changes=["LABEL tier=db"])
    anon = env.imp(None)
    ids = lambda **f: [i["Id"] for i in env.svc.list(filters=f)]  # noqa: E731
    assert ids() == [anon, b, a, env.busybox.id]  # newest first
    assert ids(dangling=["true"]) == [anon]
    assert ids(dangling=["false"]) == [b, a, env.busybox.id]
    assert ids(label=["tier"]) == [b, a]
    assert ids(label=["tier=web", "color=red"]) == [a]
    assert ids(reference=["app/*"]) == [b, a]
    assert ids(reference=["busy*:latest"]) == [env.busybox.id]
    assert ids(reference=["*"]) == [env.busybox.id]  # "*" does not cross "/"
    assert ids(before=["app/b"]) == [a, env.busybox.id]
    assert ids(since=["app/a"]) == [anon, b] or ids(since=["app/a"]) == [b, anon]
    assert ids(until=["1h"]) == [env.busybox.id]
    env.svc.tag("app/a", "app/c", "x")
    [s] = env.svc.list(filters={"reference": ["app/c*"]})
    assert s["RepoTags"] == ["app/c:x"]  # only the matching names
    with pytest.raises(InvalidArgument, match=r"^invalid filter 'color'$"):
        env.svc.list(filters={"color": ["red"]})
    with pytest.raises(InvalidArgument, match="invalid filter 'dangling=maybe'"):
        env.svc.list(filters={"dangling": ["maybe"]})
    shared = env.svc.list(shared_size=True)
    assert all(s["SharedSize"] >= 0 for s in shared)


def test_tag_moves_names_and_leaves_dangling_images(env: Env) -> None:
    a, b = env.imp("app"), env.imp("other")
    env.svc.tag("other", "app", "latest")  # app:latest moves from a to b
    assert env.svc.inspect("app")["Id"] == b
    old = env.svc.inspect(a)
    assert old["RepoTags"] == [] and old["RepoDigests"] == []
    assert [i["Id"] for i in env.svc.list(filters={"dangling": ["true"]})] == [a]
    assert all(DANGLING_REPO not in t for tags in env.tags() for t in tags)
    env.svc.tag(a, "again", "1")  # a tag again: no longer dangling
    assert env.svc.list(filters={"dangling": ["true"]}) == []
    assert ("tag", "app:latest") in env.actions()
    with pytest.raises(InvalidArgument, match="refusing to create a tag with a digest"):
        env.svc.tag("app", f"x@{env.busybox.target.digest}")
    with pytest.raises(InvalidArgument, match="invalid tag format"):
        env.svc.tag("app", "x", "bad tag")
    with pytest.raises(InvalidArgument, match="cannot specify 64-byte hexadecimal"):
        env.svc.tag("app", a.removeprefix("sha256:"))
    with pytest.raises(NotFound):
        env.svc.tag("missing", "x")


def test_remove_untags_then_deletes_and_collects_garbage(env: Env) -> None:
    bb = env.busybox
    before = env.blobs()
    env.svc.tag("busybox", "mine", "1")
    with pytest.raises(Conflict) as e:
        env.svc.remove(bb.id)
    assert str(e.value) == (f"conflict: unable to delete {bb.id[7:19]} (must be forced) - "
                            f"image is referenced in multiple repositories")
    assert env.svc.remove("mine:1") == [{"Untagged": "mine:1"}]
    assert env.blobs() == before
    # the image's layer was unpacked: a committed snapshot keyed by its chain ID
    chain = chain_ids(env.store.config(bb)["rootfs"]["diff_ids"])[-1]
    env.snapshotter.prepare("extract", None)
    env.snapshotter.commit(chain, "extract")
    assert env.svc.remove("busybox") == [{"Untagged": "busybox:latest"}, {"Deleted": bb.id}]
    assert env.blobs() == set() and env.store.list() == []
    assert [i.key for i in env.snapshotter.walk()] == []
    assert ("untag", bb.id) in env.actions() and ("delete", bb.id) in env.actions()


def test_remove_by_id_with_force_removes_every_name(env: Env) -> None:
    env.svc.tag("busybox", "a")
    env.svc.tag("busybox", "b", "2")
    items = env.svc.remove(env.busybox.id[7:19], force=True)
    assert items == [{"Untagged": "a:latest"}, {"Untagged": "b:2"},
                     {"Untagged": "busybox:latest"}, {"Deleted": env.busybox.id}]


def test_images_used_by_containers(env: Env) -> None:
    bb = env.busybox.id
    layer_snapshot = chain_ids(env.store.config(env.busybox)["rootfs"]["diff_ids"])[-1]
    env.snapshotter.prepare("x", None)
    env.snapshotter.commit(layer_snapshot, "x")
    env.snapshotter.prepare("c0ffee", layer_snapshot)  # the container's rootfs
    env.users[bb] = ["c0ffee" * 10 + "abcd"]
    with pytest.raises(Conflict) as e:
        env.svc.remove("busybox")
    assert str(e.value) == ('conflict: unable to remove repository reference "busybox" '
                            f"(must force) - container c0ffeec0ffee is using its referenced "
                            f"image {bb[7:19]}")
    env.svc.tag("busybox", "second")  # with another name, untagging one is fine
    assert env.svc.remove("busybox") == [{"Untagged": "busybox:latest"}]
    with pytest.raises(Conflict) as e:
        env.svc.remove(bb)
    assert str(e.value) == (f"conflict: unable to delete {bb[7:19]} (must be forced) - "
                            f"image is being used by stopped container c0ffeec0ffee")
    env.running[bb] = env.users[bb]
    with pytest.raises(Conflict) as e:
        env.svc.remove(bb, force=True)
    assert str(e.value) == (f"conflict: unable to delete {bb[7:19]} (cannot be forced) - "
                            f"image is being used by running container c0ffeec0ffee")
    assert env.svc.prune({"dangling": ["false"]})["ImagesDeleted"] is None
    # forced by name while running: the name goes, the image stays (dangling)
    assert env.svc.remove("second", force=True) == [{"Untagged": "second:latest"}]
    assert env.svc.inspect(bb)["RepoTags"] == []
    assert env.svc.prune()["ImagesDeleted"] is None  # used: not pruned
    env.running.clear()
    # a stopped user does not stop a forced removal; the layer under its rootfs stays
    assert env.svc.remove(bb, force=True) == [{"Deleted": bb}]
    assert {i.key for i in env.snapshotter.walk()} == {layer_snapshot, "c0ffee"}
    assert env.svc.usage()["Images"] == []


def test_prune(env: Env) -> None:
    keep = env.imp("keep", changes=["LABEL keep=yes"])
    first = env.imp("x")
    env.svc.tag("keep", "x")  # x moves: its image becomes dangling
    assert [s["Id"] for s in env.svc.list(filters={"dangling": ["1"]})] == [first]
    out = env.svc.prune()
    assert out["ImagesDeleted"] == [{"Deleted": first}] and out["SpaceReclaimed"] > 0
    assert env.svc.prune() == {"ImagesDeleted": None, "SpaceReclaimed": 0}
    env.users[env.busybox.id] = ["c" * 64]
    out = env.svc.prune({"dangling": ["false"], "label!": ["keep=yes"]})
    assert out["ImagesDeleted"] is None  # busybox is used, keep is excluded by label
    out = env.svc.prune({"dangling": ["false"], "label": ["keep"]})
    assert {"Deleted": keep} in out["ImagesDeleted"]
    assert {"Untagged": "keep:latest"} in out["ImagesDeleted"]
    assert env.tags() == [["busybox:latest"]]
    with pytest.raises(InvalidArgument, match="invalid filter 'reference'"):
        env.svc.prune({"reference": ["x"]})


def test_import(env: Env) -> None:
    data = gzip.compress(tar_of({"bin/hello": b"#!/bin/sh\necho hi\n"}))
    image_id = env.svc.import_image(io.BytesIO(data), "local/hello:v1", None,
                                    ['CMD ["/bin/hello"]', "ENV MODE=test"], "from a test",
                                    "linux/arm64/v8")
    info = env.svc.inspect("local/hello:v1")
    assert info["Id"] == image_id and info["Comment"] == "from a test"
    assert info["Config"] == {"Cmd": ["/bin/hello"], "Env": ["MODE=test"]}
    assert (info["Architecture"], info["Variant"]) == ("arm64", "v8")
    assert env.svc.history(image_id)[0]["Comment"] == "from a test"
    assert ("import", image_id) in env.actions()
    blobs = env.blobs()
    with pytest.raises(InvalidArgument, match="run is not a valid change command"):
        env.svc.import_image(io.BytesIO(data), "bad", None, ["RUN x"])
    with pytest.raises(InvalidArgument, match="invalid tar archive"):
        env.svc.import_image(io.BytesIO(b"\x00garbage" * 200), "bad")
    with pytest.raises(InvalidArgument, match="only linux"):
        env.svc.import_image(io.BytesIO(data), "bad", platform="windows/amd64")
    assert env.blobs() == blobs and "bad:latest" not in str(env.tags())


def test_commit_parent_and_children(env: Env) -> None:
    bb = env.busybox.id
    cfg = dict(env.store.config(env.busybox)["config"], Cmd=["sh", "-c", "echo > /x"])
    child = env.svc.commit(io.BytesIO(tar_of({"x": b"\n"})), bb, cfg, "snap", "1",
                           "a comment", "me <me@x>", ["ENV ADDED=1"])
    info = env.svc.inspect("snap:1")
    assert info["Id"] == child and info["Parent"] == bb
    assert info["Author"] == "me <me@x>" and info["Comment"] == "a comment"
    assert info["Config"]["Env"][-1] == "ADDED=1" and len(info["RootFS"]["Layers"]) == 2
    hist = env.svc.history("snap:1")
    assert [h["CreatedBy"] for h in hist] == ["sh -c echo > /x", "ketch image bootstrap busybox"]
    assert hist[0]["Tags"] == ["snap:1"] and hist[1]["Id"] == "<missing>"
    assert env.svc.list()[0]["ParentId"] == bb
    with pytest.raises(Conflict, match=r"\(cannot be forced\) - image has dependent child"):
        env.svc.remove(bb, force=True)
    # untagging the parent keeps it as an intermediate image: hidden without all
    assert env.svc.remove("busybox") == [{"Untagged": "busybox:latest"}]
    assert [s["Id"] for s in env.svc.list()] == [child]
    assert bb in [s["Id"] for s in env.svc.list(all=True)]
    assert env.svc.prune() == {"ImagesDeleted": None, "SpaceReclaimed": 0}
    # deleting the child prunes the untagged parent too (unless noprune)
    assert env.svc.remove("snap:1") == [{"Untagged": "snap:1"}, {"Deleted": child},
                                        {"Deleted": bb}]
    assert env.blobs() == set()


def test_commit_without_name_is_dangling(env: Env) -> None:
    image_id = env.svc.commit(io.BytesIO(tar_of({})), None, {"Cmd": ["true"]})
    assert env.svc.inspect(image_id)["RepoTags"] == []
    assert [s["Id"] for s in env.svc.list(filters={"dangling": ["true"]})] == [image_id]


def test_save_load_round_trip_and_messages(env: Env, tmp_path: Path) -> None:
    app = env.imp("app")
    out = io.BytesIO()
    env.svc.save(["busybox", "app:latest", app], out)
    other = Env(tmp_path / "other")
    other.svc.remove("busybox")
    out.seek(0)
    assert other.svc.load(out) == ["Loaded image: busybox:latest", "Loaded image: app:latest"]
    assert other.svc.inspect("app")["Id"] == app
    assert other.blobs() == env.blobs()
    # a name that moves to the loaded image leaves the old one dangling, and says so
    old = other.imp("busybox")
    out.seek(0)
    messages = other.svc.load(out)
    assert messages[0] == (f"The image busybox:latest already exists, renaming the old one "
                           f"with ID {old} to empty string")
    unnamed = io.BytesIO()
    env.svc.save([env.busybox.id], unnamed)
    unnamed.seek(0)
    third = Env(tmp_path / "third")
    third.svc.remove("busybox")
    assert third.svc.load(unnamed) == [f"Loaded image ID: {env.busybox.id}"]
    assert third.svc.inspect(env.busybox.id)["RepoTags"] == []
    assert ("save", app) in env.actions() and ("load", app) in other.actions()
    with pytest.raises(InvalidArgument, match="invalid archive"):
        third.svc.load(io.BytesIO(b"nonsense"))
    with pytest.raises(NotFound, match="No such image: ghost"):
        env.svc.save(["ghost"], io.BytesIO())


def test_pull_from_a_registry_that_does_not_answer(env: Env) -> None:
    with socket.socket() as s:  # a loopback port with no one listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(KetchError) as e:
        env.svc.pull(f"127.0.0.1:{port}/someone/thing", "1.0")
    assert f"127.0.0.1:{port}" in str(e.value)
    assert [i["RepoTags"] for i in env.svc.list()] == [["busybox:latest"]]  # no half image


def test_usage(env: Env) -> None:
    env.users[env.busybox.id] = ["a" * 64, "b" * 64]
    df = env.svc.usage()
    [img] = df["Images"]
    assert img["Containers"] == 2 and img["SharedSize"] == 0
    assert df["LayersSize"] == img["Size"]


def test_concurrent_tags_and_removes(env: Env) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(5):
                env.svc.tag("busybox", f"t{n}", str(i))
            for i in range(4):
                env.svc.remove(f"t{n}:{i}")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(env.tags()[0]) == ["busybox:latest", *[f"t{n}:4" for n in range(6)]]
    assert json.loads(json.dumps(env.svc.list()))  # plain JSON throughout
