"""VolumeService on plain-directory local volumes (no root): Docker's semantics for
create, inspect, list filters, remove, prune, usage, holders across a restart,
events, copy-up and ``rm -v``; plus the router's request checks."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from ketch.api.routers.volumes import parse_create_body
from ketch.engine.events import EventBus
from ketch.engine.volumes import ANONYMOUS_LABEL, VolumeService, dir_size
from ketch.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from ketch.volume import Volume
from ketch.volume.local import LocalDriver


class PlainDriver:
    """A driver that keeps no record of holders (as a plugin proxy would not)."""

    def __init__(self, root: str) -> None:
        self._d = LocalDriver(root)

    def create(self, name: str, opts: Mapping[str, str] | None = None,
               labels: Mapping[str, str] | None = None) -> Volume:
        return self._d.create(name, opts, labels)

    def remove(self, name: str) -> None:
        self._d.remove(name)

    def get(self, name: str) -> Volume:
        return self._d.get(name)

    def list(self) -> list[Volume]:
        return self._d.list()

    def mount(self, name: str, mount_id: str) -> str:
        return self._d.mount(name, mount_id)

    def unmount(self, name: str, mount_id: str) -> None:
        self._d.unmount(name, mount_id)

    def path(self, name: str) -> str | None:
        return self._d.path(name)

    def capabilities(self) -> dict[str, str]:
        return {"Scope": "local"}


@pytest.fixture
def root(tmp_path: Path) -> str:
    return str(tmp_path / "volumes")


@pytest.fixture
def events() -> EventBus:
    return EventBus()


@pytest.fixture
def svc(root: str, events: EventBus) -> VolumeService:
    return VolumeService(root, events)


def volume_events(bus: EventBus) -> list[tuple[str, str, dict[str, str]]]:
    return [(e.action, e.actor_id, dict(e.attributes)) for e in bus.history()
            if e.type == "volume"]


def names(listing: dict[str, Any]) -> list[str]:
    return [v["Name"] for v in listing["Volumes"]]


# -- create / inspect ---------------------------------------------------------------


def test_create_named_returns_docker_volume(svc: VolumeService, root: str,
                                           events: EventBus) -> None:
    vol = svc.create("data", "local", {}, {"tier": "db"})
    assert vol["Name"] == "data" and vol["Driver"] == "local" and vol["Scope"] == "local"
    assert vol["Labels"] == {"tier": "db"} and vol["Options"] == {}
    assert vol["Mountpoint"] == os.path.join(os.path.realpath(root), "data", "_data")
    assert os.path.isdir(vol["Mountpoint"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", vol["CreatedAt"])
    assert "UsageData" not in vol
    assert svc.inspect("data") == vol
    assert volume_events(events) == [("create", "data", {"driver": "local"})]


def test_create_anonymous(svc: VolumeService) -> None:
    a = svc.create(None, "local", None, {"x": "1"})
    b = svc.create("", "")
    for v in (a, b):
        assert re.fullmatch(r"[0-9a-f]{64}", v["Name"])
        assert v["Labels"][ANONYMOUS_LABEL] == ""
    assert a["Labels"]["x"] == "1" and a["Name"] != b["Name"]


def test_create_existing_same_options_returns_it_without_event(svc: VolumeService,
                                                                events: EventBus) -> None:
    first = svc.create("v1", "local", {}, {"a": "1"})
    again = svc.create("v1", "local", {}, {"b": "2"})  # labels of a repeat are ignored
    assert again == first
    assert [a for a, _, _ in volume_events(events)] == ["create"]


def test_create_existing_with_other_options_or_driver_conflicts(svc: VolumeService,
                                                                tmp_path: Path) -> None:
    svc.create("v1")
    with pytest.raises(Conflict, match="different options"):
        svc.create("v1", "local", {"type": "tmpfs", "device": "tmpfs"})

    svc.drivers["other"] = PlainDriver(str(tmp_path / "other"))
    with pytest.raises(Conflict) as err:
        svc.create("v1", "other")
    assert "driver 'local' already has volume 'v1'" in str(err.value)


def test_create_errors(svc: VolumeService) -> None:
    with pytest.raises(NotFound, match='plugin "nope" not found'):
        svc.create("v1", "nope")
    with pytest.raises(InvalidArgument, match="too short"):
        svc.create("x")
    with pytest.raises(InvalidArgument, match="invalid characters"):
        svc.create("a/b")
    with pytest.raises(InvalidArgument, match='invalid option: "size"'):
        svc.create("v1", "local", {"size": "10m"})


@pytest.mark.parametrize("name", ["nothere", "x", "a b"])
def test_unknown_volume_in_dockers_words(svc: VolumeService, name: str) -> None:
    with pytest.raises(NotFound) as err:
        svc.inspect(name)
    assert str(err.value) == f"get {name}: no such volume"
    with pytest.raises(NotFound) as err:
        svc.remove(name)
    assert str(err.value) == f"get {name}: no such volume"
    with pytest.raises(NotFound):
        svc.users(name)
    svc.remove(name, force=True)  # force: nothing to do is fine


# -- list filters ---------------------------------------------------------------------


@pytest.fixture
def populated(svc: VolumeService) -> VolumeService:
    svc.create("web-data", labels={"app": "web", "tier": "front"})
    svc.create("web-logs", labels={"app": "web"})
    svc.create("db-data", labels={"app": "db"})
    svc.acquire("db-data", "c1")
    return svc


def test_list_all_sorted(populated: VolumeService) -> None:
    out = populated.list()
    assert names(out) == ["db-data", "web-data", "web-logs"] and out["Warnings"] == []
    assert names(populated.list({})) == names(out)


@pytest.mark.parametrize("filters, expected", [
    ({"name": ["web"]}, ["web-data", "web-logs"]),
    ({"name": ["data"]}, ["db-data", "web-data"]),
    ({"name": ["db-data", "logs"]}, ["db-data", "web-logs"]),
    ({"name": ["^web-d"]}, ["web-data"]),
    ({"name": ["zzz"]}, []),
    ({"driver": ["local"]}, ["db-data", "web-data", "web-logs"]),
    ({"driver": ["other"]}, []),
    ({"label": ["app"]}, ["db-data", "web-data", "web-logs"]),
    ({"label": ["app=web"]}, ["web-data", "web-logs"]),
    ({"label": ["app=web", "tier"]}, ["web-data"]),
    ({"label": ["app=we"]}, []),
    ({"dangling": ["true"]}, ["web-data", "web-logs"]),
    ({"dangling": ["1"]}, ["web-data", "web-logs"]),
    ({"dangling": ["false"]}, ["db-data"]),
    ({"dangling": ["0"]}, ["db-data"]),
    ({"dangling": ["true"], "label": ["app=web"], "name": ["logs"]}, ["web-logs"]),
])
def test_list_filters(populated: VolumeService, filters: dict[str, list[str]],
                      expected: list[str]) -> None:
    assert names(populated.list(filters)) == expected


@pytest.mark.parametrize("filters, message", [
    ({"until": ["1h"]}, "invalid filter 'until'"),
    ({"label!": ["a"]}, "invalid filter 'label!'"),
    ({"dangling": ["maybe"]}, "invalid filter 'dangling=maybe'"),
    ({"dangling": ["true", "false"]}, "invalid filter 'dangling=true,false'"),
])
def test_list_bad_filters(populated: VolumeService, filters: dict[str, list[str]],
                          message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        populated.list(filters)
    assert str(err.value) == message


# -- holders, remove ------------------------------------------------------------------


def test_acquire_release_and_remove_in_use(svc: VolumeService, events: EventBus) -> None:
    svc.create("shared")
    path = svc.acquire("shared", "c1")
    assert os.path.isdir(path) and path == svc.inspect("shared")["Mountpoint"]
    assert svc.acquire("shared", "c1") == path  # again: no second hold, no event
    svc.acquire("shared", "c2", attributes={"destination": "/data"})
    assert svc.users("shared") == ["c1", "c2"]
    with pytest.raises(Conflict) as err:
        svc.remove("shared")
    assert str(err.value) == "remove shared: volume is in use - [c1, c2]"
    with pytest.raises(Conflict):
        svc.remove("shared", force=True)
    svc.release("shared", "c1")
    svc.release("shared", "c1")  # not held any more: no-op
    svc.release("gone", "c1")    # unknown volume: no-op
    assert svc.users("shared") == ["c2"]
    svc.release("shared", "c2")
    svc.remove("shared")
    with pytest.raises(NotFound):
        svc.inspect("shared")
    assert volume_events(events) == [
        ("create", "shared", {"driver": "local"}),
        ("mount", "shared", {"driver": "local", "container": "c1"}),
        ("mount", "shared", {"destination": "/data", "driver": "local", "container": "c2"}),
        ("unmount", "shared", {"driver": "local", "container": "c1"}),
        ("unmount", "shared", {"driver": "local", "container": "c2"}),
        ("destroy", "shared", {"driver": "local"}),
    ]


def test_acquire_creates_missing_volume(svc: VolumeService, events: EventBus) -> None:
    path = svc.acquire("fresh", "c1")
    assert svc.inspect("fresh")["Mountpoint"] == path
    assert svc.inspect("fresh")["Labels"] == {}
    assert [a for a, _, _ in volume_events(events)] == ["create", "mount"]


def test_holders_survive_a_restart(root: str) -> None:
    first = VolumeService(root, EventBus())
    first.create("kept")
    first.acquire("kept", "c1")
    again = VolumeService(root, EventBus())
    assert again.users("kept") == ["c1"]
    assert names(again.list({"dangling": ["false"]})) == ["kept"]
    with pytest.raises(Conflict, match=r"in use - \[c1\]"):
        again.remove("kept")
    assert again.prune({"all": ["true"]})["VolumesDeleted"] == []
    again.release("kept", "c1")
    again.remove("kept")


# -- prune ----------------------------------------------------------------------------


def test_prune_only_anonymous_by_default(svc: VolumeService, events: EventBus) -> None:
    named = svc.create("named")
    anon = svc.create(None)["Name"]
    busy = svc.create(None)["Name"]
    svc.acquire(busy, "c1")
    Path(svc.inspect(anon)["Mountpoint"], "blob").write_bytes(b"x" * 5000)
    assert svc.prune() == {"VolumesDeleted": [anon], "SpaceReclaimed": 5000}
    assert sorted(names(svc.list())) == sorted([named["Name"], busy])
    assert ("destroy", anon, {"driver": "local"}) in volume_events(events)
    assert volume_events(events)[-1] == ("prune", "", {"reclaimed": "5000"})


def test_prune_all_and_labels(svc: VolumeService) -> None:
    svc.create("keep-me", labels={"keep": "yes"})
    svc.create("env-dev", labels={"env": "dev"})
    svc.create("env-prod", labels={"env": "prod"})
    assert svc.prune({"all": ["true"], "label": ["env=dev"]})["VolumesDeleted"] == ["env-dev"]
    assert svc.prune({"all": ["1"], "label!": ["keep"]})["VolumesDeleted"] == ["env-prod"]
    assert svc.prune({"all": ["false"]})["VolumesDeleted"] == []
    assert names(svc.list()) == ["keep-me"]
    with pytest.raises(InvalidArgument, match="invalid filter 'name'"):
        svc.prune({"name": ["x"]})
    with pytest.raises(InvalidArgument, match="invalid filter 'all=yes'"):
        svc.prune({"all": ["yes"]})


def test_one_prune_at_a_time(svc: VolumeService) -> None:
    assert svc._prune_mu.acquire(blocking=False)  # a prune is running
    try:
        with pytest.raises(Conflict, match="a prune operation is already running"):
            svc.prune()
    finally:
        svc._prune_mu.release()


# -- usage ----------------------------------------------------------------------------


def test_dir_size_counts_like_docker(tmp_path: Path) -> None:
    d = tmp_path / "v"
    (d / "sub").mkdir(parents=True)
    (d / "a").write_bytes(b"x" * 1000)
    os.link(d / "a", d / "sub" / "hard")  # same inode: once
    (d / "sub" / "b").write_bytes(b"y" * 24)
    outside = tmp_path / "big"
    outside.write_bytes(b"z" * 100_000)
    (d / "link").symlink_to(outside)  # the link itself, not its target
    assert dir_size(str(d)) == 1000 + 24 + len(str(outside))
    assert dir_size(str(tmp_path / "missing")) == 0


def test_usage_and_inspect_with_usage(svc: VolumeService) -> None:
    svc.create("va")
    svc.create("vb")
    Path(svc.inspect("va")["Mountpoint"], "f").write_bytes(b"1234567")
    svc.acquire("vb", "c1")
    svc.acquire("vb", "c2")
    usage = {v["Name"]: v["UsageData"] for v in svc.usage()}
    assert usage == {"va": {"Size": 7, "RefCount": 0}, "vb": {"Size": 0, "RefCount": 2}}
    assert svc.inspect("va", usage=True)["UsageData"] == {"Size": 7, "RefCount": 0}


# -- copy-up, rm -v -----------------------------------------------------------------


def test_copy_up_once_into_empty_volume(svc: VolumeService, tmp_path: Path) -> None:
    src = tmp_path / "image-etc"
    (src / "conf.d").mkdir(parents=True)
    (src / "conf.d" / "x.conf").write_text("x=1")
    svc.create("cfg")
    path = svc.acquire("cfg", "c1")
    assert svc.copy_up("cfg", str(src))
    assert Path(path, "conf.d", "x.conf").read_text() == "x=1"
    (src / "new").write_text("later")
    assert not svc.copy_up("cfg", str(src))  # not empty any more: never merges
    assert not Path(path, "new").exists()
    svc.create("empty")
    svc.acquire("empty", "c1")
    assert not svc.copy_up("empty", str(tmp_path / "no-such-dir"))
    with pytest.raises(NotFound):
        svc.copy_up("nothere", str(src))


def test_copy_up_needs_a_mounted_volume(svc: VolumeService) -> None:
    svc.create("tmp", "local", {"type": "tmpfs", "device": "tmpfs"})
    with pytest.raises(FailedPrecondition, match="not mounted"):
        svc.copy_up("tmp", "/etc")


def test_remove_anonymous_of(svc: VolumeService) -> None:
    anon = svc.create(None)["Name"]
    shared_anon = svc.create(None)["Name"]
    svc.create("named")
    for n in (anon, shared_anon, "named"):
        svc.acquire(n, "c1")
    svc.acquire(shared_anon, "c2")
    removed = svc.remove_anonymous_of("c1", [anon, shared_anon, "named", "missing"])
    assert removed == [anon]
    assert svc.users(shared_anon) == ["c2"] and svc.users("named") == []
    assert sorted(names(svc.list())) == sorted([shared_anon, "named"])


# -- threads --------------------------------------------------------------------------


def test_concurrent_acquire_create_remove(svc: VolumeService) -> None:
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(15):
                svc.acquire("hot", f"c{i}-{j}")
                svc.create(f"own-{i}-{j}")
                svc.release("hot", f"c{i}-{j}")
                svc.remove(f"own-{i}-{j}")
                try:
                    svc.remove("hot")
                except (Conflict, NotFound):
                    pass
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert names(svc.list()) in ([], ["hot"])
    if names(svc.list()):
        assert svc.users("hot") == []


# -- the router's body checks -------------------------------------------------------


def test_create_body_parsing() -> None:
    body = b'{"Name":"v","Driver":"local","DriverOpts":{"type":"tmpfs"},"Labels":{"a":"b"}}'
    assert parse_create_body(body) == ("v", "local", {"type": "tmpfs"}, {"a": "b"})
    assert parse_create_body(b"") == ("", "", {}, {})
    assert parse_create_body(b'{"Name":null,"DriverOpts":null,"ClusterVolumeSpec":null}') == \
        ("", "", {}, {})


@pytest.mark.parametrize("body, message", [
    (b"{", "invalid JSON"),
    (b"[]", "expected a JSON object"),
    (b'{"Nmae":"v"}', 'unknown field "Nmae"'),
    (b'{"Name":3}', "Name must be a string"),
    (b'{"Driver":["local"]}', "Driver must be a string"),
    (b'{"Labels":{"a":1}}', "Labels must be an object of strings"),
    (b'{"DriverOpts":"type=tmpfs"}', "DriverOpts must be an object of strings"),
])
def test_create_body_errors_name_the_field(body: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_create_body(body)
    assert message in str(err.value)


def test_second_driver_without_holder_records(svc: VolumeService, tmp_path: Path,
                                              events: EventBus) -> None:
    svc.drivers["plain"] = PlainDriver(str(tmp_path / "plain"))
    svc.create("loc")
    vol = svc.create("plug", "plain", None, {"k": "v"})
    assert vol["Name"] == "plug"
    assert names(svc.list({"driver": ["plain"]})) == ["plug"]
    assert names(svc.list({"driver": ["local"]})) == ["loc"]
    svc.acquire("plug", "c1")
    assert svc.users("plug") == ["c1"]
    assert names(svc.list({"dangling": ["false"]})) == ["plug"]
    with pytest.raises(Conflict, match=r"remove plug: volume is in use - \[c1\]"):
        svc.remove("plug")
    usage = {v["Name"]: v["UsageData"] for v in svc.usage()}
    assert usage["plug"] == {"Size": -1, "RefCount": 1}
    svc.release("plug", "c1")
    assert svc.users("plug") == []
    svc.create("anon-plug", "plain", None, {ANONYMOUS_LABEL: ""})
    assert svc.prune({"all": ["true"]})["VolumesDeleted"] == ["loc"]  # local volumes only
    svc.remove("plug")
    assert ("destroy", "plug", {"driver": "plain"}) in volume_events(events)
