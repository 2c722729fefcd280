"""WORKDIR through the docker CLI's classic builder: a missing directory is made (0755,
root's) as a layer of its own, as dockerd's classic builder does; an existing one adds
no layer; a file in the way fails the build naming the line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.compat.conftest import Ketchd

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not os.path.exists("/bin/busybox"),
                                 reason="needs busybox-static")]


def build(d: Ketchd, tmp: Path, dockerfile: str, tag: str) -> tuple[int, str]:
    ctx = tmp / tag.replace(":", "_")
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile)
    r = d.docker("build", "-t", tag, str(ctx), env={"DOCKER_BUILDKIT": "0"})
    return r.returncode, r.stdout + r.stderr


def layers(d: Ketchd, image: str) -> list[str]:
    r = d.docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", image)
    assert r.returncode == 0, r.stderr
    out: list[str] = json.loads(r.stdout)
    return out


def test_a_missing_workdir_is_made_as_a_layer(ketchd_busybox: Ketchd, tmp_path: Path) -> None:
    rc, out = build(ketchd_busybox, tmp_path, "FROM busybox\nUSER nobody\nWORKDIR /srv/app\n"
                    "WORKDIR /tmp\n", "workdir:1")
    assert rc == 0, out
    assert len(layers(ketchd_busybox, "workdir:1")) == len(layers(ketchd_busybox, "busybox")) + 1
    r = ketchd_busybox.docker("run", "--rm", "--network", "none", "--user", "0", "--workdir", "/",
                      "workdir:1", "stat", "-c", "%n %a %u", "/srv", "/srv/app")
    assert r.stdout.split("\n")[:2] == ["/srv 755 0", "/srv/app 755 0"], r.stderr
    r = ketchd_busybox.docker("run", "--rm", "--network", "none", "workdir:1", "pwd")
    assert r.stdout.strip() == "/tmp"


def test_a_file_in_the_way_fails_naming_the_line(ketchd_busybox: Ketchd, tmp_path: Path) -> None:
    rc, out = build(ketchd_busybox, tmp_path, "FROM busybox\nRUN touch /f\nWORKDIR /f/x\n",
                    "workdir:bad")
    assert rc != 0
    assert "Dockerfile:3" in out and "not a directory" in out, out
