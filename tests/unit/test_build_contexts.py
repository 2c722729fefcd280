"""The daemon's build context cache (ketch.engine.build.contexts / intake) and its client.

No root, no daemon: real files in tmp dirs, synced tars made by the client's own code
(``ketch.client.cli.build``), applied by the daemon's. What is checked is what a build
would see: the tree's files and modes, what the daemon asks for, the digest cache keys
``BuildContext.digest`` looks up, and that nothing lands outside the tree.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from ketch.api.routers.build import BodyReader, BuildRouter
from ketch.client.cli.build import (
    context_key,
    context_manifest,
    context_tar,
    start_build,
    synced_tar,
)
from ketch.engine.build.contexts import CHANGED, ContextCache, check_key
from ketch.engine.build.intake import parse_manifest
from ketch.errors import Conflict, InvalidArgument
from ketch.httpserver import Headers, Request
from ketch.image.build.context import _digest_key

KEY = "0123456789abcdef0123456789abcdef"


def write(root: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def manifest(root: Path, dockerfile: str | None = None
             ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    _, records, hosts = context_manifest(str(root), dockerfile)
    return records, hosts


def tar_of(records: list[dict[str, Any]], hosts: dict[str, str],
           need: Sequence[str] | None) -> io.BytesIO:
    buf = io.BytesIO()
    synced_tar(records, hosts, None if need is None else set(need), buf)
    buf.seek(0)
    return buf


def raw_tar(entries: Sequence[tuple[str, bytes | None]], records: list[dict[str, Any]]
            ) -> io.BytesIO:
    """A synced tar written by hand: the manifest, then ``(name, data)`` (None: a dir)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = json.dumps({"entries": records}).encode()
        ti = tarfile.TarInfo(".ketch-context.json")
        ti.size = len(data)
        tar.addfile(ti, io.BytesIO(data))
        for name, body in entries:
            ti = tarfile.TarInfo(name)
            if body is None:
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
            else:
                ti.size = len(body)
                tar.addfile(ti, io.BytesIO(body))
    buf.seek(0)
    return buf


def rec(path: str, kind: str = "file", **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"path": path, "type": kind, "mode": 0o644, "size": 1,
                           "mtime_ns": 1, "token": [1, len(path), 1]}
    out.update(kw)
    return out


def sync(cache: ContextCache, key: str, body: io.BytesIO,
         digests: dict[Any, str] | None = None) -> dict[str, str]:
    """Apply ``body``; what the yielded context holds: path → file text or "<dir>"/"->x"."""
    async def go() -> dict[str, str]:
        async with cache.sync(key, body, {} if digests is None else digests) as ctx:
            return tree_view(Path(ctx.root))
    return asyncio.run(go())


def tree_view(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "->" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "<dir>"
        else:
            out[rel] = p.read_text()
    return out


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    root = write(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY . /\n",
                                    "a.txt": "a\n", "sub/b.txt": "b\n", "big": "x" * 5000})
    os.symlink("a.txt", root / "link")
    return root


@pytest.fixture
def cache(tmp_path: Path) -> ContextCache:
    return ContextCache(str(tmp_path / "contexts"))


def test_first_sync_sends_all_then_nothing(ctx: Path, cache: ContextCache) -> None:
    records, hosts = manifest(ctx)
    files = ["Dockerfile", "a.txt", "big", "sub/b.txt"]
    assert cache.need(KEY, {"entries": records}) == files
    digests: dict[Any, str] = {}
    first = sync(cache, KEY, tar_of(records, hosts, files), digests)
    assert first == {"Dockerfile": "FROM scratch\nCOPY . /\n", "a.txt": "a\n", "big": "x" * 5000,
                     "link": "->a.txt", "sub": "<dir>", "sub/b.txt": "b\n"}
    assert cache.need(KEY, {"entries": records}) == []
    small = tar_of(records, hosts, [])
    assert len(small.getvalue()) < 4096  # the manifest and the end of the archive
    digests.clear()
    assert sync(cache, KEY, small, digests) == first
    # every file's digest is where BuildContext.digest looks, so nothing is re-read
    tree = Path(cache.root) / KEY / "tree"
    for name in files:
        path = os.path.realpath(tree / name)
        want = "sha256:" + hashlib.sha256((tree / name).read_bytes()).hexdigest()
        assert digests[_digest_key(path)] == want


def test_modes_and_implied_parents(tmp_path: Path, cache: ContextCache) -> None:
    records = [rec("x/y/f", mode=0o751, size=2), rec("d", "dir", mode=0o750)]
    sync(cache, KEY, raw_tar([("x/y/f", b"hi")], records))
    tree = Path(cache.root) / KEY / "tree"
    assert (tree / "x/y/f").stat().st_mode & 0o7777 == 0o751
    assert (tree / "x").stat().st_mode & 0o7777 == 0o755  # implied, as extraction makes it
    assert (tree / "d").stat().st_mode & 0o7777 == 0o750 | 0o700


def test_edit_delete_add(ctx: Path, cache: ContextCache) -> None:
    records, hosts = manifest(ctx)
    sync(cache, KEY, tar_of(records, hosts, None))
    (ctx / "a.txt").write_text("edited\n")
    (ctx / "sub" / "b.txt").unlink()
    write(ctx, {"sub/new.txt": "new\n"})
    records, hosts = manifest(ctx)
    need = cache.need(KEY, {"entries": records})
    assert need == ["a.txt", "sub/new.txt"]
    view = sync(cache, KEY, tar_of(records, hosts, need))
    assert view["a.txt"] == "edited\n" and view["sub/new.txt"] == "new\n"
    assert "sub/b.txt" not in view
    assert cache.need(KEY, {"entries": records}) == []


def test_a_file_not_sent_and_changed_is_a_conflict(ctx: Path, cache: ContextCache) -> None:
    records, hosts = manifest(ctx)
    sync(cache, KEY, tar_of(records, hosts, None))
    (ctx / "a.txt").write_text("changed after the check\n")
    records, hosts = manifest(ctx)
    with pytest.raises(Conflict, match=CHANGED):
        sync(cache, KEY, tar_of(records, hosts, []))
    # the daemon no longer claims to hold it; sending everything works
    assert cache.need(KEY, {"entries": records}) == ["a.txt"]
    assert sync(cache, KEY, tar_of(records, hosts, None))["a.txt"] == \
        "changed after the check\n"


def test_a_tree_file_changed_behind_the_cache_is_sent_again(ctx: Path,
                                                            cache: ContextCache) -> None:
    records, hosts = manifest(ctx)
    sync(cache, KEY, tar_of(records, hosts, None))
    tree = Path(cache.root) / KEY / "tree"
    (tree / "big").write_text("tampered")
    assert cache.need(KEY, {"entries": records}) == ["big"]
    with pytest.raises(Conflict):
        sync(cache, KEY, tar_of(records, hosts, []))
    assert sync(cache, KEY, tar_of(records, hosts, ["big"]))["big"] == "x" * 5000


@pytest.mark.parametrize("bad", [
    [rec("../x")], [rec("/etc/x")], [rec("a//b")], [rec("a/./b")], [rec("")],
    [rec("a\0b")], [rec("f"), rec("f/g")], [rec("l", "symlink", target="/etc"), rec("l/p")],
    [rec("a"), rec("a")], [rec("a", "fifo")], [rec("l", "symlink")],
    [rec("a", target="x")], [rec("a", token=[1, 2])], [rec("a", mode=0o10000)],
    [rec("a", size=True)], "not a list",
])
def test_manifest_paths_are_checked(bad: Any) -> None:
    with pytest.raises(InvalidArgument):
        parse_manifest({"entries": bad})


@pytest.mark.parametrize("member", ["../escape", "not-listed", "d", "/abs"])
def test_members_must_be_files_of_the_manifest(tmp_path: Path, cache: ContextCache,
                                               member: str) -> None:
    records = [rec("f", size=1), rec("d", "dir")]
    with pytest.raises(InvalidArgument):
        sync(cache, KEY, raw_tar([("f", b"1"), (member, b"x")], records))
    assert not (tmp_path / "escape").exists()
    assert not list((Path(cache.root) / KEY / "tree").rglob("escape"))


def test_a_dir_member_is_refused(cache: ContextCache) -> None:
    with pytest.raises(InvalidArgument):
        sync(cache, KEY, raw_tar([("d", None)], [rec("d", "dir")]))


def test_symlink_swapped_for_a_dir_never_writes_outside(tmp_path: Path,
                                                        cache: ContextCache) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    first = [rec("d", "symlink", target=str(outside))]
    assert sync(cache, KEY, raw_tar([], first)) == {"d": "->" + str(outside)}
    second = [rec("d", "dir", mode=0o755), rec("d/f", size=4)]
    view = sync(cache, KEY, raw_tar([("d/f", b"data")], second))
    assert view == {"d": "<dir>", "d/f": "data"}
    assert list(outside.iterdir()) == []
    # a tree dir turned into a symlink behind the cache's back is replaced, too
    tree = Path(cache.root) / KEY / "tree"
    (tree / "d" / "f").unlink()
    (tree / "d").rmdir()
    os.symlink(str(outside), tree / "d")
    assert sync(cache, KEY, raw_tar([("d/f", b"again")], second))["d/f"] == "again"
    assert list(outside.iterdir()) == []
    assert not (tree / "d").is_symlink()


def test_lru_eviction_spares_keys_in_use(tmp_path: Path, ctx: Path) -> None:
    cache = ContextCache(str(tmp_path / "lru"), max_keys=2)
    records, hosts = manifest(ctx)
    k1, k2, k3, k4 = ("1" * 16, "2" * 16, "3" * 16, "4" * 16)

    async def main() -> list[list[str]]:
        seen = []
        async with cache.sync(k1, tar_of(records, hosts, None), {}):
            await asyncio.sleep(0)
        os.utime(os.path.join(cache.root, k1), (1, 1))  # k1: least recently used
        async with cache.sync(k2, tar_of(records, hosts, None), {}):
            pass
        async with cache.sync(k3, tar_of(records, hosts, None), {}):
            seen.append(cache.keys())  # k1 went
        async with cache.sync(k2, tar_of(records, hosts, []), {}):
            os.utime(os.path.join(cache.root, k2), (1, 1))  # k2: in use and the oldest
            async with cache.sync(k4, tar_of(records, hosts, None), {}):
                seen.append(sorted(cache.keys()))  # so k3 went
        return seen

    assert asyncio.run(main()) == [[k2, k3], [k2, k4]]
    assert not os.path.exists(os.path.join(cache.root, k1))


def test_prune_removes_idle_keys(ctx: Path, cache: ContextCache) -> None:
    records, hosts = manifest(ctx)
    k1, k2 = "a" * 16, "b" * 16
    sync(cache, k1, tar_of(records, hosts, None))

    async def main() -> tuple[list[str], int]:
        async with cache.sync(k2, tar_of(records, hosts, None), {}):
            return await cache.prune()

    deleted, size = asyncio.run(main())
    assert deleted == [k1]
    assert size >= 5000 + 2 + 2  # at least the files of the tree
    assert cache.keys() == [k2]
    assert cache.need(k1, {"entries": records}) == ["Dockerfile", "a.txt", "big", "sub/b.txt"]


def test_restart_keeps_the_cache_and_cleans_temp_files(ctx: Path, tmp_path: Path) -> None:
    root = str(tmp_path / "contexts")
    records, hosts = manifest(ctx)
    sync(ContextCache(root), KEY, tar_of(records, hosts, None))
    tree = Path(root) / KEY / "tree"
    (tree / "sub" / ".ketch-tmp-0123").write_text("half a file")  # as a crash leaves it
    (Path(root) / KEY / "dirty").write_text("")
    again = ContextCache(root)
    assert not (tree / "sub" / ".ketch-tmp-0123").exists()
    assert not (Path(root) / KEY / "dirty").exists()
    assert again.need(KEY, {"entries": records}) == []
    digests: dict[Any, str] = {}
    assert sync(again, KEY, tar_of(records, hosts, []), digests)["big"] == "x" * 5000
    assert _digest_key(os.path.realpath(tree / "big")) in digests


def test_keys_are_checked(cache: ContextCache) -> None:
    assert check_key("0" * 16) == "0" * 16
    for bad in ("0" * 15, "0" * 65, "ABCDEF0123456789", "../../0123456789abcdef", ""):
        with pytest.raises(InvalidArgument):
            check_key(bad)
        with pytest.raises(InvalidArgument):
            sync(cache, bad, io.BytesIO())


def test_synced_context_reads_its_dockerignore(tmp_path: Path, cache: ContextCache) -> None:
    ctx = write(tmp_path / "c", {"Dockerfile": "FROM scratch\n", ".dockerignore": "*.log\n",
                                 "keep": "k", "x.log": "x"})
    records, hosts = manifest(ctx)
    assert [r["path"] for r in records] == [".dockerignore", "Dockerfile", "keep"]

    async def main() -> list[str]:
        async with cache.sync(KEY, tar_of(records, hosts, None), {}) as c:
            src = c.resolve(["."], line=1)
            return [e.path for e in c.walk(src[0])]

    assert asyncio.run(main()) == [".dockerignore", "Dockerfile", "keep"]


# -- the client -------------------------------------------------------------------------


def test_manifest_matches_the_full_tar(ctx: Path, tmp_path: Path) -> None:
    outside = write(tmp_path, {"other.Dockerfile": "FROM scratch\n"}) / "other.Dockerfile"
    buf = io.BytesIO()
    name = context_tar(str(ctx), str(outside), buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as t:
        in_tar = {m.name: m for m in t.getmembers()}
    name2, records, _ = context_manifest(str(ctx), str(outside))
    assert name == name2 and name.startswith(".dockerfile.")
    assert {r["path"] for r in records} == set(in_tar)
    for r in records:
        m = in_tar[r["path"]]
        assert r["type"] == ("dir" if m.isdir() else "symlink" if m.issym() else "file")
        assert r["mode"] == m.mode or r["type"] == "symlink"
    # the name of an outside Dockerfile, and the key, do not change between builds
    assert context_manifest(str(ctx), str(outside))[0] == name
    assert context_key(str(ctx), None) == context_key(str(ctx) + "/", None)
    assert context_key(str(ctx), None) != context_key(str(ctx), str(outside))
    assert len(context_key(str(ctx), None)) == 32


class FakeClient:
    """``build_context_check``/``image_build`` over a real ContextCache, in-process."""

    def __init__(self, cache: ContextCache | None, *, lie: bool = False) -> None:
        self.cache = cache
        self.lie = lie  # answer "nothing needed" whatever the daemon holds
        self.builds: list[tuple[dict[str, Any], bytes]] = []

    def build_context_check(self, key: str, entries: Sequence[Mapping[str, Any]]
                            ) -> list[str] | None:
        if self.cache is None:
            return None
        need = self.cache.need(key, {"entries": list(entries)})
        return [] if self.lie else need

    def image_build(self, context: Any, **kw: Any) -> Iterator[dict[str, Any]]:
        body = context.read()
        self.builds.append((kw, body))
        key = kw.get("ketch_context")
        if key is not None:
            assert self.cache is not None
            sync(self.cache, key, io.BytesIO(body))
        return iter([{"stream": "ok\n"}])


def test_start_build_syncs_and_sends_only_changes(ctx: Path, cache: ContextCache) -> None:
    client = FakeClient(cache)
    first = start_build(client, str(ctx), None, tags=["t"])  # type: ignore[arg-type]
    assert first.synced and first.files == first.total_files == 4
    again = start_build(client, str(ctx), None, tags=["t"])  # type: ignore[arg-type]
    assert again.files == 0 and again.body_bytes < 4096 < first.body_bytes
    assert client.builds[-1][0] == {"dockerfile": "Dockerfile",
                                    "ketch_context": context_key(str(ctx), None),
                                    "tags": ["t"]}
    full = start_build(client, str(ctx), None, context_cache=False)  # type: ignore[arg-type]
    assert not full.synced and "ketch_context" not in client.builds[-1][0]
    assert full.body_bytes > 5000


def test_start_build_falls_back_and_retries(ctx: Path, cache: ContextCache) -> None:
    dockerd = FakeClient(None)
    sent = start_build(dockerd, str(ctx), None)  # type: ignore[arg-type]
    assert not sent.synced and "ketch_context" not in dockerd.builds[0][0]
    with tarfile.open(fileobj=io.BytesIO(dockerd.builds[0][1])) as t:
        assert ".ketch-context.json" not in t.getnames() and "big" in t.getnames()
    liar = FakeClient(cache, lie=True)  # a stale answer: the daemon holds nothing
    sent = start_build(liar, str(ctx), None)  # type: ignore[arg-type]
    assert sent.synced and sent.retried and sent.files == 4
    assert len(liar.builds) == 2 and sent.sent_bytes > sent.body_bytes

    class Always409(FakeClient):
        def image_build(self, context: Any, **kw: Any) -> Iterator[dict[str, Any]]:
            self.builds.append((kw, context.read()))
            raise Conflict(CHANGED)

    stubborn = Always409(cache)
    with pytest.raises(Conflict):
        start_build(stubborn, str(ctx), None)  # type: ignore[arg-type]
    assert len(stubborn.builds) == 2  # once more, then the error


# -- the router -------------------------------------------------------------------------


class CacheBackend:
    def __init__(self, cache: ContextCache) -> None:
        self.cache = cache

    async def build(self, *a: Any) -> str:
        raise AssertionError("not here")

    async def build_synced(self, *a: Any) -> str:
        raise AssertionError("not here")

    async def context_need(self, key: str, manifest: object) -> list[str]:
        return await asyncio.to_thread(self.cache.need, key, manifest)

    async def prune_contexts(self) -> tuple[list[str], int]:
        return await self.cache.prune()


def test_router_check_and_prune(ctx: Path, cache: ContextCache) -> None:
    router = BuildRouter(CacheBackend(cache))
    records, hosts = manifest(ctx)

    def req(path: str, body: bytes, key: str = KEY) -> Request:
        r = Request("POST", path, "HTTP/1.1", Headers([]), body=body)
        r.params = {"key": key}
        return r

    body = json.dumps({"entries": records}).encode()
    resp = asyncio.run(router.context_need(req(f"/ketch/build/contexts/{KEY}", body)))
    assert resp.status == 200
    assert isinstance(resp.body, bytes)
    assert json.loads(resp.body)["need"] == ["Dockerfile", "a.txt", "big", "sub/b.txt"]
    with pytest.raises(InvalidArgument):
        asyncio.run(router.context_need(req("/ketch/build/contexts/x", body, "x")))
    with pytest.raises(InvalidArgument):
        asyncio.run(router.context_need(req(f"/ketch/build/contexts/{KEY}", b"{")))
    sync(cache, KEY, tar_of(records, hosts, None))
    resp = asyncio.run(router.prune(req("/build/prune", b"")))
    assert isinstance(resp.body, bytes)
    out = json.loads(resp.body)
    assert out["CachesDeleted"] == [KEY] and out["SpaceReclaimed"] >= 5000
    assert cache.keys() == []


def test_body_reader_fills_each_read_in_one_hop() -> None:
    class Stream:
        def __init__(self, data: bytes) -> None:
            self.data, self.calls = data, 0

        async def read(self, n: int = 1 << 20) -> bytes:
            raise AssertionError("readinto is used when there is one")

        async def readinto(self, buf: bytearray) -> int:  # as BodyStream: fills it all
            self.calls += 1
            await asyncio.sleep(0)
            k = min(len(buf), len(self.data))
            buf[:k] = self.data[:k]
            self.data = self.data[k:]
            return k

    size = (5 << 20) + 123
    stream = Stream(b"y" * size)

    async def main() -> list[int]:
        reader = BodyReader(stream, asyncio.get_running_loop())
        sizes: list[int] = []

        def work() -> None:
            while part := reader.read(1 << 20):
                sizes.append(len(part))
            buf = bytearray(10)
            sizes.append(reader.readinto(buf))

        t = threading.Thread(target=work)
        t.start()
        while t.is_alive():
            await asyncio.sleep(0.005)
        return sizes

    assert asyncio.run(main()) == [1 << 20] * 5 + [123, 0]
    # one hop per full read; a short one asks once more (the end, or a pending error);
    # then the end, seen by the last read() and by readinto()
    assert stream.calls == 5 + 2 + 1 + 1
