""".dockerignore: docker's pattern semantics, exceptions, and safe pruning."""

from __future__ import annotations

import pytest

from ketch.errors import InvalidArgument
from ketch.image.build.dockerignore import DockerIgnore, clean_path

CASES = [
    # (patterns, path, excluded)
    (["foo"], "foo", True),
    (["foo"], "foo/bar/baz", True),          # a directory takes what is under it
    (["foo"], "foobar", False),
    (["foo"], "x/foo", False),               # patterns are rooted at the context
    (["/foo"], "foo", True),                 # a leading / is dropped
    (["./foo/"], "foo/x", True),             # cleaned like a path
    (["foo//bar/../baz"], "foo/baz", True),
    (["*.md"], "README.md", True),
    (["*.md"], "docs/README.md", False),     # * does not cross /
    (["*/*.md"], "docs/README.md", True),
    (["**/*.md"], "README.md", True),        # ** matches zero directories too
    (["**/*.md"], "a/b/c/README.md", True),
    (["docs/**"], "docs/a/b", True),
    (["docs/**"], "docs", False),
    (["**"], "anything/at/all", True),
    (["a/**/b"], "a/b", True),
    (["a/**/b"], "a/x/y/b", True),
    (["a/**/b"], "a/x/y/c", False),
    (["**/tmp"], "tmp", True),
    (["**/tmp"], "x/tmp/file", True),
    (["**/tmp"], "xtmp", False),
    (["?.txt"], "a.txt", True),
    (["?.txt"], "ab.txt", False),
    (["[a-c].txt"], "b.txt", True),
    (["[^a-c].txt"], "b.txt", False),
    (["[^a-c].txt"], "d.txt", True),
    (["a\\*b"], "a*b", True),
    (["a\\*b"], "axb", False),
    (["file.(x)"], "file.(x)", True),        # regex characters are literal
    (["# comment", "x"], "# comment", False),
    (["  # not a comment"], "# not a comment", True),
    (["*.log", "!keep.log"], "keep.log", False),
    (["*.log", "!keep.log"], "drop.log", True),
    (["!keep.log", "*.log"], "keep.log", True),      # the last matching line wins
    (["build", "!build/out"], "build/out/bin", False),
    (["build", "!build/out"], "build/tmp", True),
    (["build/tmp", "!build"], "build/tmp/x", False),  # an exception on a parent re-includes
    (["*", "!src"], "src/main.c", False),
    (["*", "!src"], "Makefile", True),
]


@pytest.mark.parametrize(("patterns", "path", "excluded"), CASES)
def test_excluded(patterns: list[str], path: str, excluded: bool) -> None:
    assert DockerIgnore.from_lines(patterns).excluded(path) is excluded


def test_parse_file_text() -> None:
    ign = DockerIgnore.parse(b"\xef\xbb\xbf# comment\n\n  node_modules  \n!node_modules/keep\n"
                             b".git\n")
    assert [(p.text, p.exclusion) for p in ign.patterns] == [
        ("node_modules", False), ("node_modules/keep", True), (".git", False)]
    assert ign.excluded(".git/config") and not ign.excluded("node_modules/keep/x")
    assert not DockerIgnore.parse("")


@pytest.mark.parametrize(("line", "message"), [
    ("!", 'illegal exclusion pattern: "!"'),
    ("[a-", "syntax error in pattern"),
    ("abc\\", "syntax error in pattern"),
])
def test_bad_patterns(line: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match="^" + message.replace("[", "\\[")):
        DockerIgnore.from_lines([line])


@pytest.mark.parametrize(("patterns", "directory", "prunable"), [
    (["build"], "build", True),
    (["build"], "src", False),                       # not excluded at all
    (["build", "!build/keep"], "build", False),
    (["build", "!build/keep"], "build/other", True),
    (["build", "!*/keep"], "build", False),          # a wildcard exception may match inside
    (["build", "!**/*.md"], "build", False),
    (["build", "!src/*.md"], "build", True),
    (["a/b", "!a"], "a/b", False),                   # excluded? no: re-included by the parent
    (["**/node_modules", "!x/node_modules/y"], "z/node_modules", True),
    (["**/node_modules", "!x/node_modules/y"], "x/node_modules", False),
])
def test_prunable(patterns: list[str], directory: str, prunable: bool) -> None:
    assert DockerIgnore.from_lines(patterns).prunable(directory) is prunable


def test_pruning_never_hides_what_excluded_would_keep() -> None:
    """Exhaustively: if a directory is prunable, nothing below it is included."""
    ign = DockerIgnore.from_lines(["*", "!a/*/k*", "b", "!b/c/d"])
    tree = [f"{x}/{y}/{z}" for x in "abc" for y in "cxy" for z in ("d", "k1", "e")]
    for path in tree:
        parts = path.split("/")
        for i in range(1, len(parts)):
            directory = "/".join(parts[:i])
            if ign.prunable(directory):
                assert ign.excluded(path), (directory, path)


@pytest.mark.parametrize(("path", "cleaned"), [
    ("", "."), ("a//b/./c/..", "a/b"), ("//x", "/x"), ("/../a", "/a"), ("../a", "../a"),
])
def test_clean_path(path: str, cleaned: str) -> None:
    assert clean_path(path) == cleaned
