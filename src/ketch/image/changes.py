"""Dockerfile instructions applied to an image config: ``docker import/commit --change``.

``apply_changes(config, changes)`` takes the ``config`` section of an image config
(Docker's ``ContainerConfig``: ``Env``, ``Cmd``, ``Entrypoint``, ``ExposedPorts`` ...)
and the change strings, and returns a new section; the input is not modified.

The changes are read as the lines of a Dockerfile: ``#`` comments and blank lines are
skipped, a line ending in ``\\`` continues on the next. The instructions allowed are
the ones Docker allows there::

    CMD ENTRYPOINT ENV EXPOSE LABEL USER VOLUME WORKDIR ONBUILD STOPSIGNAL HEALTHCHECK

with the Dockerfile meaning of each:

- ``CMD``/``ENTRYPOINT``: JSON form (``["a", "b"]``) as given, shell form wrapped in
  the config's ``Shell`` (default ``/bin/sh -c``). An ``ENTRYPOINT`` clears ``Cmd``
  unless a ``CMD`` came earlier in the same changes, as in a build.
- ``ENV``/``LABEL``: ``k=v ...`` (quotes and backslashes as in a shell word) or the
  legacy ``k value with spaces``.
- ``ENV``, ``LABEL``, ``EXPOSE``, ``USER``, ``VOLUME``, ``WORKDIR`` and ``STOPSIGNAL``
  expand ``$VAR``, ``${VAR}``, ``${VAR:-default}`` and ``${VAR:+alt}`` from ``Env``
  as it stands at that line.
- ``HEALTHCHECK NONE`` or ``HEALTHCHECK [--interval=D --timeout=D --start-period=D
  --start-interval=D --retries=N] CMD ...`` (durations in Go's syntax: ``1m30s``).

Errors are ``InvalidArgument``; an instruction outside the list is
``<instr> is not a valid change command`` with the instruction in lower case, as
dockerd says it.
"""

from __future__ import annotations

import copy
import json
import posixpath
import re
import signal
from collections.abc import Callable, Sequence
from typing import Any

from ketch.errors import InvalidArgument

__all__ = ["VALID_INSTRUCTIONS", "apply_changes", "parse_duration"]

VALID_INSTRUCTIONS = frozenset({
    "cmd", "entrypoint", "env", "expose", "label", "user", "volume", "workdir",
    "onbuild", "stopsignal", "healthcheck",
})
_HEALTH_FLAGS = ("interval", "timeout", "start-period", "start-interval", "retries")
_MIN_INTERVAL_NS = 1_000_000  # 1ms, dockerd's floor for the health check durations
_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
                   "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_PORT = re.compile(r"([0-9]+)(?:-([0-9]+))?(?:/([A-Za-z]+))?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_duration(text: str) -> int:
    """Go's ``time.ParseDuration``: ``"1m30s"``, ``"500ms"``, ``"0"`` → nanoseconds."""
    s = text.strip()
    sign = -1 if s.startswith("-") else 1
    s = s.lstrip("+-")
    if s == "0":
        return 0
    if not s:
        raise InvalidArgument(f"time: invalid duration {text!r}")
    total, pos = 0.0, 0
    while pos < len(s):
        m = _DURATION.match(s, pos)
        if m is None or m.group(1) in ("", "."):
            raise InvalidArgument(f"time: invalid duration {text!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * round(total)


# -- lines and words ----------------------------------------------------------------------

def _lines(changes: Sequence[str]) -> list[str]:
    """Logical lines: comments and blanks dropped, ``\\``-continuations joined."""
    out: list[str] = []
    pending = ""
    for raw in "\n".join(changes).split("\n"):
        line = raw.rstrip("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1]
            continue
        out.append((pending + line).strip())
        pending = ""
    if pending.strip():
        out.append(pending.strip())
    return out


class _Lexer:
    """Shell-like words: quotes, backslash escapes and ``$`` expansion from ``env``."""

    def __init__(self, text: str, env: dict[str, str]) -> None:
        self.s = text
        self.i = 0
        self.env = env

    def words(self, split: bool) -> list[str]:
        words: list[str] = []
        cur: list[str] = []
        started = False
        while self.i < len(self.s):
            c = self.s[self.i]
            if split and c.isspace():
                self.i += 1
                if started:
                    words.append("".join(cur))
                    cur, started = [], False
                continue
            started = True
            if c == "'":
                end = self.s.find("'", self.i + 1)
                if end < 0:
                    raise InvalidArgument(f"unexpected end of statement while looking for "
                                          f"matching single-quote: {self.s}")
                cur.append(self.s[self.i + 1:end])
                self.i = end + 1
            elif c == '"':
                cur.append(self._double())
            elif c == "\\":
                if self.i + 1 < len(self.s):
                    cur.append(self.s[self.i + 1])
                self.i += 2
            elif c == "$":
                cur.append(self._dollar())
            else:
                cur.append(c)
                self.i += 1
        if started:
            words.append("".join(cur))
        return words

    def _double(self) -> str:
        self.i += 1
        out: list[str] = []
        while self.i < len(self.s):
            c = self.s[self.i]
            if c == '"':
                self.i += 1
                return "".join(out)
            if c == "\\" and self.i + 1 < len(self.s) and self.s[self.i + 1] in '"$\\':
                out.append(self.s[self.i + 1])
                self.i += 2
            elif c == "$":
                out.append(self._dollar())
            else:
                out.append(c)
                self.i += 1
        raise InvalidArgument(f"unexpected end of statement while looking for matching "
                              f"double-quote: {self.s}")

    def _dollar(self) -> str:
        self.i += 1
        if self.i >= len(self.s):
            return "$"
        if self.s[self.i] == "{":
            end = self.s.find("}", self.i)
            if end < 0:
                raise InvalidArgument(f"missing '}}' in {self.s}")
            body = self.s[self.i + 1:end]
            self.i = end + 1
            return self._braced(body)
        m = _NAME.match(self.s, self.i)
        if m is None:
            return "$"
        self.i = m.end()
        return self.env.get(m.group(0), "")

    def _braced(self, body: str) -> str:
        m = _NAME.match(body)
        if m is None:
            raise InvalidArgument(f"bad substitution: ${{{body}}}")
        name, rest = m.group(0), body[m.end():]
        value = self.env.get(name)
        if not rest:
            return value or ""
        for op in (":-", ":+", "-", "+"):
            if rest.startswith(op):
                word = _Lexer(rest[len(op):], self.env).words(split=False)
                alt = word[0] if word else ""
                present = bool(value) if op.startswith(":") else value is not None
                if op.endswith("-"):
                    return value if present and value is not None else alt
                return alt if present else ""
        raise InvalidArgument(f"unsupported modifier ({rest[:1]}) in substitution: "
                              f"${{{body}}}")


def _env_map(config: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in config.get("Env") or []:
        k, _, v = str(item).partition("=")
        out[k] = v
    return out


def _word(text: str, config: dict[str, Any]) -> str:
    words = _Lexer(text, _env_map(config)).words(split=False)
    return words[0] if words else ""


def _words(text: str, config: dict[str, Any]) -> list[str]:
    return _Lexer(text, _env_map(config)).words(split=True)


def _raw_words(text: str) -> list[str]:
    """Split on whitespace outside quotes, keeping quotes and escapes for later."""
    words: list[str] = []
    cur, quote, i = "", "", 0
    while i < len(text):
        c = text[i]
        if c == "\\" and quote != "'" and i + 1 < len(text):
            cur += text[i:i + 2]
            i += 2
            continue
        if quote:
            if c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c.isspace():
            if cur:
                words.append(cur)
            cur = ""
            i += 1
            continue
        cur += c
        i += 1
    if cur:
        words.append(cur)
    return words


def _json_list(rest: str) -> list[str] | None:
    """The JSON (exec) form of ``rest``, or None when it is shell form."""
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _split_flags(rest: str) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    while rest.startswith("--"):
        word, _, after = rest.partition(" ")
        name, eq, value = word[2:].partition("=")
        if not eq:
            raise InvalidArgument(f"missing a value on flag: --{name}")
        flags[name] = value
        rest = after.lstrip()
    return flags, rest


# -- instructions -------------------------------------------------------------------------

class _State:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.cmd_set = False

    def shell(self, rest: str) -> list[str]:
        form = _json_list(rest)
        if form is not None:
            return form
        return [*(self.config.get("Shell") or ["/bin/sh", "-c"]), rest]

    def cmd(self, rest: str, flags: dict[str, str]) -> None:
        self.config["Cmd"] = self.shell(rest)
        self.cmd_set = True

    def entrypoint(self, rest: str, flags: dict[str, str]) -> None:
        self.config["Entrypoint"] = self.shell(rest)
        if not self.cmd_set:
            self.config["Cmd"] = None

    def _pairs(self, instr: str, rest: str) -> list[tuple[str, str]]:
        words = _raw_words(rest)
        if not words:
            raise InvalidArgument(f"{instr} requires at least one argument")
        if "=" not in words[0]:  # legacy "KEY value with spaces"
            key, _, value = rest.partition(" ")
            if not value.strip():
                raise InvalidArgument(f"{instr} must have two arguments")
            return [(_word(key, self.config), _word(value.strip(), self.config))]
        pairs = []
        for w in words:
            if "=" not in w:
                raise InvalidArgument(f"Syntax error - can't find = in {w!r}. "
                                      f"Must be of the form: name=value")
            k, _, v = w.partition("=")
            key = _word(k, self.config)
            if not key:
                raise InvalidArgument(f"{instr} names can not be blank")
            pairs.append((key, _word(v, self.config)))
        return pairs

    def env(self, rest: str, flags: dict[str, str]) -> None:
        for key, value in self._pairs("ENV", rest):
            env = [e for e in (self.config.get("Env") or [])
                   if str(e).partition("=")[0] != key]
            env.append(f"{key}={value}")
            self.config["Env"] = env

    def label(self, rest: str, flags: dict[str, str]) -> None:
        labels = dict(self.config.get("Labels") or {})
        for key, value in self._pairs("LABEL", rest):
            labels[key] = value
        self.config["Labels"] = labels

    def expose(self, rest: str, flags: dict[str, str]) -> None:
        words = _words(rest, self.config)
        if not words:
            raise InvalidArgument("EXPOSE requires at least one argument")
        ports = dict(self.config.get("ExposedPorts") or {})
        for w in words:
            m = _PORT.fullmatch(w)
            if m is None:
                raise InvalidArgument(f"invalid containerPort: {w}")
            lo = int(m.group(1))
            hi = int(m.group(2) or lo)
            proto = (m.group(3) or "tcp").lower()
            if hi < lo or hi > 65535:
                raise InvalidArgument(f"invalid containerPort: {w}")
            if proto not in ("tcp", "udp", "sctp"):
                raise InvalidArgument(f"invalid proto: {proto}")
            for p in range(lo, hi + 1):
                ports[f"{p}/{proto}"] = {}
        self.config["ExposedPorts"] = ports

    def user(self, rest: str, flags: dict[str, str]) -> None:
        words = _words(rest, self.config)
        if len(words) != 1:
            raise InvalidArgument("USER requires exactly one argument")
        self.config["User"] = words[0]

    def volume(self, rest: str, flags: dict[str, str]) -> None:
        form = _json_list(rest)
        paths = form if form is not None else _words(rest, self.config)
        if not paths:
            raise InvalidArgument("VOLUME requires at least one argument")
        vols = dict(self.config.get("Volumes") or {})
        for p in paths:
            if not p.strip():
                raise InvalidArgument("VOLUME specified can not be an empty string")
            vols[p.strip()] = {}
        self.config["Volumes"] = vols

    def workdir(self, rest: str, flags: dict[str, str]) -> None:
        path = _word(rest, self.config)
        if not path:
            raise InvalidArgument("WORKDIR requires exactly one argument")
        if not path.startswith("/"):
            path = posixpath.normpath(posixpath.join(
                "/", self.config.get("WorkingDir") or "/", path))
        self.config["WorkingDir"] = path

    def onbuild(self, rest: str, flags: dict[str, str]) -> None:
        trigger = rest.split(None, 1)[0].upper() if rest.strip() else ""
        if not trigger:
            raise InvalidArgument("ONBUILD requires at least one argument")
        if trigger == "ONBUILD":
            raise InvalidArgument("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
        if trigger in ("FROM", "MAINTAINER"):
            raise InvalidArgument(f"{trigger} isn't allowed as an ONBUILD trigger")
        self.config["OnBuild"] = [*(self.config.get("OnBuild") or []), rest]

    def stopsignal(self, rest: str, flags: dict[str, str]) -> None:
        sig = _word(rest, self.config)
        if not _valid_signal(sig):
            raise InvalidArgument(f"Invalid signal: {sig}")
        self.config["StopSignal"] = sig

    def healthcheck(self, rest: str, flags: dict[str, str]) -> None:
        kind, _, args = rest.partition(" ")
        args = args.strip()
        if kind.upper() == "NONE":
            if args or flags:
                raise InvalidArgument("HEALTHCHECK NONE takes no arguments")
            self.config["Healthcheck"] = {"Test": ["NONE"]}
            return
        if kind.upper() != "CMD":
            raise InvalidArgument(f'Unknown type "{kind}" in HEALTHCHECK (try CMD)')
        if not args:
            raise InvalidArgument("Missing command after HEALTHCHECK CMD")
        form = _json_list(args)
        hc: dict[str, Any] = {"Test": ["CMD", *form] if form is not None
                              else ["CMD-SHELL", args]}
        for name in ("interval", "timeout", "start-period", "start-interval"):
            if name in flags:
                ns = parse_duration(flags[name])
                if ns != 0 and ns < _MIN_INTERVAL_NS:
                    raise InvalidArgument(f"Interval {name!r} cannot be less than 1ms")
                if ns:
                    hc["".join(p.capitalize() for p in name.split("-"))] = ns
        if "retries" in flags:
            try:
                retries = int(flags["retries"])
            except ValueError:
                raise InvalidArgument(f"invalid --retries value {flags['retries']!r}") from None
            if retries < 0:
                raise InvalidArgument(f"--retries cannot be negative ({retries})")
            if retries:
                hc["Retries"] = retries
        self.config["Healthcheck"] = hc


def _valid_signal(sig: str) -> bool:
    if sig.isdigit():
        return 0 < int(sig) <= int(signal.SIGRTMAX)
    name = sig.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    m = re.fullmatch(r"SIGRTM(IN|AX)([+-][0-9]+)?", name)
    if m is not None:
        return True
    return isinstance(getattr(signal.Signals, name, None), signal.Signals)


def apply_changes(config: dict[str, Any], changes: Sequence[str]) -> dict[str, Any]:
    """A copy of ``config`` with the Dockerfile ``changes`` applied (see the module doc)."""
    state = _State(copy.deepcopy(dict(config)))
    parsed: list[tuple[Callable[[str, dict[str, str]], None], str, dict[str, str]]] = []
    for line in _lines(changes):
        instr, *more = line.split(None, 1)
        rest = more[0].strip() if more else ""
        low = instr.lower()
        if low not in VALID_INSTRUCTIONS:
            raise InvalidArgument(f"{low} is not a valid change command")
        flags, rest = _split_flags(rest)
        allowed = _HEALTH_FLAGS if low == "healthcheck" else ()
        for name in flags:
            if name not in allowed:
                raise InvalidArgument(f"Unknown flag: {name}")
        if not rest and low != "onbuild":
            raise InvalidArgument(f"{instr.upper()} requires at least one argument")
        parsed.append((getattr(state, low), rest, flags))
    for fn, rest, flags in parsed:  # every line is checked before any is applied
        fn(rest, flags)
    return state.config
