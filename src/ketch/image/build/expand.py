"""Variable substitution in Dockerfile words, as docker's builder does it.

The builder, not a shell, expands ``$VAR`` in some instructions (ENV, ARG, LABEL, ADD,
COPY, EXPOSE, FROM, STOPSIGNAL, USER, VOLUME, WORKDIR; see :func:`expand_instruction`).
RUN, CMD, ENTRYPOINT, SHELL and HEALTHCHECK are left to the shell in the container;
MAINTAINER and ONBUILD are kept as written (an ONBUILD trigger is expanded when it runs,
in the build that uses the image).

One word is lexed like a POSIX shell word, without command substitution or globbing:

- ``'...'`` is literal; ``"..."`` is literal except for ``$`` and the escape character,
  which there escapes only ``"``, ``$`` and itself (``"\\n"`` stays two characters).
- outside quotes the escape character (``\\`` or the ``# escape=`` one) makes the next
  character literal, and is dropped at the end of the word.
- ``$NAME``, ``${NAME}``, ``$1``, ``$@`` ...; an unset variable is empty.
- ``${V:-w}``/``${V-w}`` (w when V is unset or empty / unset), ``${V:+w}``/``${V+w}``,
  ``${V:?msg}``/``${V?msg}`` (an error), ``${V#pat}``/``${V##pat}`` and
  ``${V%pat}``/``${V%%pat}`` (trim the shortest/longest match of a shell pattern),
  ``${V/pat/repl}`` and ``${V//pat/repl}``.

``expand_word`` returns one string (quotes removed, blanks kept); ``expand_words`` also
splits on unquoted blanks (what EXPOSE uses). Errors are :class:`ExpansionError` (an
``InvalidArgument``); :func:`expand_instruction` names the Dockerfile line in them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from ketch.errors import InvalidArgument
from ketch.image.build import instructions as ins

__all__ = [
    "ExpansionError",
    "expand_heredoc",
    "expand_instruction",
    "expand_word",
    "expand_words",
]

_SPECIAL_PARAMS = frozenset("@*#?-$!0")


class ExpansionError(InvalidArgument):
    """A word could not be expanded (unbalanced quote, bad substitution, ``${V?}``)."""


def expand_word(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """Expand variables and remove quotes in *word*; blanks are kept (one result)."""
    if not any(c in word for c in ("$", "'", '"', escape)):
        return word
    return _Lexer(word, env, escape).run()[0]


def expand_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Expand *text* and split it on unquoted blanks into words (empty words dropped)."""
    return _Lexer(text, env, escape).run()[1]


def expand_heredoc(content: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """Expand a heredoc body the way a shell expands an unquoted here-document.

    ``$NAME``/``${...}`` are substituted; the escape character escapes ``$`` and itself
    (and is kept before anything else); quotes are ordinary characters.
    """
    lx = _Lexer(content, env, escape)
    out: list[str] = []
    while lx.peek():
        ch = lx.peek()
        if ch == "$":
            out.append(lx.dollar())
            continue
        lx.next()
        if ch == escape and lx.peek() in ("$", escape):
            ch = lx.next()
        out.append(ch)
    return "".join(out)


class _Words:
    """Accumulates the words of ``expand_words``: quoted text never splits."""

    def __init__(self) -> None:
        self.words: list[str] = []
        self.word: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if ch.isspace():
            if self.in_word and self.word:
                self.words.append("".join(self.word))
                self.word = []
                self.in_word = False
        else:
            self.add_raw_char(ch)

    def add_raw_char(self, ch: str) -> None:
        self.word.append(ch)
        self.in_word = True

    def add_string(self, s: str) -> None:
        for ch in s:
            self.add_char(ch)

    def add_raw_string(self, s: str) -> None:
        for ch in s:
            self.add_raw_char(ch)

    def result(self) -> list[str]:
        if self.word:
            self.words.append("".join(self.word))
        return self.words


class _Lexer:
    """One pass over a word; ``raw_*`` keep quotes/escapes (heredoc-marker detection)."""

    def __init__(self, src: str, env: Mapping[str, str], escape: str, *,
                 raw_quotes: bool = False, raw_escapes: bool = False,
                 skip_unset: bool = False) -> None:
        self.src = src
        self.pos = 0
        self.env = env
        self.escape = escape
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.skip_unset = skip_unset

    def peek(self) -> str:
        return self.src[self.pos] if self.pos < len(self.src) else ""

    def next(self) -> str:
        if self.pos >= len(self.src):
            return ""
        ch = self.src[self.pos]
        self.pos += 1
        return ch

    def run(self) -> tuple[str, list[str]]:
        return self.until("", self.raw_escapes)

    def until(self, stops: str, raw_escapes: bool) -> tuple[str, list[str]]:
        result: list[str] = []
        words = _Words()
        while self.peek():
            ch = self.peek()
            if stops and ch in stops:
                self.next()
                return "".join(result), words.result()
            if ch == "'":
                tmp = self.single_quote()
                words.add_raw_string(tmp)
            elif ch == '"':
                tmp = self.double_quote()
                words.add_raw_string(tmp)
            elif ch == "$":
                tmp = self.dollar()
                words.add_string(tmp)
            else:
                self.next()
                if ch == self.escape:
                    if raw_escapes:
                        words.add_raw_char(ch)
                        result.append(ch)
                    ch = self.next()
                    if not ch:
                        break
                    words.add_raw_char(ch)
                else:
                    words.add_char(ch)
                tmp = ch
            result.append(tmp)
        if stops:
            raise ExpansionError(
                f"unexpected end of statement while looking for matching {stops[0]}")
        return "".join(result), words.result()

    def single_quote(self) -> str:
        first = self.next()
        out = [first] if self.raw_quotes else []
        while True:
            ch = self.next()
            if not ch:
                raise ExpansionError(
                    "unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def double_quote(self) -> str:
        first = self.next()
        out = [first] if self.raw_quotes else []
        while True:
            ch = self.peek()
            if not ch:
                raise ExpansionError(
                    "unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.next()
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                continue
            self.next()
            if ch == self.escape:
                if self.raw_escapes:
                    out.append(ch)
                nxt = self.peek()
                if not nxt:
                    continue
                if nxt in ('"', "$", self.escape):
                    ch = self.next()
            out.append(ch)

    def name(self) -> str:
        out: list[str] = []
        while self.peek():
            ch = self.peek()
            if not out and ch.isdigit():
                while self.peek() and self.peek().isdigit():
                    out.append(self.next())
                return "".join(out)
            if not out and ch in _SPECIAL_PARAMS:
                return self.next()
            if not (ch.isalnum() or ch == "_"):
                break
            out.append(self.next())
        return "".join(out)

    def lookup(self, name: str) -> tuple[str, bool]:
        if name in self.env:
            return self.env[name], True
        return "", False

    def dollar(self) -> str:
        self.next()  # the $
        if self.peek() != "{":
            name = self.name()
            if not name:
                return "$"
            value, found = self.lookup(name)
            if not found and self.skip_unset:
                return "$" + name
            return value
        self.next()  # the {
        ch = self.peek()
        if not ch:
            raise ExpansionError("syntax error: missing '}'")
        if ch in "{}:":
            raise ExpansionError("syntax error: bad substitution")
        name = self.name()
        op = self.next()
        if not op:
            raise ExpansionError("syntax error: missing '}'")
        if op == "}":
            value, found = self.lookup(name)
            if not found and self.skip_unset:
                return "${" + name + "}"
            return value
        if op == "/":
            return self.replace(name)
        null_is_unset = False
        mod = op
        if op == ":":
            null_is_unset = True
            op = self.next()
            mod += op
        if op not in ("+", "-", "?", "#", "%"):
            raise ExpansionError(f"unsupported modifier ({mod}) in substitution")
        try:
            word, _ = self.until("}", op in "#%")
        except ExpansionError:
            if not self.peek():
                raise ExpansionError("syntax error: missing '}'") from None
            raise
        value, found = self.lookup(name)
        if self.skip_unset and not found:
            return "${" + name + mod + word + "}"
        empty = not found or (null_is_unset and value == "")
        if op == "-":
            return word if empty else value
        if op == "+":
            return "" if empty else word
        if op == "?":
            if not found:
                raise ExpansionError(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise ExpansionError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        greedy = word.startswith(op)
        if greedy:
            word = word[1:]
        return _trim(value, word, prefix=op == "#", greedy=greedy)

    def replace(self, name: str) -> str:
        every = self.peek() == "/"
        if every:
            self.next()
        pattern, _ = self.until("/}", True)
        repl = ""
        if self.src[self.pos - 1] == "/":
            repl, _ = self.until("}", False)
        value, found = self.lookup(name)
        if self.skip_unset and not found:
            return value
        rx = _pattern_regex(pattern)
        return rx.sub(repl.replace("\\", "\\\\"), value, count=0 if every else 1)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A shell pattern (``*``, ``?``, ``[...]``, ``\\x``) as a regular expression."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "\\" and i < len(pattern):
            out.append(re.escape(pattern[i]))
            i += 1
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(ch))
            else:
                body = pattern[i:end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end + 1
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _trim(value: str, pattern: str, *, prefix: bool, greedy: bool) -> str:
    rx = _pattern_regex(pattern)
    cuts = range(len(value), -1, -1) if greedy else range(len(value) + 1)
    for n in cuts:
        part = value[:n] if prefix else value[len(value) - n:]
        if rx.fullmatch(part):
            return value[n:] if prefix else value[:len(value) - n]
    return value


def heredoc_words(line: str) -> list[str]:
    """The words of *line* with quotes and escapes kept (finding ``<<EOF`` markers)."""
    try:
        return _Lexer(line, {}, "\\", raw_quotes=True, raw_escapes=True,
                      skip_unset=True).run()[1]
    except ExpansionError:
        return []


def heredoc_name(rest: str) -> tuple[str, bool] | None:
    """The delimiter of a ``<<rest`` marker and whether its body expands, or None.

    The body is expanded unless some part of the delimiter is quoted (``<<'EOF'``,
    ``<<"EOF"``, ``<<E"O"F``), as in a shell.
    """
    try:
        plain = _Lexer(rest, {}, "\\", skip_unset=True).run()[1]
        raw = _Lexer(rest, {}, "\\", raw_quotes=True, skip_unset=True).run()[1]
    except ExpansionError:
        return None
    if len(plain) != 1 or len(raw) != 1:
        return None
    quotes = sum(plain[0].count(q) for q in "'\"")
    raw_quotes = sum(raw[0].count(q) for q in "'\"")
    return plain[0], quotes == raw_quotes


# -- instructions -------------------------------------------------------------------------

def expand_instruction(instr: ins.Instruction, env: Mapping[str, str],
                       escape: str = "\\") -> ins.Instruction:
    """The instruction with the builder's substitutions applied, from *env*.

    *env* is what the builder sees at that line: the stage's ENV (the base image's and
    the Dockerfile's) over its declared ARG values. Instructions the builder does not
    expand come back unchanged. FROM is expanded by the planner with the global ARGs.
    Errors name the line.
    """
    def w(s: str) -> str:
        return expand_word(s, env, escape)

    try:
        match instr:
            case ins.Env() | ins.Label():
                pairs = tuple(ins.KeyValue(w(p.key), w(p.value)) for p in instr.pairs)
                return dataclasses.replace(instr, pairs=pairs)
            case ins.Arg():
                args = tuple(ins.ArgDecl(w(a.name), None if a.default is None
                                         else w(a.default)) for a in instr.args)
                return dataclasses.replace(instr, args=args)
            case ins.Copy() | ins.Add():
                inline = tuple(
                    dataclasses.replace(h, content=expand_heredoc(h.content, env, escape))
                    if h.expand else h for h in instr.inline)
                return dataclasses.replace(
                    instr, sources=tuple(w(s) for s in instr.sources), dest=w(instr.dest),
                    chown=None if instr.chown is None else w(instr.chown),
                    chmod=None if instr.chmod is None else w(instr.chmod), inline=inline)
            case ins.Expose():
                ports: list[str] = []
                for p in instr.ports:
                    ports.extend(expand_words(p, env, escape))
                return dataclasses.replace(instr, ports=tuple(ports))
            case ins.Volume():
                return dataclasses.replace(instr, paths=tuple(w(p) for p in instr.paths))
            case ins.User():
                return dataclasses.replace(instr, user=w(instr.user))
            case ins.Workdir():
                return dataclasses.replace(instr, path=w(instr.path))
            case ins.StopSignal():
                return dataclasses.replace(instr, signal=w(instr.signal))
            case _:
                return instr
    except ExpansionError as e:
        raise ins.DockerfileError(instr.line, str(e)) from None
