"""``.dockerignore``: which paths of a build context the build does not see.

The file is read as docker reads it:

- a line whose *first* character is ``#`` is a comment (``  # x`` is a pattern);
  blank lines are skipped; lines are trimmed;
- ``!pattern`` is an exception: it re-includes what earlier lines excluded;
- each pattern is cleaned like a path (``./a//b/`` → ``a/b``) and a leading ``/`` is
  dropped, so patterns are always relative to the context root;
- patterns are Go ``filepath.Match`` patterns (``*`` and ``?`` do not cross ``/``,
  ``[a-z]``, ``[^a]``, ``\\`` escapes) plus ``**``, which matches any number of
  directories (``**/*.go``, ``docs/**``);
- the *last* matching line wins, and a pattern that matches a directory matches
  everything under it (``build`` excludes ``build/x/y``).

:meth:`DockerIgnore.excluded` answers for one path. A walk that wants to skip a whole
excluded directory asks :meth:`DockerIgnore.prunable`: false when an exception could
re-include something below it (``!build/keep``, ``!**/*.md``), so pruning never
drops a file docker would send.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from ketch.errors import InvalidArgument

__all__ = ["DockerIgnore", "Pattern", "clean_path"]


def clean_path(path: str) -> str:
    """Go's ``filepath.Clean`` for ``/``-separated paths (``""`` → ``"."``)."""
    if not path:
        return "."
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


class _Kind(Enum):
    EXACT = 1
    PREFIX = 2
    SUFFIX = 3
    REGEXP = 4


def _char_class(pattern: str, i: int) -> tuple[str, int]:
    """Translate ``[...]`` starting at ``pattern[i] == "["``; returns (regex, next i)."""
    out = ["["]
    i += 1
    if i < len(pattern) and pattern[i] == "^":
        out.append("^")
        i += 1
    first = True
    while i < len(pattern):
        ch = pattern[i]
        if ch == "]" and not first:
            out.append("]")
            return "".join(out), i + 1
        if ch == "\\":
            i += 1
            if i >= len(pattern):
                break
            ch = pattern[i]
        elif ch == "-" and not first and i + 1 < len(pattern) and pattern[i + 1] != "]":
            out.append("-")
            i += 1
            first = False
            continue
        out.append(re.escape(ch))
        first = False
        i += 1
    raise InvalidArgument("syntax error in pattern")


@dataclass(frozen=True, slots=True)
class Pattern:
    """One ``.dockerignore`` line: its cleaned text and whether it is a ``!`` exception."""

    text: str
    exclusion: bool
    _kind: _Kind
    _regex: re.Pattern[str] | None

    @classmethod
    def compile(cls, text: str, exclusion: bool) -> Pattern:
        """Compile *text* (already cleaned); ``InvalidArgument`` for a bad pattern."""
        if text.endswith("\\") and not text.endswith("\\\\"):
            raise InvalidArgument(f"syntax error in pattern: {text}")
        kind = _Kind.EXACT
        rx: list[str] = ["^"]
        i, n = 0, len(text)
        first = True
        while i < n:
            ch = text[i]
            i += 1
            if ch == "*":
                if i < n and text[i] == "*":
                    i += 1
                    if i < n and text[i] == "/":
                        i += 1
                    if i >= n:
                        if kind == _Kind.EXACT:
                            kind = _Kind.PREFIX
                        else:
                            rx.append(".*")
                            kind = _Kind.REGEXP
                    else:
                        rx.append("(.*/)?")
                        kind = _Kind.REGEXP
                    if first:
                        kind = _Kind.SUFFIX
                else:
                    rx.append("[^/]*")
                    kind = _Kind.REGEXP
            elif ch == "?":
                rx.append("[^/]")
                kind = _Kind.REGEXP
            elif ch == "\\":
                if i < n:
                    rx.append(re.escape(text[i]))
                    i += 1
                    kind = _Kind.REGEXP
                else:
                    rx.append("\\\\")
            elif ch == "[":
                part, i = _char_class(text, i - 1)
                rx.append(part)
                kind = _Kind.REGEXP
            else:
                rx.append(re.escape(ch))
            first = False
        rx.append("$")
        regex = None
        if kind == _Kind.REGEXP:
            try:
                regex = re.compile("".join(rx), re.DOTALL)
            except re.error as e:
                raise InvalidArgument(f"syntax error in pattern: {text}: {e}") from None
        return cls(text, exclusion, kind, regex)

    def match(self, path: str) -> bool:
        """Whether this pattern matches *path* itself (no parent rule)."""
        if self._kind == _Kind.EXACT:
            return path == self.text
        if self._kind == _Kind.PREFIX:
            return path.startswith(self.text[:-2])
        if self._kind == _Kind.SUFFIX:
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
        assert self._regex is not None
        return self._regex.match(path) is not None

    def could_match_below(self, directory: str) -> bool:
        """Whether this pattern may match *directory*, an ancestor of it, or a path under it."""
        segments = self.text.split("/")
        dirs = directory.split("/")
        for i, seg in enumerate(segments):
            if "**" in seg:
                return True
            if i >= len(dirs):
                return True  # the pattern goes deeper than the directory
            if not Pattern.compile(seg, False).match(dirs[i]):
                return False
        return True  # matches the directory or one of its ancestors


class DockerIgnore:
    """The compiled patterns of one ``.dockerignore``, in file order."""

    def __init__(self, patterns: Iterable[Pattern] = ()) -> None:
        self.patterns: tuple[Pattern, ...] = tuple(patterns)
        self._exceptions = tuple(p for p in self.patterns if p.exclusion)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __repr__(self) -> str:
        shown = ["!" + p.text if p.exclusion else p.text for p in self.patterns]
        return f"DockerIgnore({shown!r})"

    @classmethod
    def parse(cls, text: str | bytes) -> DockerIgnore:
        """Read a ``.dockerignore`` file's content; ``InvalidArgument`` for a bad line."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if text.startswith("\ufeff"):
            text = text[1:]
        return cls.from_lines(text.splitlines())

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> DockerIgnore:
        """Compile pattern lines (comments and blanks allowed, as in the file)."""
        patterns = []
        for raw in lines:
            if raw.startswith("#"):
                continue
            line = raw.strip()
            if not line:
                continue
            exclusion = line.startswith("!")
            if exclusion:
                line = line[1:].strip()
                if not line:
                    raise InvalidArgument('illegal exclusion pattern: "!"')
            line = clean_path(line)
            if len(line) > 1 and line.startswith("/"):
                line = line[1:]
            patterns.append(Pattern.compile(line, exclusion))
        return cls(patterns)

    def excluded(self, path: str) -> bool:
        """Whether the context path *path* (relative, ``/``-separated) is left out."""
        path = clean_path(path.lstrip("/")) if path else "."
        parent = posixpath.dirname(path)
        parents = parent.split("/") if parent else []
        matched = False
        for pat in self.patterns:
            if pat.exclusion != matched:
                continue
            hit = pat.match(path)
            if not hit:
                for i in range(len(parents)):
                    if pat.match("/".join(parents[:i + 1])):
                        hit = True
                        break
            if hit:
                matched = not pat.exclusion
        return matched

    def prunable(self, directory: str) -> bool:
        """Whether a walk may skip *directory* and everything under it.

        True only when the directory is excluded and no ``!`` exception could bring
        back anything inside it.
        """
        if not self.excluded(directory):
            return False
        directory = clean_path(directory)
        return not any(p.could_match_below(directory) for p in self._exceptions)
