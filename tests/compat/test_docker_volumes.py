"""docker CLI, docker-py and raw requests against a private ketchd: the volume commands.

Every test names its volumes with a fresh suffix (the ketchd is shared by the
module) and prunes only what it labelled, so the tests do not see each other.
"""

from __future__ import annotations

import http.client
import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.compat.conftest import Ketchd


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self._path)
        self.sock = s


def request(d: Ketchd, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    """(status, decoded JSON body or None) of one raw request to ketchd."""
    conn = _UnixHTTPConnection(str(d.sock))
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else None
    finally:
        conn.close()


def uid() -> str:
    return uuid.uuid4().hex[:8]


def ok(d: Ketchd, *args: str) -> str:
    r = d.docker(*args)
    assert r.returncode == 0, f"docker {' '.join(args)}: {r.stderr}"
    return r.stdout


def fails(d: Ketchd, *args: str) -> str:
    r = d.docker(*args)
    assert r.returncode != 0, f"docker {' '.join(args)} succeeded: {r.stdout}"
    return r.stderr


def ls_q(d: Ketchd, *filters: str) -> set[str]:
    args = [a for f in filters for a in ("--filter", f)]
    return set(ok(d, "volume", "ls", "-q", *args).split())


# -- docker CLI -----------------------------------------------------------------------


def test_create_ls_inspect_rm(ketchd: Ketchd) -> None:
    name = f"cli-{uid()}"
    assert ok(ketchd, "volume", "create", name).strip() == name
    assert ok(ketchd, "volume", "create", name).strip() == name  # again: the same volume
    table = ok(ketchd, "volume", "ls")
    assert table.splitlines()[0].split() == ["DRIVER", "VOLUME", "NAME"]
    assert any(line.split() == ["local", name] for line in table.splitlines())
    [vol] = json.loads(ok(ketchd, "volume", "inspect", name))
    assert vol["Name"] == name and vol["Driver"] == "local" and vol["Scope"] == "local"
    assert vol["Labels"] == {} and vol["Options"] == {}
    assert Path(vol["Mountpoint"]).is_dir()
    assert vol["Mountpoint"].startswith(str(ketchd.root / "data" / "volumes"))
    assert ok(ketchd, "volume", "inspect", "--format", "{{.Name}} {{.Driver}}",
              name).strip() == f"{name} local"
    assert ok(ketchd, "volume", "rm", name).strip() == name
    assert name not in ls_q(ketchd)
    assert not Path(vol["Mountpoint"]).exists()


def test_labels_and_ls_filters(ketchd: Ketchd) -> None:
    u = uid()
    web, db = f"web-{u}", f"db-{u}"
    ok(ketchd, "volume", "create", "--label", f"suite={u}", "--label", "app=web", web)
    ok(ketchd, "volume", "create", "--label", f"suite={u}", "--label", "app=db", db)
    [vol] = json.loads(ok(ketchd, "volume", "inspect", web))
    assert vol["Labels"] == {"suite": u, "app": "web"}
    assert ok(ketchd, "volume", "inspect", "--format", '{{index .Labels "app"}}',
              db).strip() == "db"
    assert ls_q(ketchd, f"label=suite={u}") == {web, db}
    assert ls_q(ketchd, f"label=suite={u}", "label=app=web") == {web}
    assert ls_q(ketchd, f"name={u}") == {web, db}
    assert ls_q(ketchd, f"name=web-{u}") == {web}
    assert ls_q(ketchd, f"name={u}", "driver=local") == {web, db}
    assert ls_q(ketchd, f"name={u}", "dangling=true") == {web, db}  # no container uses them
    assert ls_q(ketchd, f"name={u}", "dangling=false") == set()
    table = ok(ketchd, "volume", "ls", "--filter", f"label=suite={u}",
               "--format", "{{.Name}}:{{.Driver}}")
    assert sorted(table.split()) == sorted([f"{web}:local", f"{db}:local"])
    ok(ketchd, "volume", "rm", web, db)


def test_tmpfs_options(ketchd: Ketchd) -> None:
    name = f"tmp-{uid()}"
    ok(ketchd, "volume", "create", "--opt", "type=tmpfs", "--opt", "device=tmpfs",
       "--opt", "o=size=10m", name)
    [vol] = json.loads(ok(ketchd, "volume", "inspect", name))
    assert vol["Options"] == {"type": "tmpfs", "device": "tmpfs", "o": "size=10m"}
    # other options for an existing name conflict
    err = fails(ketchd, "volume", "create", "--opt", "type=tmpfs", "--opt", "device=tmpfs",
                "--opt", "o=size=20m", name)
    assert "already exists with different options" in err
    err = fails(ketchd, "volume", "create", "--opt", "size=1m", f"bad-{uid()}")
    assert 'invalid option: "size"' in err
    ok(ketchd, "volume", "rm", name)


def test_anonymous_volume(ketchd: Ketchd) -> None:
    u = uid()
    name = ok(ketchd, "volume", "create", "--label", f"suite={u}").strip()
    assert len(name) == 64 and all(c in "0123456789abcdef" for c in name)
    [vol] = json.loads(ok(ketchd, "volume", "inspect", name))
    assert vol["Labels"] == {"suite": u, "com.docker.volume.anonymous": ""}
    ok(ketchd, "volume", "rm", name)


def test_prune_removes_only_anonymous_by_default(ketchd: Ketchd) -> None:
    u = uid()
    named = f"named-{u}"
    ok(ketchd, "volume", "create", "--label", f"suite={u}", named)
    anon = ok(ketchd, "volume", "create", "--label", f"suite={u}").strip()
    out = ok(ketchd, "volume", "prune", "-f", "--filter", f"label=suite={u}")
    assert "Deleted Volumes:" in out and anon in out and named not in out
    assert ls_q(ketchd, f"label=suite={u}") == {named}
    out = ok(ketchd, "volume", "prune", "--all", "-f", "--filter", f"label=suite={u}")
    assert named in out
    assert ls_q(ketchd, f"label=suite={u}") == set()


def test_prune_label_filters(ketchd: Ketchd) -> None:
    u = uid()
    keep, drop = f"keep-{u}", f"drop-{u}"
    ok(ketchd, "volume", "create", "--label", f"suite={u}", "--label", "keep", keep)
    ok(ketchd, "volume", "create", "--label", f"suite={u}", drop)
    Path(json.loads(ok(ketchd, "volume", "inspect", drop))[0]["Mountpoint"],
         "f").write_bytes(b"x" * 4096)
    out = ok(ketchd, "volume", "prune", "-a", "-f", "--filter", f"label=suite={u}",
             "--filter", "label!=keep")
    assert drop in out and keep not in out
    assert "Total reclaimed space: 4.096kB" in out
    assert ls_q(ketchd, f"label=suite={u}") == {keep}
    ok(ketchd, "volume", "rm", keep)


def test_cli_errors(ketchd: Ketchd) -> None:
    missing = f"missing-{uid()}"
    assert f"get {missing}: no such volume" in fails(ketchd, "volume", "inspect", missing)
    assert f"get {missing}: no such volume" in fails(ketchd, "volume", "rm", missing)
    ok(ketchd, "volume", "rm", "-f", missing)  # force: nothing to remove is fine
    assert "invalid filter 'color'" in fails(ketchd, "volume", "ls", "--filter", "color=red")
    assert "invalid filter 'dangling=maybe'" in fails(ketchd, "volume", "ls", "--filter",
                                                       "dangling=maybe")
    assert "volume name is too short" in fails(ketchd, "volume", "create", "x")
    assert "invalid characters" in fails(ketchd, "volume", "create", "--", "-bad")
    assert 'plugin "nope" not found' in fails(ketchd, "volume", "create", "-d", "nope",
                                              f"v-{uid()}")


# -- docker-py --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docker_py() -> Any:
    """The docker-py module (untyped, hence Any); skips when it is not installed."""
    return pytest.importorskip("docker")


@pytest.fixture(scope="module")
def client(ketchd: Ketchd, docker_py: Any) -> Iterator[Any]:
    c = docker_py.DockerClient(base_url=ketchd.url)
    try:
        yield c
    finally:
        c.close()


def test_docker_py_volumes(client: Any, docker_py: Any) -> None:
    u = uid()
    vol = client.volumes.create(f"py-{u}", labels={"suite": u},
                                driver_opts={"type": "tmpfs", "device": "tmpfs"})
    assert vol.name == f"py-{u}" and vol.attrs["Options"]["type"] == "tmpfs"
    anon = client.volumes.create(labels={"suite": u})
    assert [v.name for v in client.volumes.list(filters={"label": f"suite={u}"})] == \
        sorted([vol.name, anon.name])
    assert client.volumes.get(vol.name).attrs["Labels"] == {"suite": u}
    with pytest.raises(docker_py.errors.NotFound) as err:
        client.volumes.get(f"gone-{u}")
    assert err.value.explanation == f"get gone-{u}: no such volume"
    pruned = client.volumes.prune(filters={"label": f"suite={u}"})
    assert pruned == {"VolumesDeleted": [anon.name], "SpaceReclaimed": 0}
    vol.remove()
    assert client.volumes.list(filters={"label": f"suite={u}"}) == []


def test_docker_py_low_level_bad_body(client: Any, docker_py: Any) -> None:
    api = client.api
    url = api._url("/volumes/create")
    for body, message in [
        (b'{"Nmae": "x"}', 'unknown field "Nmae"'),
        (b'{"Labels": {"a": 1}}', "Labels must be an object of strings"),
        (b'{"Name": ["x"]}', "Name must be a string"),
        (b"{not json", "invalid JSON"),
    ]:
        resp = api._post(url, data=body, headers={"Content-Type": "application/json"})
        with pytest.raises(docker_py.errors.APIError) as err:
            api._raise_for_status(resp)
        assert err.value.status_code == 400
        assert message in err.value.explanation


# -- raw requests -------------------------------------------------------------------------


def test_raw_create_inspect_delete(ketchd: Ketchd) -> None:
    name = f"raw-{uid()}"
    status, vol = request(ketchd, "POST", "/volumes/create",
                          json.dumps({"Name": name, "Labels": {"k": "v"}}).encode())
    assert status == 201 and vol["Name"] == name and vol["Labels"] == {"k": "v"}
    status, got = request(ketchd, "GET", f"/v1.41/volumes/{name}")
    assert status == 200 and got == vol
    status, listing = request(ketchd, "GET",
                              "/volumes?filters=" + quote(json.dumps({"name": {name: True}})))
    assert status == 200 and listing == {"Volumes": [vol], "Warnings": []}
    assert request(ketchd, "DELETE", f"/volumes/{name}") == (204, None)
    assert request(ketchd, "DELETE", f"/volumes/{name}") == (
        404, {"message": f"get {name}: no such volume"})
    assert request(ketchd, "DELETE", f"/volumes/{name}?force=1") == (204, None)


def test_raw_errors(ketchd: Ketchd) -> None:
    assert request(ketchd, "POST", "/volumes/create", b'{"Name": "a", "Size": 1}') == (
        400, {"message": 'invalid volume create request: unknown field "Size"'})
    assert request(ketchd, "POST", "/volumes/create", b'{"DriverOpts": [1]}') == (
        400, {"message": "invalid volume create request: DriverOpts must be an object "
                         "of strings"})
    status, body = request(ketchd, "POST", "/volumes/create", b"nope")
    assert status == 400 and body["message"].startswith("invalid JSON")
    status, body = request(ketchd, "GET", "/volumes?filters={bad")
    assert status == 400 and body["message"].startswith("invalid filters")
    status, body = request(ketchd, "POST", "/volumes/prune?filters="
                           + quote(json.dumps({"dangling": ["true"]})))
    assert (status, body) == (400, {"message": "invalid filter 'dangling'"})


def test_old_api_prune_removes_named_volumes_too(ketchd: Ketchd) -> None:
    u = uid()
    name = f"old-{u}"
    ok(ketchd, "volume", "create", "--label", f"suite={u}", name)
    flt = quote(json.dumps({"label": [f"suite={u}"]}))
    status, body = request(ketchd, "POST", f"/v1.47/volumes/prune?filters={flt}")
    assert status == 200 and body["VolumesDeleted"] == []
    status, body = request(ketchd, "POST", f"/v1.41/volumes/prune?filters={flt}")
    assert status == 200 and body["VolumesDeleted"] == [name]
