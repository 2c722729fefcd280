"""Build context: safe tar extraction, COPY source resolution, content hashing."""

from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path

import pytest

from ketch.errors import InvalidArgument
from ketch.image.build.context import BuildContext, Source
from ketch.image.build.instructions import DockerfileError


@pytest.fixture
def ctx_dir(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "main.c").write_text("int main;\n")
    (root / "src" / "util.c").write_text("util\n")
    (root / "src" / "pkg" / "a.h").write_text("a\n")
    (root / "README.md").write_text("readme\n")
    (root / "build").mkdir()
    (root / "build" / "out.o").write_text("obj\n")
    (root / "build" / "keep.txt").write_text("keep\n")
    (root / "Dockerfile").write_text("FROM scratch\n")
    (root / "link-to-src").symlink_to("src")
    (root / "src" / "rel-link").symlink_to("../README.md")
    (root / "abs-link").symlink_to("/etc")
    (root / "up-link").symlink_to("../outside")
    (tmp_path / "outside").write_text("secret\n")
    (root / ".dockerignore").write_text("build\n!build/keep.txt\n*.md\n")
    return root


def resolve(ctx: BuildContext, *srcs: str, dest: str | None = None) -> list[tuple[str, bool]]:
    return [(s.path, s.is_dir) for s in ctx.resolve(srcs, line=5, dest=dest)]


def test_resolve_files_dirs_and_in_context_symlinks(ctx_dir: Path) -> None:
    ctx = BuildContext.from_directory(str(ctx_dir))
    assert resolve(ctx, "src/main.c") == [("src/main.c", False)]
    assert resolve(ctx, "/src/./main.c") == [("src/main.c", False)]  # rooted at the context
    assert resolve(ctx, ".") == [("", True)]
    assert resolve(ctx, "src") == [("src", True)]
    assert resolve(ctx, "link-to-src/main.c") == [("src/main.c", False)]
    assert resolve(ctx, "src/pkg/../util.c") == [("src/util.c", False)]


def test_globs(ctx_dir: Path) -> None:
    ctx = BuildContext.from_directory(str(ctx_dir))
    assert resolve(ctx, "src/*.c", dest="/app/") == [("src/main.c", False), ("src/util.c", False)]
    assert resolve(ctx, "s?c/p*") == [("src/pkg", True)]
    assert resolve(ctx, "src/[m]ain.c") == [("src/main.c", False)]
    with pytest.raises(DockerfileError, match="no source files were specified") as info:
        resolve(ctx, "*.go")
    assert info.value.line == 5
    with pytest.raises(DockerfileError, match="destination must be a directory"):
        resolve(ctx, "src/*.c", dest="/app")


@pytest.mark.parametrize(("src", "problem"), [
    ("../outside", "forbidden path outside the build context: ../outside"),
    ("src/../../outside", "forbidden path outside the build context"),
    ("abs-link/passwd", "forbidden path outside the build context: abs-link/passwd "
     "(symlink abs-link points to /etc)"),
    ("up-link", "forbidden path outside the build context: up-link"),
    ("nope.txt", "file not found in build context or excluded by .dockerignore: "
     "stat nope.txt: file does not exist"),
    ("README.md", "file not found in build context or excluded by .dockerignore"),
    ("build/out.o", "file not found in build context or excluded by .dockerignore"),
])
def test_resolve_errors_name_the_line(ctx_dir: Path, src: str, problem: str) -> None:
    ctx = BuildContext.from_directory(str(ctx_dir))
    with pytest.raises(DockerfileError) as info:
        ctx.resolve([src], line=7)
    assert info.value.line == 7
    assert str(info.value).startswith("Dockerfile:7: COPY failed: ")
    assert problem in str(info.value)


def test_symlink_inside_a_copied_tree_is_copied_as_a_link(ctx_dir: Path) -> None:
    ctx = BuildContext.from_directory(str(ctx_dir))
    entries = {e.path: e for e in ctx.walk(Source("src", "src", True))}
    assert sorted(entries) == ["main.c", "pkg", "pkg/a.h", "rel-link", "util.c"]
    assert entries["rel-link"].kind == "symlink" and entries["rel-link"].target == "../README.md"
    assert entries["pkg"].kind == "dir"


def test_dockerignore_applies_to_directory_copies(ctx_dir: Path) -> None:
    ctx = BuildContext.from_directory(str(ctx_dir))
    root = {e.path for e in ctx.walk(ctx.resolve(["."], line=1)[0])}
    assert "README.md" not in root and "build/out.o" not in root
    assert "build/keep.txt" in root           # re-included by !build/keep.txt
    assert "build" not in root                # the excluded directory itself is not sent
    assert "Dockerfile" in root and "src/main.c" in root
    plain = BuildContext.from_directory(str(ctx_dir), dockerignore=False)
    assert "README.md" in {e.path for e in plain.walk(plain.resolve(["."], line=1)[0])}
    # the Dockerfile is read even when .dockerignore would exclude it
    assert ctx.read_file("Dockerfile") == b"FROM scratch\n"


def test_digest_tracks_content_mode_and_name_not_mtime(ctx_dir: Path) -> None:
    ctx = BuildContext.from_directory(str(ctx_dir))

    def digest() -> str:
        return ctx.digest(ctx.resolve(["src"], line=1))

    first = digest()
    assert first.startswith("sha256:") and digest() == first
    os.utime(ctx_dir / "src" / "main.c", (1, 1))
    assert digest() == first                                   # mtime: same key
    (ctx_dir / "src" / "main.c").write_text("int main(void);\n")
    changed = digest()
    assert changed != first                                    # content
    os.chmod(ctx_dir / "src" / "util.c", 0o755)
    assert digest() != changed                                 # mode
    before_rename = digest()
    os.rename(ctx_dir / "src" / "util.c", ctx_dir / "src" / "util2.c")
    assert digest() != before_rename                           # name
    # a file outside the copied tree does not matter
    before = digest()
    (ctx_dir / "other.txt").write_text("x")
    assert digest() == before


def test_digest_cache_avoids_rereading_unchanged_files(ctx_dir: Path) -> None:
    ctx = BuildContext.from_directory(str(ctx_dir))
    cache: dict[tuple[str, int, int, int, int, int], str] = {}
    srcs = ctx.resolve(["src/main.c"], line=1)
    first = ctx.digest(srcs, cache=cache)
    assert len(cache) == 1
    key = next(iter(cache))
    cache[key] = "sha256:" + "0" * 64   # the cache is trusted while the stat matches
    assert ctx.digest(srcs, cache=cache) != first
    (ctx_dir / "src" / "main.c").write_text("new\n")   # a new stat: re-read
    assert ctx.digest(srcs, cache=cache) not in (first, "sha256:" + "0" * 64)


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    buf.seek(0)
    return buf


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def test_from_tar(tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    stream = _tar([_file("./Dockerfile", b"FROM scratch\n"), _file("app/run.sh", b"#!", 0o755),
                   _link("app/alias", "run.sh"), _link("app/hard", "app/run.sh", tarfile.LNKTYPE),
                   _file(".dockerignore", b"*.tmp\n"), _file("x.tmp", b"t")])
    ctx = BuildContext.from_tar(stream, str(work))
    assert ctx.read_file("Dockerfile") == b"FROM scratch\n"
    assert (work / "app" / "run.sh").stat().st_mode & 0o777 == 0o755
    assert os.readlink(work / "app" / "alias") == "run.sh"
    assert (work / "app" / "hard").read_bytes() == b"#!"
    assert [s.path for s in ctx.resolve(["app/alias"], line=1)] == ["app/run.sh"]
    with pytest.raises(DockerfileError, match=re.escape("excluded by .dockerignore")):
        ctx.resolve(["x.tmp"], line=2)


@pytest.mark.parametrize(("members", "problem"), [
    ([_file("/etc/evil", b"x")], "absolute path"),
    ([_file("a/../../evil", b"x")], "climbs out of the context"),
    ([_link("esc", "/tmp"), _file("esc/evil", b"x")], "under a non-directory"),
    ([_link("hl", "../../etc/passwd", tarfile.LNKTYPE)], "climbs out of the context"),
    ([_link("d", "/etc"), _link("hl", "d/passwd", tarfile.LNKTYPE)], "hard link"),
])
def test_from_tar_refuses_escapes(tmp_path: Path,
                                  members: list[tuple[tarfile.TarInfo, bytes | None]],
                                  problem: str) -> None:
    work = tmp_path / "w"
    work.mkdir()
    with pytest.raises(InvalidArgument, match=problem):
        BuildContext.from_tar(_tar(members), str(work))
    assert not (tmp_path / "evil").exists()


def test_from_tar_broken_stream(tmp_path: Path) -> None:
    good = _tar([_file("a", b"x" * 10000)]).getvalue()
    with pytest.raises(InvalidArgument, match="failed to read build context"):
        BuildContext.from_tar(io.BytesIO(good[:1500]), str(tmp_path))
    with pytest.raises(InvalidArgument, match="failed to read build context"):
        BuildContext.from_tar(io.BytesIO(b"not a tar at all" * 64), str(tmp_path))
