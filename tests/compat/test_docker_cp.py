"""docker cp / export / diff / commit through ketchd with the real docker CLI."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

from tests.compat.conftest import Ketchd


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, f"rc={r.returncode} out={r.stdout!r} err={r.stderr!r}"
    return r.stdout


def test_cp_both_ways_running_and_stopped(ketchd_busybox: Ketchd, tmp_path: Path) -> None:
    d = ketchd_busybox
    cid = _ok(d.docker("run", "-d", "busybox", "sleep", "30")).strip()
    try:
        src = tmp_path / "in.txt"
        src.write_text("into the container\n")
        _ok(d.docker("cp", str(src), f"{cid}:/tmp/in.txt"))
        assert _ok(d.docker("exec", cid, "cat", "/tmp/in.txt")) == "into the container\n"
        _ok(d.docker("exec", cid, "sh", "-c", "mkdir -p /out/sub && echo back > /out/sub/f"))
        _ok(d.docker("cp", f"{cid}:/out", str(tmp_path / "out")))
        assert (tmp_path / "out" / "sub" / "f").read_text() == "back\n"
        _ok(d.docker("stop", "-t", "0", cid))
        _ok(d.docker("cp", f"{cid}:/tmp/in.txt", str(tmp_path / "again.txt")))
        assert (tmp_path / "again.txt").read_text() == "into the container\n"
        r = d.docker("cp", f"{cid}:/no/such/file", str(tmp_path / "x"))
        assert r.returncode != 0 and "Could not find the file /no/such/file" in r.stderr
    finally:
        _ok(d.docker("rm", "-f", cid))


def test_cp_follows_container_symlinks_inside_the_container(ketchd_busybox: Ketchd,
                                                            tmp_path: Path) -> None:
    """CVE-2018-15664 class: a symlink to / inside the container is the container's /."""
    d = ketchd_busybox
    host_secret = tmp_path / "host-secret"
    host_secret.write_text("host only\n")
    cid = _ok(d.docker("run", "-d", "busybox", "sh", "-c",
                       f"ln -s / /escape; mkdir -p {tmp_path}; "
                       f"echo container > {host_secret}; sleep 30")).strip()
    try:
        _ok(d.docker("exec", cid, "ls", "/escape"))
        _ok(d.docker("cp", f"{cid}:/escape{host_secret}", str(tmp_path / "got")))
        assert (tmp_path / "got").read_text() == "container\n"
        payload = tmp_path / "payload"
        payload.write_text("written\n")
        _ok(d.docker("cp", str(payload), f"{cid}:/escape{tmp_path}/host-secret"))
        assert host_secret.read_text() == "host only\n"  # the host file is untouched
        assert _ok(d.docker("exec", cid, "cat", str(host_secret))) == "written\n"
    finally:
        _ok(d.docker("rm", "-f", cid))


def test_export_diff_and_commit(ketchd_busybox: Ketchd, tmp_path: Path) -> None:
    d = ketchd_busybox
    cid = _ok(d.docker("run", "busybox", "sh", "-c",
                       "echo new > /added; rm /bin/vi; echo m >> /etc/passwd")).strip()
    cid = _ok(d.docker("ps", "-lq", "--no-trunc")).strip() or cid
    diff = _ok(d.docker("diff", cid)).splitlines()
    assert "A /added" in diff and "D /bin/vi" in diff and "C /etc/passwd" in diff
    out = tmp_path / "fs.tar"
    _ok(d.docker("export", "-o", str(out), cid))
    with tarfile.open(out) as t:
        names = set(t.getnames())
    assert {"added", "bin/busybox"} <= {n.lstrip("./") for n in names}
    image_id = _ok(d.docker("commit", "-c", "CMD [\"cat\", \"/added\"]", cid,
                            "committed:1")).strip()
    assert image_id.startswith("sha256:")
    assert _ok(d.docker("run", "--rm", "committed:1")) == "new\n"
    hist = json.loads(_ok(d.docker("image", "inspect", "committed:1")))[0]
    assert len(hist["RootFS"]["Layers"]) == 2
    r = d.docker("run", "--rm", "committed:1", "ls", "/bin/vi")
    assert r.returncode != 0  # the deletion is part of the new layer
    _ok(d.docker("rm", cid))
    _ok(d.docker("rmi", "committed:1"))
    assert os.path.exists(out)
