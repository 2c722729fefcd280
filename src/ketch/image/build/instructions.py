"""Typed, immutable records of Dockerfile instructions.

The parser (:mod:`ketch.image.build.parser`) turns each logical line of a Dockerfile
into one of the records below; the planner groups them into stages; the executor (in
the engine layer) expands the ones the builder expands
(:func:`ketch.image.build.expand.expand_instruction`) and applies them. Every record
carries ``line`` (its first line, 1-based), ``end_line`` (its last line, heredoc bodies
included) and ``original`` (the logical line as written, continuations joined), which
is what the image history shows and what the layer cache keys on.

Words are kept as written until expansion: quotes and escapes are still in ENV, ARG and
LABEL values, in COPY sources and destinations, in USER and WORKDIR. Commands (RUN, CMD,
ENTRYPOINT, HEALTHCHECK CMD) are kept as the shell or the exec form wrote them: ``json``
says which (exec form: ``command`` is the argv; shell form: ``command`` is one string
for ``SHELL``).

Errors about a Dockerfile are :class:`DockerfileError`, an ``InvalidArgument`` whose
message names the line, in docker's wording
(``dockerfile parse error on line 3: unknown instruction: FOO``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from ketch.errors import InvalidArgument

__all__ = [
    "Add",
    "Arg",
    "ArgDecl",
    "Cmd",
    "Copy",
    "DockerfileError",
    "Entrypoint",
    "Env",
    "Expose",
    "From",
    "Healthcheck",
    "Heredoc",
    "Instruction",
    "KeyValue",
    "Label",
    "Maintainer",
    "OnBuild",
    "Run",
    "Shell",
    "StopSignal",
    "User",
    "Volume",
    "Workdir",
    "expose_ports",
]


class DockerfileError(InvalidArgument):
    """A problem with one Dockerfile line; ``line`` and ``problem`` are kept apart.

    ``parse=True`` (the default) is a problem with the text itself and reads as docker
    prints it: ``dockerfile parse error on line N: problem``. ``parse=False`` is a
    problem found while using the line (a COPY source missing from the context):
    ``Dockerfile:N: problem``.
    """

    def __init__(self, line: int, problem: str, *, parse: bool = True) -> None:
        self.line = line
        self.problem = problem
        if parse:
            super().__init__(f"dockerfile parse error on line {line}: {problem}")
        else:
            super().__init__(f"Dockerfile:{line}: {problem}")


@dataclass(frozen=True, slots=True)
class Heredoc:
    """A here-document: ``<<NAME`` on the line, the body on the lines after it.

    ``content`` is the body as written, each line ending in a newline. ``expand`` is
    false when the delimiter was quoted (``<<'EOF'``): the body is then literal.
    ``chomp`` is ``<<-``: leading tabs are stripped from every body line
    (:meth:`body`). ``fd`` is the descriptor before ``<<`` (``3<<EOF``), 0 if none.
    """

    name: str
    content: str
    expand: bool = True
    chomp: bool = False
    fd: int = 0

    def body(self) -> str:
        """The content, with leading tabs stripped when the marker was ``<<-``."""
        return re.sub(r"(?m)^\t+", "", self.content) if self.chomp else self.content


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One ``key=value`` of ENV or LABEL (still unexpanded, quotes kept)."""

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class ArgDecl:
    """One name of an ARG line; ``default`` is None for ``ARG NAME`` without ``=``."""

    name: str
    default: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Instruction:
    """Base of every instruction record; ``keyword`` is the upper-case instruction."""

    keyword: ClassVar[str] = ""
    #: the builder (not a shell) substitutes variables in this instruction
    expands: ClassVar[bool] = False
    line: int
    end_line: int
    original: str


@dataclass(frozen=True, kw_only=True, slots=True)
class From(Instruction):
    """``FROM [--platform=P] base [AS name]``: starts a stage. ``name`` is lower-cased."""

    keyword: ClassVar[str] = "FROM"
    expands: ClassVar[bool] = True
    base: str
    name: str | None = None
    platform: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Run(Instruction):
    """``RUN``: a command run in a container on top of the stage so far.

    ``network`` is ``--network=default|none|host`` when given. ``heredocs`` are the
    here-documents of the line, in order; ``script`` is true when the whole shell
    command is one here-document (``RUN <<EOF``), whose body is then the script.
    """

    keyword: ClassVar[str] = "RUN"
    command: tuple[str, ...]
    json: bool = False
    heredocs: tuple[Heredoc, ...] = ()
    script: bool = False
    network: str | None = None

    def shebang_script(self) -> Heredoc | None:
        """The here-document to write to a file (mode 0755) and execute, or None.

        ``RUN <<EOF`` whose body starts with ``#!`` runs the body as a program, as
        BuildKit does; any other form runs :meth:`shell_argv`.
        """
        if self.script and self.heredocs and self.heredocs[0].body().startswith("#!"):
            return self.heredocs[0]
        return None

    def shell_argv(self, shell: Sequence[str]) -> list[str]:
        """The argv to run, given the stage's SHELL (``["/bin/sh", "-c"]`` by default).

        Exec form runs as written. ``RUN <<EOF`` hands the body to the shell as its
        command string; other heredoc forms hand the line plus the bodies and
        delimiters to the shell, which reads the here-documents itself.
        """
        if self.json:
            return list(self.command)
        text = self.command[0] if self.command else ""
        if self.heredocs:
            if self.script:
                return [*shell, self.heredocs[0].body()]
            text += "".join("\n" + h.content + h.name for h in self.heredocs)
        return [*shell, text]


@dataclass(frozen=True, kw_only=True, slots=True)
class Cmd(Instruction):
    """``CMD``: the default command (exec form as given, shell form one string)."""

    keyword: ClassVar[str] = "CMD"
    command: tuple[str, ...]
    json: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Entrypoint(Instruction):
    """``ENTRYPOINT``; an empty ``command`` (``ENTRYPOINT []``) clears it."""

    keyword: ClassVar[str] = "ENTRYPOINT"
    command: tuple[str, ...]
    json: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Shell(Instruction):
    """``SHELL ["executable", "param"...]`` (JSON form only)."""

    keyword: ClassVar[str] = "SHELL"
    shell: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class Env(Instruction):
    """``ENV k=v ...`` or the legacy ``ENV k value with spaces`` (``legacy``)."""

    keyword: ClassVar[str] = "ENV"
    expands: ClassVar[bool] = True
    pairs: tuple[KeyValue, ...]
    legacy: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Arg(Instruction):
    """``ARG name[=default] ...``; before the first FROM it is a global (meta) ARG."""

    keyword: ClassVar[str] = "ARG"
    expands: ClassVar[bool] = True
    args: tuple[ArgDecl, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class Label(Instruction):
    """``LABEL k=v ...`` (or the legacy ``LABEL k value``)."""

    keyword: ClassVar[str] = "LABEL"
    expands: ClassVar[bool] = True
    pairs: tuple[KeyValue, ...]
    legacy: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Expose(Instruction):
    """``EXPOSE port[/proto] ...`` (sorted as docker keeps them; see :func:`expose_ports`)."""

    keyword: ClassVar[str] = "EXPOSE"
    expands: ClassVar[bool] = True
    ports: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class Volume(Instruction):
    """``VOLUME ["/a", "/b"]`` or ``VOLUME /a /b``."""

    keyword: ClassVar[str] = "VOLUME"
    expands: ClassVar[bool] = True
    paths: tuple[str, ...]
    json: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class User(Instruction):
    """``USER user[:group]``."""

    keyword: ClassVar[str] = "USER"
    expands: ClassVar[bool] = True
    user: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Workdir(Instruction):
    """``WORKDIR path`` (relative paths are relative to the previous WORKDIR)."""

    keyword: ClassVar[str] = "WORKDIR"
    expands: ClassVar[bool] = True
    path: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Copy(Instruction):
    """``COPY [--from=] [--chown=] [--chmod=] [--link] src... dest``.

    ``sources`` are context paths or globs (or, with ``from_``, paths in that stage or
    image); ``inline`` are heredoc sources (``COPY <<EOF /dest``): each becomes a file
    named after its delimiter. ``from_`` is a stage name, a stage index or an image.
    """

    keyword: ClassVar[str] = "COPY"
    expands: ClassVar[bool] = True
    sources: tuple[str, ...]
    dest: str
    inline: tuple[Heredoc, ...] = ()
    from_: str | None = None
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    json: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Add(Instruction):
    """``ADD [--chown=] [--chmod=] [--link] [--checksum=] [--keep-git-dir] src... dest``.

    As COPY, except that local tar archives are extracted and URLs are fetched.
    """

    keyword: ClassVar[str] = "ADD"
    expands: ClassVar[bool] = True
    sources: tuple[str, ...]
    dest: str
    inline: tuple[Heredoc, ...] = ()
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    checksum: str | None = None
    keep_git_dir: bool = False
    json: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Healthcheck(Instruction):
    """``HEALTHCHECK NONE`` (``test == ("NONE",)``) or ``HEALTHCHECK [opts] CMD ...``.

    ``test`` is the image config's ``Healthcheck.Test``: ``("CMD", argv...)`` for the
    exec form, ``("CMD-SHELL", "command")`` for the shell form. Durations are in
    nanoseconds, 0 meaning "inherit the default".
    """

    keyword: ClassVar[str] = "HEALTHCHECK"
    test: tuple[str, ...]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class StopSignal(Instruction):
    """``STOPSIGNAL SIGTERM`` (a name or a number; checked after expansion)."""

    keyword: ClassVar[str] = "STOPSIGNAL"
    expands: ClassVar[bool] = True
    signal: str


@dataclass(frozen=True, kw_only=True, slots=True)
class OnBuild(Instruction):
    """``ONBUILD <instruction>``: a trigger stored in the image, run by its children.

    ``trigger`` is the parsed instruction (so errors surface now); ``expression`` is the
    text stored in the image config's ``OnBuild`` list (heredoc bodies appended).
    """

    keyword: ClassVar[str] = "ONBUILD"
    trigger: Instruction
    expression: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Maintainer(Instruction):
    """``MAINTAINER name`` (deprecated): sets the image's ``author`` field."""

    keyword: ClassVar[str] = "MAINTAINER"
    author: str


_PORT = re.compile(r"([0-9]+)(?:-([0-9]+))?(?:/([A-Za-z]+))?")
_PROTOCOLS = ("tcp", "udp", "sctp")


def expose_ports(words: Sequence[str]) -> tuple[str, ...]:
    """EXPOSE words (after expansion) → ``("80/tcp", "53/udp", ...)``, ranges spread.

    Raises ``InvalidArgument`` in docker's words for a bad port, range or protocol.
    """
    out: list[str] = []
    for word in words:
        m = _PORT.fullmatch(word)
        if m is None:
            port = word.split("/", 1)[0]
            if "/" in word and _PORT.fullmatch(port):
                raise InvalidArgument(f"invalid proto: {word.split('/', 1)[1]}")
            raise InvalidArgument(f"invalid containerPort: {port}")
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else start
        proto = (m.group(3) or "tcp").lower()
        if proto not in _PROTOCOLS:
            raise InvalidArgument(f"invalid proto: {m.group(3)}")
        if not 0 < start <= 65535 or not 0 < end <= 65535:
            raise InvalidArgument(f"invalid containerPort: {word.split('/', 1)[0]}")
        if end < start:
            raise InvalidArgument(f"invalid range specified for container port: {word}")
        out.extend(f"{p}/{proto}" for p in range(start, end + 1))
    return tuple(out)
