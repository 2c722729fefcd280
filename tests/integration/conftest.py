"""Fixtures for root tests: a private runtime root and fresh busybox bundles."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.runtime_helpers import Ctl


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[Ctl]:
    """ketch-runtime with its own --root; deletes every container it created."""
    c = Ctl(tmp_path / "state")
    try:
        yield c
    finally:
        c.cleanup()


@pytest.fixture
def make_bundle(tmp_path: Path) -> Callable[..., str]:
    """make_bundle(args, **opts) -> path of a fresh busybox bundle (root.readonly false)."""
    from ketch.runtime.busybox import make_bundle as mk

    def factory(args: list[str], **opts: object) -> str:
        dest = tmp_path / f"bundle-{uuid.uuid4().hex[:8]}"
        return mk(str(dest), args, **opts)  # type: ignore[arg-type]

    return factory


@pytest.fixture
def cid() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def netns() -> Iterator[str]:
    """A throwaway named network namespace, removed afterwards."""
    name = f"ketch-t-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


