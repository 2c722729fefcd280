"""LocalDriver with plain-directory volumes (no root needed): the conformance suite,
Docker's name rules, option validation, and state across driver instances."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ketch.errors import Conflict, InvalidArgument, NotFound
from ketch.volume import Volume, VolumeDriver
from ketch.volume.copyup import copy_up
from ketch.volume.local import LocalDriver, validate_name
from tests.conformance.volume_driver_suite import NewDriver, VolumeDriverSuite


@pytest.fixture
def new_driver() -> NewDriver:
    return LocalDriver


class TestLocalDriverConformance(VolumeDriverSuite):
    """Every suite test on plain directories."""


@pytest.mark.parametrize("name", ["ab", "a1", "my_vol.v-2", "0x", "A" * 200])
def test_valid_names(name: str) -> None:
    validate_name(name)


@pytest.mark.parametrize("name", ["", "a", "_"])
def test_short_names(name: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_name(name)
    assert str(err.value) == ("volume name is too short, names should be at least two "
                              "alphanumeric characters")


@pytest.mark.parametrize("name", ["x/y", "_ab", ".ab", "-ab", "a b", "..", "ab/", "é1", "a\n"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_name(name)
    assert str(err.value) == (f'"{name}" includes invalid characters for a local volume name, '
                              'only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed')


def test_every_operation_validates_names(tmp_path: Path) -> None:
    d = LocalDriver(str(tmp_path))
    with pytest.raises(InvalidArgument):
        d.create("../escape")
    for call in (d.get, d.remove, d.path):
        with pytest.raises(InvalidArgument):
            call("x/y")
    with pytest.raises(InvalidArgument):
        d.mount("..", "id")
    assert not (tmp_path.parent / "escape").exists()


def test_layout(tmp_path: Path) -> None:
    d = LocalDriver(str(tmp_path))
    vol = d.create("data", None, {"l": "1"})
    assert vol.mountpoint == str(tmp_path / "data" / "_data")
    assert (tmp_path / "data" / "_data").is_dir()
    record = json.loads((tmp_path / "data" / "opts.json").read_text())
    assert record["Labels"] == {"l": "1"} and record["Options"] == {}
    assert vol.to_api() == {"Name": "data", "Driver": "local", "Mountpoint": vol.mountpoint,
                            "CreatedAt": vol.created_at, "Labels": {"l": "1"},
                            "Options": {}, "Scope": "local"}
    assert d.capabilities() == {"Scope": "local"}
    assert isinstance(d, VolumeDriver)


def test_to_api_status() -> None:
    vol = Volume("ab", "local", "/m", "2024-01-01T00:00:00Z", status={"k": "v"})
    assert vol.to_api()["Status"] == {"k": "v"}


@pytest.mark.parametrize(("opts", "message"), [
    ({"size": "1g"}, 'invalid option: "size"'),
    ({"type": "tmpfs"}, 'missing required option: "device"'),
    ({"device": "tmpfs"}, 'missing required option: "type"'),
    ({"o": "size=1m"}, 'missing required option: "type"'),
])
def test_invalid_options(tmp_path: Path, opts: dict[str, str], message: str) -> None:
    d = LocalDriver(str(tmp_path))
    with pytest.raises(InvalidArgument, match=message):
        d.create("ab", opts)
    assert d.list() == []


def test_create_with_other_options_conflicts(tmp_path: Path) -> None:
    d = LocalDriver(str(tmp_path))
    d.create("ab")
    with pytest.raises(Conflict, match="already exists with different options"):
        d.create("ab", {"type": "tmpfs", "device": "tmpfs"})
    opts = {"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}
    d.create("cd", opts)
    assert d.create("cd", dict(opts)).options == opts
    with pytest.raises(Conflict):
        d.create("cd", {**opts, "o": "size=2m"})


def test_unmounted_tmpfs_volume_has_no_path(tmp_path: Path) -> None:
    d = LocalDriver(str(tmp_path))
    d.create("ab", {"type": "tmpfs", "device": "tmpfs"})
    assert d.path("ab") is None


def test_holders_persist_across_instances(tmp_path: Path) -> None:
    LocalDriver(str(tmp_path)).create("ab")
    first = LocalDriver(str(tmp_path))
    first.mount("ab", "c1")
    first.mount("ab", "c2")
    second = LocalDriver(str(tmp_path))
    assert sorted(second.mount_ids("ab")) == ["c1", "c2"]
    second.unmount("ab", "c1")
    assert LocalDriver(str(tmp_path)).mount_ids("ab") == ["c2"]
    with pytest.raises(Conflict):
        LocalDriver(str(tmp_path)).remove("ab")


def test_holders_from_another_boot_are_void(tmp_path: Path) -> None:
    d = LocalDriver(str(tmp_path))
    d.create("ab")
    d.mount("ab", "c1")
    mounts = tmp_path / "ab" / "mounts.json"
    mounts.write_text(json.dumps({"BootID": "some-earlier-boot", "IDs": ["c1"]}))
    again = LocalDriver(str(tmp_path))
    assert again.mount_ids("ab") == []
    again.remove("ab")


def test_interrupted_create_is_cleaned_and_ignored(tmp_path: Path) -> None:
    (tmp_path / ".tmp-dead" / "_data").mkdir(parents=True)
    (tmp_path / "not-a-volume").mkdir()
    d = LocalDriver(str(tmp_path))
    assert not (tmp_path / ".tmp-dead").exists()
    assert d.list() == []
    with pytest.raises(NotFound):
        d.get("not-a-volume")


def test_copy_up_plain(tmp_path: Path) -> None:
    src = tmp_path / "image-dir"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("data")
    (src / "link").symlink_to("sub/f")
    src.chmod(0o750)
    vol = tmp_path / "vol"
    vol.mkdir()
    assert copy_up(str(src), str(vol))
    assert (vol / "sub" / "f").read_text() == "data"
    assert (vol / "link").is_symlink() and str((vol / "link").readlink()) == "sub/f"
    assert vol.stat().st_mode & 0o777 == 0o750
    (src / "new").write_text("later")
    assert not copy_up(str(src), str(vol))  # not empty any more: left alone
    assert not (vol / "new").exists()
    empty = tmp_path / "empty-vol"
    empty.mkdir()
    assert not copy_up(str(tmp_path / "missing"), str(empty))
