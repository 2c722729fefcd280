"""Dockerfile text → typed instructions, with docker's reading rules.

``parse(text)`` returns a :class:`Dockerfile`: the parser directives and one record of
:mod:`ketch.image.build.instructions` per logical line, in order. It checks what can be
checked on the text alone (unknown instructions, flags, argument counts, JSON forms,
heredocs); stages, ARG scoping and ``--from`` references are the planner's
(:mod:`ketch.image.build.plan`). Errors are ``DockerfileError`` naming the line.

How the text is read, as docker reads it:

- **Directives** (``# syntax=``, ``# escape=``, ``# check=``) count only at the very
  top: the first line that is not one (a blank line, another comment, an instruction or
  an unknown directive) ends them. ``escape`` is ``\\`` (default) or a backtick.
- **Comments** are lines whose first non-blank character is ``#``; blank lines are
  skipped. A ``#`` elsewhere is text.
- **Continuations**: a line ending in the escape character (blanks after it allowed)
  continues on the next. Comment lines and blank lines inside a continuation are
  skipped; the continued lines keep their leading blanks.
- **Keyword and flags**: the first word is the instruction (any case); leading
  ``--name[=value]`` words are its flags (``--`` ends them).
- **JSON form**: RUN, CMD, ENTRYPOINT, SHELL, HEALTHCHECK CMD, COPY, ADD and VOLUME take
  an argument that parses as a JSON array as the exec/list form. Text that is not valid
  JSON (``[oops``) is the shell form; a valid array of anything but strings
  (``[1, 2]``) is an error. Anything after the closing bracket is ignored, as Go's
  decoder does.
- **Heredocs**: on RUN, COPY and ADD (not in JSON form, also behind ONBUILD), each word
  ``[n]<<[-]NAME`` opens a here-document read from the following lines up to a line
  that is exactly ``NAME`` (after stripping leading tabs for ``<<-``). A quoted
  delimiter (``<<'EOF'``, ``<<"EOF"``) makes the body literal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ketch.errors import InvalidArgument
from ketch.image.build import instructions as ins
from ketch.image.build.expand import heredoc_name, heredoc_words
from ketch.image.changes import parse_duration

__all__ = ["KEYWORDS", "Dockerfile", "parse", "parse_trigger"]

KEYWORDS = frozenset({
    "add", "arg", "cmd", "copy", "entrypoint", "env", "expose", "from", "healthcheck",
    "label", "maintainer", "onbuild", "run", "shell", "stopsignal", "user", "volume",
    "workdir",
})
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_KNOWN_DIRECTIVES = ("syntax", "escape", "check")
_WS = re.compile(r"[\t\v\f\r ]+")
_HEREDOC = re.compile(r"^(\d*)<<(-?)([^<]*)$")
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9-_.]*$")
_HEREDOC_KEYWORDS = ("run", "copy", "add")
_MIN_DURATION_NS = 1_000_000
_NETWORK_MODES = ("default", "none", "host")


@dataclass(frozen=True, slots=True)
class Dockerfile:
    """A parsed Dockerfile: its directives and instructions, in file order.

    ``escape`` is the escape character the file declared (it also governs variable
    expansion). ``warnings`` are docker's non-fatal remarks (empty continuation lines,
    legacy ``ENV k v``, MAINTAINER), each naming its line.
    """

    instructions: tuple[ins.Instruction, ...]
    escape: str = "\\"
    syntax: str | None = None
    warnings: tuple[str, ...] = ()


class _Error(Exception):
    """A problem found while building one record; the caller adds the line."""


def parse(source: str | bytes) -> Dockerfile:
    """Parse a whole Dockerfile (bytes are read as UTF-8, a leading BOM dropped)."""
    text = source.decode("utf-8", "replace") if isinstance(source, bytes) else source
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    escape, syntax = "\\", None
    seen: set[str] = set()
    for n, raw in enumerate(lines, 1):
        m = _DIRECTIVE.match(raw.lstrip())
        if m is None or m.group(1).lower() not in _KNOWN_DIRECTIVES:
            break
        key, value = m.group(1).lower(), m.group(2)
        if key in seen:
            raise ins.DockerfileError(n, f"only one {key} parser directive can be used")
        seen.add(key)
        if key == "escape":
            if value not in ("\\", "`"):
                raise ins.DockerfileError(
                    n, f"invalid escape token '{value}' does not match ^[\\\\`]$")
            escape = value
        elif key == "syntax":
            syntax = value
    warnings: list[str] = []
    out = _Reader(lines, escape, warnings).read()
    return Dockerfile(tuple(out), escape, syntax, tuple(warnings))


def parse_trigger(expression: str, *, line: int = 1, escape: str = "\\") -> ins.Instruction:
    """Parse one ONBUILD trigger as stored in an image (heredoc bodies included).

    The executor calls this for the base image's ``OnBuild`` list when a stage starts;
    *line* is the FROM line, so errors point at it.
    """
    found = _Reader(expression.split("\n"), escape, []).read()
    if len(found) != 1:
        raise ins.DockerfileError(line, f"invalid ONBUILD trigger: {expression!r}")
    trig = found[0]
    if isinstance(trig, (ins.OnBuild, ins.From, ins.Maintainer)):
        raise ins.DockerfileError(line, f"{trig.keyword} isn't allowed as an ONBUILD trigger")
    return trig


def _is_comment(raw: str) -> bool:
    return raw.lstrip().startswith("#")


class _Reader:
    """Walks the lines: continuations, comments, heredoc bodies → records."""

    def __init__(self, lines: Sequence[str], escape: str, warnings: list[str]) -> None:
        self.lines = lines
        self.escape = escape
        self.cont = re.compile(re.escape(escape) + r"[ \t]*$")
        self.warnings = warnings

    def trim_cont(self, s: str) -> tuple[str, bool]:
        m = self.cont.search(s)
        if m is None:
            return s, True
        return s[:m.start()], False

    def read(self) -> list[ins.Instruction]:
        out: list[ins.Instruction] = []
        lines, i = self.lines, 0
        while i < len(lines):
            raw = lines[i]
            i += 1
            start = i
            if _is_comment(raw):
                continue
            line, done = self.trim_cont(raw.lstrip())
            if done and not line.strip():
                continue
            empty_cont = False
            while not done and i < len(lines):
                raw = lines[i]
                i += 1
                if _is_comment(raw):
                    continue
                if not raw.strip():
                    empty_cont = True
                    continue
                part, done = self.trim_cont(raw)
                line += part
            if not line.strip():
                continue
            if empty_cont:
                self.warnings.append(f"line {start}: empty continuation line")
            heredocs: list[ins.Heredoc] = []
            if "<<" in line and self.can_heredoc(line):
                for fd, chomp, name, expand in self.markers(line):
                    body: list[str] = []
                    while True:
                        if i >= len(lines):
                            raise ins.DockerfileError(start, "unterminated heredoc")
                        raw = lines[i]
                        i += 1
                        if (raw.lstrip("\t") if chomp else raw) == name:
                            break
                        body.append(raw + "\n")
                    heredocs.append(ins.Heredoc(name, "".join(body), expand, chomp, fd))
            try:
                out.append(self.record(line, start, i, tuple(heredocs)))
            except _Error as e:
                raise ins.DockerfileError(start, str(e)) from None
            except InvalidArgument as e:
                raise ins.DockerfileError(start, str(e)) from None
        return out

    def can_heredoc(self, line: str) -> bool:
        kw, _, rest = _split_command(line)
        if kw.lower() == "onbuild":
            kw, _, rest = _split_command(rest)
        if kw.lower() not in _HEREDOC_KEYWORDS:
            return False
        try:
            return _parse_json(rest) is None
        except _Error:
            return False

    def markers(self, line: str) -> list[tuple[int, bool, str, bool]]:
        found = []
        for word in heredoc_words(line):
            m = _HEREDOC.match(word)
            if m is None or not m.group(3):
                continue
            named = heredoc_name(m.group(3))
            if named is None:
                continue
            found.append((int(m.group(1) or 0), m.group(2) == "-", named[0], named[1]))
        return found

    # -- records ---------------------------------------------------------------------

    def record(self, line: str, start: int, end: int,
               heredocs: tuple[ins.Heredoc, ...]) -> ins.Instruction:
        cmd, flags, rest = _split_command(line)
        kw = cmd.lower()
        if kw not in KEYWORDS:
            raise _Error(f"unknown instruction: {cmd}")
        common = {"line": start, "end_line": end, "original": line}
        if kw == "onbuild":
            return self.onbuild(rest, flags, heredocs, common)
        return _BUILDERS[kw](self, rest, flags, heredocs, common)

    def onbuild(self, rest: str, flags: list[str], heredocs: tuple[ins.Heredoc, ...],
                common: dict[str, Any]) -> ins.Instruction:
        if not rest:
            raise _Error("ONBUILD requires at least one argument")
        _flags(flags, {})
        sub = _split_command(rest)[0].upper()
        if sub == "ONBUILD":
            raise _Error("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
        if sub in ("MAINTAINER", "FROM"):
            raise _Error(f"{sub} isn't allowed as an ONBUILD trigger")
        trigger = self.record(rest, common["line"], common["end_line"], heredocs)
        expression = re.sub(r"(?i)^\s*ONBUILD\s*", "", str(common["original"]))
        for h in heredocs:
            expression += "\n" + h.content + h.name
        return ins.OnBuild(trigger=trigger, expression=expression, **common)

    def words(self, rest: str) -> list[str]:
        return _parse_words(rest, self.escape)


_Builder = Callable[
    [_Reader, str, list[str], tuple[ins.Heredoc, ...], dict[str, Any]], ins.Instruction]


# -- lexing helpers -----------------------------------------------------------------------

def _split_command(line: str) -> tuple[str, list[str], str]:
    parts = _WS.split(line.strip(), maxsplit=1)
    if len(parts) < 2:
        return parts[0], [], ""
    rest, flags = _extract_flags(parts[1])
    return parts[0], flags, rest.strip()


def _extract_flags(line: str) -> tuple[str, list[str]]:
    """Leading ``--flag[=value]`` words (quotes and backslashes as in a word)."""
    words: list[str] = []
    pos, n = 0, len(line)
    while True:
        while pos < n and line[pos].isspace():
            pos += 1
        if pos >= n:
            return "", words
        if not line.startswith("--", pos):
            return line[pos:], words
        word: list[str] = []
        quote = ""
        blank_ok = False
        while pos < n:
            ch = line[pos]
            if quote:
                if ch == quote:
                    quote = ""
                elif ch == "\\" and pos + 1 < n:
                    pos += 1
                    word.append(line[pos])
                elif ch != "\\":
                    word.append(ch)
                pos += 1
                continue
            if ch.isspace():
                break
            if ch in "'\"":
                quote, blank_ok = ch, True
            elif ch == "\\":
                if pos + 1 < n:
                    pos += 1
                    word.append(line[pos])
            else:
                word.append(ch)
            pos += 1
        text = "".join(word)
        if text == "--":
            return line[pos:], words
        if blank_ok or text:
            words.append(text)


def _parse_words(rest: str, escape: str) -> list[str]:
    """Split on blanks outside quotes; quotes and escapes stay in the words."""
    words: list[str] = []
    word: list[str] = []
    quote = ""
    blank_ok = False
    in_word = False
    i, n = 0, len(rest)
    while i < n:
        ch = rest[i]
        if not in_word:
            if ch.isspace():
                i += 1
                continue
            in_word = True
        if quote:
            if ch == quote:
                quote = ""
            elif ch == escape and quote != "'":
                if i + 1 == n:
                    i += 1
                    continue
                word.append(ch)
                i += 1
                ch = rest[i]
            word.append(ch)
            i += 1
            continue
        if ch.isspace():
            if blank_ok or word:
                words.append("".join(word))
            word, blank_ok, in_word = [], False, False
            i += 1
            continue
        if ch in "'\"":
            quote, blank_ok = ch, True
        if ch == escape:
            if i + 1 == n:
                i += 1
                continue
            word.append(ch)
            i += 1
            ch = rest[i]
        word.append(ch)
        i += 1
    if in_word and (blank_ok or word):
        words.append("".join(word))
    return words


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # Go's decoder rejects NaN and Infinity


_JSON = json.JSONDecoder(parse_constant=_no_constant)


def _parse_json(rest: str) -> list[str] | None:
    """The JSON string array at the start of *rest*, None if it is not JSON at all."""
    s = rest.lstrip()
    if not s.startswith("["):
        return None
    try:
        value, _ = _JSON.raw_decode(s)
    except ValueError:
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(v, str) for v in value):
        raise _Error("when using JSON array syntax, arrays must be comprised of strings only")
    return value


def _maybe_json(rest: str) -> tuple[list[str], bool]:
    """RUN/CMD/ENTRYPOINT/SHELL: (argv, True) for JSON, ([text], False) for shell form."""
    if not rest:
        return [], False
    arr = _parse_json(rest)
    if arr is not None:
        return arr, True
    return [rest], False


def _maybe_json_list(rest: str) -> tuple[list[str], bool]:
    """COPY/ADD/VOLUME: a JSON array, or the text split on blanks (no quoting)."""
    arr = _parse_json(rest)
    if arr is not None:
        return arr, True
    return ([w for w in _WS.split(rest) if w] if rest else []), False


FlagSpec = dict[str, str]  # name → "bool" | "string"


def _flags(words: Sequence[str], spec: FlagSpec) -> dict[str, str]:
    """Docker's builder flags: ``--name=value`` strings and ``--name[=true|false]`` bools."""
    out: dict[str, str] = {}
    for word in words:
        if not word.startswith("--"):
            raise _Error(f"arg should start with -- : {word}")
        if word == "--":
            break
        name, eq, value = word[2:].partition("=")
        kind = spec.get(name)
        if kind is None:
            raise _Error(f"unknown flag: --{name}")
        if name in out:
            raise _Error(f"duplicate flag specified: {name}")
        if kind == "bool":
            if eq and not value:
                raise _Error(f"missing a value on flag: {name}")
            if value.lower() not in ("", "true", "false"):
                raise _Error(f"expecting boolean value for flag {name}, not: {value}")
            out[name] = value.lower() or "true"
        else:
            if not eq:
                raise _Error(f"missing a value on flag: {name}")
            out[name] = value
    return out


def _one(kw: str, rest: str) -> str:
    if not rest:
        raise _Error(f"{kw} requires exactly one argument")
    return rest


def _kv_pairs(rest: str, kw: str, escape: str) -> tuple[tuple[ins.KeyValue, ...], bool]:
    """ENV/LABEL: ``k=v ...`` (words keep their quotes) or legacy ``k value``."""
    words = _parse_words(rest, escape)
    if not words:
        raise _Error(f"{kw} requires at least one argument")
    if "=" not in words[0]:
        parts = _WS.split(rest, maxsplit=1)
        if len(parts) < 2 or not parts[1]:
            raise _Error(f"{kw} must have two arguments")
        return (ins.KeyValue(parts[0], parts[1]),), True
    pairs = []
    for word in words:
        if "=" not in word:
            raise _Error(f'Syntax error - can\'t find = in "{word}". '
                         "Must be of the form: name=value")
        key, _, value = word.partition("=")
        if not key:
            raise _Error(f"{kw} names can not be blank")
        pairs.append(ins.KeyValue(key, value))
    return tuple(pairs), False


def _duration(flags: dict[str, str], name: str) -> int:
    text = flags.get(name, "")
    if not text:
        return 0
    ns = parse_duration(text)
    if ns == 0:
        return 0
    if ns < _MIN_DURATION_NS:
        raise _Error(f'Interval "{name}" cannot be less than 1ms')
    return ns


def _dest_is_dir(dest: str) -> bool:
    return dest.endswith("/") or dest in ("", ".", "..") or dest.endswith(("/.", "/.."))


# -- one builder per instruction ----------------------------------------------------------

def _from(r: _Reader, rest: str, flags: list[str], hd: tuple[ins.Heredoc, ...],
          c: dict[str, Any]) -> ins.Instruction:
    args = [w for w in _WS.split(rest) if w] if rest else []
    name = None
    if len(args) == 3 and args[1].lower() == "as":
        name = args[2].lower()
        if not _STAGE_NAME.match(name):
            raise _Error(f'invalid name for build stage: "{args[2]}", name can\'t start '
                         "with a number or contain symbols")
    elif len(args) != 1:
        raise _Error("FROM requires either one or three arguments")
    f = _flags(flags, {"platform": "string"})
    return ins.From(base=args[0], name=name, platform=f.get("platform"), **c)


def _run(r: _Reader, rest: str, flags: list[str], hd: tuple[ins.Heredoc, ...],
         c: dict[str, Any]) -> ins.Instruction:
    f = _flags(flags, {"mount": "string", "network": "string", "security": "string",
                       "device": "string"})
    for unsupported in ("mount", "security", "device"):
        if unsupported in f:
            raise _Error(f"the --{unsupported} option of RUN requires BuildKit; "
                         "ketch's builder does not support it")
    network = f.get("network")
    if network is not None and network not in _NETWORK_MODES:
        raise _Error(f"unsupported network mode {network!r} (one of default, none, host)")
    argv, is_json = _maybe_json(rest)
    if not argv and not is_json:
        raise _Error("RUN requires at least one argument")
    script = False
    if hd and not is_json:
        m = _HEREDOC.match(argv[0].strip())
        script = m is not None and len(hd) == 1 and heredoc_name(m.group(3)) is not None
    return ins.Run(command=tuple(argv), json=is_json, heredocs=hd, script=script,
                   network=network, **c)


def _cmd(r: _Reader, rest: str, flags: list[str], hd: tuple[ins.Heredoc, ...],
         c: dict[str, Any]) -> ins.Instruction:
    _flags(flags, {})
    argv, is_json = _maybe_json(rest)
    if not argv and not is_json:
        raise _Error("CMD requires at least one argument")
    return ins.Cmd(command=tuple(argv), json=is_json, **c)


def _entrypoint(r: _Reader, rest: str, flags: list[str], hd: tuple[ins.Heredoc, ...],
                c: dict[str, Any]) -> ins.Instruction:
    _flags(flags, {})
    argv, is_json = _maybe_json(rest)
    return ins.Entrypoint(command=tuple(argv), json=is_json, **c)


def _shell(r: _Reader, rest: str, flags: list[str], hd: tuple[ins.Heredoc, ...],
           c: dict[str, Any]) -> ins.Instruction:
    _flags(flags, {})
    argv, is_json = _maybe_json(rest)
    if not argv:
        raise _Error("SHELL requires at least one argument")
    if not is_json:
        raise _Error("SHELL requires the arguments to be in JSON form")
    return ins.Shell(shell=tuple(argv), **c)


def _env(r: _Reader, rest: str, flags: list[str], hd: tuple[ins.Heredoc, ...],
         c: dict[str, Any]) -> ins.Instruction:
    _flags(flags, {})
    pairs, legacy = _kv_pairs(rest, "ENV", r.escape)
    if legacy:
        r.warnings.append(f"line {c['line']}: legacy ENV key value form; use ENV key=value")
    return ins.Env(pairs=pairs, legacy=legacy, **c)


def _label(r: _Reader, rest: str, flags: list[str], hd: tuple[ins.Heredoc, ...],
           c: dict[str, Any]) -> ins.Instruction:
    _flags(flags, {})
    pairs, legacy = _kv_pairs(rest, "LABEL", r.escape)
    return ins.Label(pairs=pairs, legacy=legacy, **c)


def _arg(r: _Reader, rest: str, flags: list[str], hd: tuple[ins.Heredoc, ...],
         c: dict[str, Any]) -> ins.Instruction:
    _flags(flags, {})
    words = r.words(rest)
    if not words:
        raise _Error("ARG requires at least one argument")
    decls = []
    for word in words:
        name, eq, default = word.partition("=")
        if eq and not name:
            raise _Error("ARG names can not be blank")
        decls.append(ins.ArgDecl(name, default if eq else None))
    return ins.Arg(args=tuple(decls), **c)


def _expose(r: _Reader, rest: str, flags: list[str], hd: tuple[ins.Heredoc, ...],
            c: dict[str, Any]) -> ins.Instruction:
    ports = sorted(w for w in _WS.split(rest) if w) if rest else []
    if not ports:
        raise _Error("EXPOSE requires at least one argument")
    _flags(flags, {})
    literal = [p for p in ports if "$" not in p and r.escape not in p]
    ins.expose_ports(literal)  # the ones without variables can be checked now
    return ins.Expose(ports=tuple(ports), **c)


def _volume(r: _Reader, rest: str, flags: list[str], hd: tuple[ins.Heredoc, ...],
            c: dict[str, Any]) -> ins.Instruction:
    paths, is_json = _maybe_json_list(rest)
    if not paths:
        raise _Error("VOLUME requires at least one argument")
    _flags(flags, {})
    cleaned = tuple(p.strip() for p in paths)
    if any(not p for p in cleaned):
        raise _Error("VOLUME specified can not be an empty string")
    return ins.Volume(paths=cleaned, json=is_json, **c)


def _user(r: _Reader, rest: str, flags: list[str], hd: tuple[ins.Heredoc, ...],
          c: dict[str, Any]) -> ins.Instruction:
    user = _one("USER", rest)
    _flags(flags, {})
    return ins.User(user=user, **c)


def _workdir(r: _Reader, rest: str, flags: list[str], hd: tuple[ins.Heredoc, ...],
             c: dict[str, Any]) -> ins.Instruction:
    path = _one("WORKDIR", rest)
    _flags(flags, {})
    return ins.Workdir(path=path, **c)


def _stopsignal(r: _Reader, rest: str, flags: list[str], hd: tuple[ins.Heredoc, ...],
                c: dict[str, Any]) -> ins.Instruction:
    sig = _one("STOPSIGNAL", rest)
    _flags(flags, {})
    return ins.StopSignal(signal=sig, **c)


def _maintainer(r: _Reader, rest: str, flags: list[str], hd: tuple[ins.Heredoc, ...],
                c: dict[str, Any]) -> ins.Instruction:
    author = _one("MAINTAINER", rest)
    _flags(flags, {})
    r.warnings.append(f"line {c['line']}: MAINTAINER is deprecated; use LABEL instead")
    return ins.Maintainer(author=author, **c)


def _copy_common(kw: str, rest: str, hd: tuple[ins.Heredoc, ...]
                 ) -> tuple[tuple[str, ...], str, tuple[ins.Heredoc, ...], bool]:
    args, is_json = _maybe_json_list(rest)
    if len(args) < 2:
        raise _Error(f"{kw} requires at least two arguments, but only one was provided. "
                     "Destination could not be determined")
    *srcs, dest = args
    if _HEREDOC.match(dest) and not is_json:
        raise _Error(f"{kw} cannot accept a heredoc as a destination")
    by_name = {h.name: h for h in hd}
    paths: list[str] = []
    inline: list[ins.Heredoc] = []
    for src in srcs:
        m = None if is_json else _HEREDOC.match(src)
        named = heredoc_name(m.group(3)) if m is not None and m.group(3) else None
        if named is not None and named[0] in by_name:
            inline.append(by_name[named[0]])
        else:
            paths.append(src)
    if len(srcs) > 1 and "$" not in dest and not _dest_is_dir(dest):
        raise _Error(f"When using {kw} with more than one source file, the destination "
                     "must be a directory and end with a /")
    return tuple(paths), dest, tuple(inline), is_json


def _copy(r: _Reader, rest: str, flags: list[str], hd: tuple[ins.Heredoc, ...],
          c: dict[str, Any]) -> ins.Instruction:
    srcs, dest, inline, is_json = _copy_common("COPY", rest, hd)
    f = _flags(flags, {"from": "string", "chown": "string", "chmod": "string",
                       "link": "bool"})
    if "from" in f and not f["from"]:
        raise _Error("COPY --from requires a stage name, a stage index or an image")
    return ins.Copy(sources=srcs, dest=dest, inline=inline, from_=f.get("from"),
                    chown=f.get("chown"), chmod=f.get("chmod"), link=f.get("link") == "true",
                    json=is_json, **c)


def _add(r: _Reader, rest: str, flags: list[str], hd: tuple[ins.Heredoc, ...],
         c: dict[str, Any]) -> ins.Instruction:
    srcs, dest, inline, is_json = _copy_common("ADD", rest, hd)
    f = _flags(flags, {"chown": "string", "chmod": "string", "link": "bool",
                       "checksum": "string", "keep-git-dir": "bool"})
    return ins.Add(sources=srcs, dest=dest, inline=inline, chown=f.get("chown"),
                   chmod=f.get("chmod"), link=f.get("link") == "true",
                   checksum=f.get("checksum"), keep_git_dir=f.get("keep-git-dir") == "true",
                   json=is_json, **c)


def _healthcheck(r: _Reader, rest: str, flags: list[str], hd: tuple[ins.Heredoc, ...],
                 c: dict[str, Any]) -> ins.Instruction:
    if not rest:
        raise _Error("HEALTHCHECK requires at least one argument")
    parts = re.split(r"\s+", rest, maxsplit=1)
    typ = parts[0].upper()
    after = parts[1] if len(parts) > 1 else ""
    if typ == "NONE":
        if after:
            raise _Error("HEALTHCHECK NONE takes no arguments")
        _flags(flags, {})
        return ins.Healthcheck(test=("NONE",), **c)
    names = ("interval", "timeout", "start-period", "start-interval", "retries")
    f = _flags(flags, dict.fromkeys(names, "string"))
    if typ != "CMD":
        raise _Error(f'Unknown type "{typ}" in HEALTHCHECK (try CMD)')
    argv, is_json = _maybe_json(after)
    if not argv:
        raise _Error("Missing command after HEALTHCHECK CMD")
    test = ("CMD", *argv) if is_json else ("CMD-SHELL", *argv)
    retries = 0
    if f.get("retries"):
        try:
            retries = int(f["retries"], 10)
        except ValueError:
            raise _Error(f'strconv.ParseInt: parsing "{f["retries"]}": invalid syntax'
                         ) from None
        if retries < 0:
            raise _Error(f"--retries cannot be negative ({retries})")
    return ins.Healthcheck(
        test=test, interval=_duration(f, "interval"), timeout=_duration(f, "timeout"),
        start_period=_duration(f, "start-period"),
        start_interval=_duration(f, "start-interval"), retries=retries,
        **c)


_BUILDERS: dict[str, _Builder] = {
    "from": _from, "run": _run, "cmd": _cmd, "entrypoint": _entrypoint, "shell": _shell,
    "env": _env, "label": _label, "arg": _arg, "expose": _expose, "volume": _volume,
    "user": _user, "workdir": _workdir, "stopsignal": _stopsignal,
    "maintainer": _maintainer, "copy": _copy, "add": _add, "healthcheck": _healthcheck,
}
