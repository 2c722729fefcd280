"""COPY keeps the context's modification times, as docker's builder does, through the
docker CLI (the context tar) and through ``ketch build`` (the context cache)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.compat.conftest import Ketchd, ketch_build

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not os.path.exists("/bin/busybox"),
                                 reason="needs busybox-static")]

FILE_TIME = 1_000_000_000  # 2001-09-09
DIR_TIME = 1_100_000_000


def context(tmp: Path) -> Path:
    ctx = tmp / "ctx"
    (ctx / "tree" / "sub").mkdir(parents=True)
    (ctx / "tree" / "sub" / "f.txt").write_text("eff\n")
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY tree /tree\n")
    os.utime(ctx / "tree" / "sub" / "f.txt", (FILE_TIME, FILE_TIME))
    os.utime(ctx / "tree" / "sub", (DIR_TIME, DIR_TIME))
    return ctx


def mtimes(d: Ketchd, image: str) -> list[int]:
    r = d.docker("run", "--rm", "--network", "none", image,
                 "stat", "-c", "%Y", "/tree/sub/f.txt", "/tree/sub")
    assert r.returncode == 0, r.stderr
    return [int(x) for x in r.stdout.split()]


def test_docker_build_keeps_mtimes(ketchd_busybox: Ketchd, tmp_path: Path) -> None:
    r = ketchd_busybox.docker("build", "-q", "-t", "mtimes-docker:1", str(context(tmp_path)),
                      env={"DOCKER_BUILDKIT": "0"})
    assert r.returncode == 0, r.stderr
    assert mtimes(ketchd_busybox, "mtimes-docker:1") == [FILE_TIME, DIR_TIME]


def test_ketch_build_keeps_mtimes(ketchd_busybox: Ketchd, tmp_path: Path) -> None:
    ctx = context(tmp_path)
    for tag in ("mtimes-ketch:1", "mtimes-ketch:2"):  # sent, then held by the daemon
        ketch_build(ketchd_busybox, ctx, tags=[tag], no_cache=True)
        assert mtimes(ketchd_busybox, tag) == [FILE_TIME, DIR_TIME]
