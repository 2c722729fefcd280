"""The conformance suite of the ``VolumeDriver`` seam.

Subclass ``VolumeDriverSuite`` in a test module and provide one fixture:

``new_driver``
    ``new_driver(root) -> VolumeDriver``: an implementation keeping its state
    in directory ``root``. Called again with the same root it must see what the
    first instance made, mounts included (a daemon restart).

Override the ``volume_opts`` fixture to run every test on volumes created with
those driver options (the default, ``{}``, means the driver's plain kind).

The suite's ``driver`` fixture makes one on a private root and, afterwards,
releases the mount ids tests use (``MOUNT_IDS``), removes every volume, and
detaches anything still mounted under the test's temp dir, even when the test
failed.
"""

from __future__ import annotations

import datetime
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ketch.errors import Conflict, KetchError, NotFound
from ketch.volume import Volume, VolumeDriver
from tests.conformance.snapshotter_suite import unmount_below

__all__ = ["MOUNT_IDS", "NewDriver", "VolumeDriverSuite", "new_name", "release_all"]

NewDriver = Callable[[str], VolumeDriver]
MOUNT_IDS = ("ctr-a", "ctr-b", "ctr-c")


def new_name() -> str:
    return f"vol-{uuid.uuid4().hex[:10]}"


def release_all(driver: VolumeDriver) -> None:
    """Unmount ``MOUNT_IDS`` from every volume and remove them all (teardown)."""
    for vol in driver.list():
        for mid in MOUNT_IDS:
            try:
                driver.unmount(vol.name, mid)
            except KetchError:
                pass
        try:
            driver.remove(vol.name)
        except KetchError:
            pass


def _parse_rfc3339(text: str) -> datetime.datetime:
    # fromisoformat takes at most microseconds; Docker's timestamps may carry nanoseconds
    head, _, frac = text.removesuffix("Z").partition(".")
    stamp = f"{head}.{frac[:6]}" if frac else head
    return datetime.datetime.fromisoformat(stamp + "+00:00")


class VolumeDriverSuite:
    """The lifecycle of the ``VolumeDriver`` docstring, test by test."""

    @pytest.fixture
    def volume_opts(self) -> dict[str, str]:
        return {}

    @pytest.fixture
    def root(self, tmp_path: Path) -> str:
        return str(tmp_path / "volumes")

    @pytest.fixture
    def driver(self, new_driver: NewDriver, root: str, tmp_path: Path) -> Iterator[VolumeDriver]:
        d = new_driver(root)
        try:
            yield d
        finally:
            try:
                release_all(new_driver(root))
            finally:
                unmount_below(tmp_path)

    def test_satisfies_protocol(self, driver: VolumeDriver) -> None:
        assert isinstance(driver, VolumeDriver)

    def test_capabilities(self, driver: VolumeDriver) -> None:
        assert driver.capabilities()["Scope"] in ("local", "global")

    def test_create_and_get(self, driver: VolumeDriver, volume_opts: dict[str, str]) -> None:
        name = new_name()
        before = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=5)
        vol = driver.create(name, volume_opts, {"com.example.k": "v"})
        assert vol.name == name
        assert vol.driver
        assert os.path.isabs(vol.mountpoint)
        assert dict(vol.labels) == {"com.example.k": "v"}
        assert dict(vol.options) == volume_opts
        assert _parse_rfc3339(vol.created_at) >= before
        assert driver.get(name) == vol

    def test_to_api_shape(self, driver: VolumeDriver, volume_opts: dict[str, str]) -> None:
        api = driver.create(new_name(), volume_opts).to_api()
        for key in ("Name", "Driver", "Mountpoint", "CreatedAt", "Labels", "Scope", "Options"):
            assert key in api
        assert api["Labels"] == {}
        assert api["Options"] == volume_opts
        assert api["Scope"] in ("local", "global")

    def test_create_is_idempotent(self, driver: VolumeDriver,
                                  volume_opts: dict[str, str]) -> None:
        name = new_name()
        first = driver.create(name, volume_opts)
        assert driver.create(name, volume_opts) == first
        assert [v.name for v in driver.list()] == [name]

    def test_missing_volume(self, driver: VolumeDriver) -> None:
        name = new_name()
        with pytest.raises(NotFound):
            driver.get(name)
        with pytest.raises(NotFound):
            driver.remove(name)
        with pytest.raises(NotFound):
            driver.mount(name, MOUNT_IDS[0])
        with pytest.raises(NotFound):
            driver.path(name)

    def test_list_sorted(self, driver: VolumeDriver, volume_opts: dict[str, str]) -> None:
        names = [f"{new_name()}-{i}" for i in range(3)]
        for n in reversed(names):
            driver.create(n, volume_opts)
        listed = driver.list()
        assert [v.name for v in listed] == sorted(names)
        assert all(isinstance(v, Volume) for v in listed)

    def test_mount_gives_writable_path(self, driver: VolumeDriver,
                                       volume_opts: dict[str, str]) -> None:
        name = new_name()
        driver.create(name, volume_opts)
        path = driver.mount(name, MOUNT_IDS[0])
        assert os.path.isdir(path)
        assert driver.path(name) == path
        Path(path, "hello").write_text("world")
        assert driver.mount(name, MOUNT_IDS[0]) == path  # same id again: no-op
        driver.unmount(name, MOUNT_IDS[0])
        path = driver.mount(name, MOUNT_IDS[1])
        if not volume_opts:  # plain volumes keep data; a tmpfs starts empty each time
            assert Path(path, "hello").read_text() == "world"
        driver.unmount(name, MOUNT_IDS[1])

    def test_remove_in_use_conflicts(self, driver: VolumeDriver,
                                     volume_opts: dict[str, str]) -> None:
        name = new_name()
        driver.create(name, volume_opts)
        driver.mount(name, MOUNT_IDS[0])
        driver.mount(name, MOUNT_IDS[1])
        with pytest.raises(Conflict, match="volume is in use"):
            driver.remove(name)
        driver.unmount(name, MOUNT_IDS[0])
        with pytest.raises(Conflict, match="volume is in use"):
            driver.remove(name)
        driver.unmount(name, MOUNT_IDS[1])
        driver.remove(name)
        with pytest.raises(NotFound):
            driver.get(name)
        assert name not in [v.name for v in driver.list()]

    def test_unmount_unknown_id_is_noop(self, driver: VolumeDriver,
                                        volume_opts: dict[str, str]) -> None:
        name = new_name()
        driver.create(name, volume_opts)
        driver.unmount(name, MOUNT_IDS[2])
        path = driver.mount(name, MOUNT_IDS[0])
        driver.unmount(name, MOUNT_IDS[2])
        assert driver.path(name) == path
        with pytest.raises(Conflict):
            driver.remove(name)

    def test_remove_deletes_data(self, driver: VolumeDriver,
                                 volume_opts: dict[str, str]) -> None:
        name = new_name()
        driver.create(name, volume_opts)
        path = driver.mount(name, MOUNT_IDS[0])
        Path(path, "f").write_text("x")
        driver.unmount(name, MOUNT_IDS[0])
        driver.remove(name)
        driver.create(name, volume_opts)
        path = driver.mount(name, MOUNT_IDS[0])
        assert os.listdir(path) == []
        driver.unmount(name, MOUNT_IDS[0])

    def test_restart_keeps_volumes_and_holders(self, new_driver: NewDriver, root: str,
                                               driver: VolumeDriver,
                                               volume_opts: dict[str, str]) -> None:
        held, free = new_name(), new_name()
        driver.create(held, volume_opts, {"a": "b"})
        driver.create(free, volume_opts)
        path = driver.mount(held, MOUNT_IDS[0])
        again = new_driver(root)
        assert [v.name for v in again.list()] == sorted([held, free])
        assert again.get(held) == driver.get(held)
        assert again.path(held) == path
        with pytest.raises(Conflict, match="volume is in use"):
            again.remove(held)
        again.remove(free)
        again.unmount(held, MOUNT_IDS[0])
        again.remove(held)
