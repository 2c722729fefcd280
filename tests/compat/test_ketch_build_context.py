"""`ketch build` through ketchd's build context cache, against a private ketchd.

The client sends a manifest, then only the files the daemon lacks; the daemon keeps
the tree per context. Checked as a user would: the bytes the client sent, the cache
hits in the build output, the files in a container of the result, that nothing is
written outside the daemon's tree, and that all of it survives a daemon restart.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from ketch.client.cli.build import context_key, context_manifest
from ketch.client.remote import RemoteEngineClient
from ketch.errors import InvalidArgument
from tests.compat.conftest import Ketchd, seed_busybox, start_ketchd, stop_process
from tests.compat.conftest import ketch_build as build
from tests.compat.conftest import write_files as write

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not os.path.exists("/bin/busybox"),
                                 reason="needs busybox-static")]


class Daemon:
    """A private ketchd that a test may restart (same data root)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.d = start_ketchd(root)

    def restart(self) -> None:
        stop_process(self.d.proc)
        self.d = start_ketchd(self.root)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("ketchd-ctx")
    seed_busybox(root)
    dm = Daemon(root)
    try:
        yield dm
    finally:
        dm.d.docker("rm", "-f", *dm.d.docker("ps", "-aq").stdout.split())
        stop_process(dm.d.proc)
        shutil.rmtree(root, ignore_errors=True)


def ketch(d: Ketchd, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ketch.cmd.ketch", "-H", d.url, *args],
                          capture_output=True, text=True, timeout=120, check=False)


def cat(d: Ketchd, image: str, *cmd: str) -> str:
    r = d.docker("run", "--rm", "--network", "none", image, *cmd)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_rebuilds_send_only_changes(daemon: Daemon, tmp_path: Path) -> None:
    big = os.urandom(4 << 20)
    ctx = write(tmp_path / "ctx", {
        "Dockerfile": ("FROM busybox\n"
                       "COPY big /big\n"
                       "COPY app/ /app/\n"
                       "RUN cat /app/a.txt > /copied\n"),
        "big": big, "app/a.txt": "one\n", "app/gone.txt": "bye\n"})
    d = daemon.d
    r = ketch(d, "build", "-t", "ctx:1", str(ctx))  # the CLI, as a user runs it
    assert r.returncode == 0, r.stderr
    assert "Sending build context:" in r.stdout and "(all files)" in r.stdout
    # unchanged: only the manifest travels, every step is cached
    again, out = build(d, ctx, tags=["ctx:1"])
    assert again.synced and again.files == 0 and again.total_files == 4
    assert again.body_bytes < 8192 < len(big) <= again.context_bytes
    assert out.count(" ---> Using cache") == 3 and "Running in" not in out
    r = ketch(d, "build", "-t", "ctx:1", str(ctx))
    assert "(0 of 4 files changed; the daemon has the rest)" in r.stdout, r.stdout
    # one file edited: it alone is sent; the steps before its COPY stay cached
    (ctx / "app" / "a.txt").write_text("two\n")
    edited, out = build(d, ctx, tags=["ctx:1"])
    assert edited.files == 1 and edited.body_bytes < 8192
    assert out.count(" ---> Using cache") == 1  # COPY big
    assert cat(d, "ctx:1", "cat", "/copied") == "two\n"
    # a file deleted: gone from the image at the COPY of its directory
    (ctx / "app" / "gone.txt").unlink()
    deleted, out = build(d, ctx, tags=["ctx:1"])
    assert deleted.files == 0 and out.count(" ---> Using cache") == 1
    assert cat(d, "ctx:1", "ls", "/app").split() == ["a.txt"]
    assert cat(d, "ctx:1", "md5sum", "/big").split()[0] == hashlib.md5(big).hexdigest()
    # --no-context-cache: the whole tar, still a cached build
    r = ketch(d, "build", "--no-context-cache", "-t", "ctx:1", str(ctx))
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("Sending build context:"))
    assert "files" not in line and "MB" in line
    assert r.stdout.count("(cached)") == 3
    # a daemon restart keeps the tree and the digests: nothing is sent again
    daemon.restart()
    d = daemon.d
    after, out = build(d, ctx, tags=["ctx:1"])
    assert after.files == 0 and after.body_bytes < 8192
    assert out.count(" ---> Using cache") == 3
    assert cat(d, "ctx:1", "cat", "/copied") == "two\n"


def test_symlink_swapped_for_a_dir(daemon: Daemon, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    ctx = write(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nCOPY keep /keep\n",
                                   "keep": "k\n"})
    os.symlink(str(outside), ctx / "data")  # a link out of the context
    d = daemon.d
    build(d, ctx, tags=["swap:1"])
    (ctx / "data").unlink()
    write(ctx, {"data/f": "inside\n",
                "Dockerfile": "FROM busybox\nCOPY keep /keep\nCOPY data/ /data/\n"})
    sent, _ = build(d, ctx, tags=["swap:1"])
    assert sent.files == 2  # the Dockerfile and data/f
    assert cat(d, "swap:1", "cat", "/data/f") == "inside\n"
    assert list(outside.iterdir()) == []
    tree = daemon.root / "data" / "build" / "contexts" / context_key(str(ctx), None) / "tree"
    assert (tree / "data").is_dir() and not (tree / "data").is_symlink()


def _raw_synced(entries: Sequence[dict[str, Any]], files: Mapping[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = json.dumps({"entries": list(entries)}).encode()
        ti = tarfile.TarInfo(".ketch-context.json")
        ti.size = len(data)
        tar.addfile(ti, io.BytesIO(data))
        for name, body in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(body)
            tar.addfile(ti, io.BytesIO(body))
    return buf.getvalue()


def test_a_hostile_client_cannot_write_outside(daemon: Daemon, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    key = "f" * 32
    link = {"path": "evil", "type": "symlink", "mode": 0o777, "size": 0, "mtime_ns": 0,
            "token": [0, 1, 0], "target": str(outside)}
    pwn = {"path": "evil/pwn", "type": "file", "mode": 0o644, "size": 3, "mtime_ns": 0,
           "token": [0, 2, 0]}
    c = RemoteEngineClient(daemon.d.url)
    try:
        with pytest.raises(InvalidArgument):  # a file under a symlink: refused outright
            c.build_context_check(key, [link, pwn])
        # first a tree with the link, then a member through it
        assert c.build_context_check(key, [link]) == []
        with pytest.raises(InvalidArgument):
            c.image_build(_raw_synced([link], {"evil/pwn": b"pwn"}), ketch_context=key)
        with pytest.raises(InvalidArgument):
            c.image_build(_raw_synced([], {"../../../pwn": b"pwn"}), ketch_context=key)
        with pytest.raises(InvalidArgument):
            c.image_build(b"", ketch_context="../" + key)
    finally:
        c.close()
    assert list(outside.iterdir()) == []


class _StaleCheck(RemoteEngineClient):
    """A client whose check answer is stale: it claims the daemon needs nothing."""

    def build_context_check(self, key: str, entries: Sequence[Mapping[str, Any]]
                            ) -> list[str] | None:
        super().build_context_check(key, entries)
        return []


def test_a_stale_check_is_a_409_and_the_client_sends_everything(daemon: Daemon,
                                                                tmp_path: Path) -> None:
    ctx = write(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nCOPY f /f\n", "f": "1\n"})
    d = daemon.d
    build(d, ctx, tags=["stale:1"])
    (ctx / "f").write_text("2\n")
    c = _StaleCheck(d.url)
    try:
        sent, _ = build(d, ctx, client=c, tags=["stale:1"])
    finally:
        c.close()
    assert sent.retried and sent.files == 2
    assert cat(d, "stale:1", "cat", "/f") == "2\n"


def test_docker_cli_build_keeps_no_context(daemon: Daemon, tmp_path: Path) -> None:
    ctx = write(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nCOPY f /f\n", "f": "x\n"})
    d = daemon.d
    r = d.docker("build", "-t", "plain:1", str(ctx), env={"DOCKER_BUILDKIT": "0"})
    assert r.returncode == 0, r.stderr
    assert cat(d, "plain:1", "cat", "/f") == "x\n"
    contexts = daemon.root / "data" / "build" / "contexts"
    assert not (contexts / context_key(str(ctx), None)).exists()
    assert not list((daemon.root / "data" / "build" / "tmp").iterdir())


def test_builder_prune_removes_kept_contexts(daemon: Daemon, tmp_path: Path) -> None:
    ctx = write(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nCOPY f /f\n", "f": "x\n"})
    d = daemon.d
    build(d, ctx, tags=["pruned:1"])
    kept = daemon.root / "data" / "build" / "contexts" / context_key(str(ctx), None)
    assert (kept / "tree" / "f").read_text() == "x\n"
    name, records, _ = context_manifest(str(ctx), None)
    assert name == "Dockerfile" and len(records) == 2
    r = d.docker("builder", "prune", "-f")
    assert r.returncode == 0, r.stderr
    assert not kept.exists()
    sent, _ = build(d, ctx, tags=["pruned:1"])  # after a prune: everything sent again
    assert sent.files == 2
