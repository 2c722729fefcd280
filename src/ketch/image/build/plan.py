"""Instructions → stages, and which stages a build needs in which order.

:func:`plan` takes a parsed :class:`~ketch.image.build.parser.Dockerfile` and returns a
:class:`BuildPlan`; it runs nothing. What it decides, as docker does:

- **Global ARGs**: ``ARG`` lines before the first FROM. Their values (a build-arg, else
  the default expanded with the global ARGs above it) are visible only to FROM lines;
  a stage sees one only after re-declaring it with a bare ``ARG NAME``.
- **Stages**: each FROM starts one; ``AS name`` names it (lower-cased, unique). The base
  is expanded with the global ARGs; a base that names an *earlier* stage builds on it,
  anything else is an image (``scratch`` is the empty one).
- **COPY --from**: a stage name, a stage index, or else an image. Naming the current or
  a later stage is an error (it could never have been built yet).
- **--target**: the stage to stop at (default: the last). Only the stages it depends
  on, through FROM and COPY --from, are built; the rest are skipped.
- **Levels**: ``levels[0]`` are the needed stages that depend on nothing, ``levels[k]``
  those whose dependencies are all in earlier levels; stages of one level can build in
  parallel. ``deps`` gives the exact graph for an executor that starts a stage as soon
  as its own dependencies finish.

:class:`StageVars` is the variable scope of a stage while it builds (ENV over ARG) —
what :func:`~ketch.image.build.expand.expand_instruction` expands with and what RUN
sees in its environment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ketch.errors import InvalidArgument
from ketch.image.build import instructions as ins
from ketch.image.build.expand import ExpansionError, expand_word
from ketch.image.build.parser import Dockerfile

__all__ = [
    "PROXY_ARGS",
    "BuildPlan",
    "CopyFrom",
    "Stage",
    "StageVars",
    "plan",
    "platform_args",
]

#: build-args usable without an ARG line (and left out of the image history)
PROXY_ARGS = frozenset({
    "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
    "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy",
})


@dataclass(frozen=True, slots=True)
class CopyFrom:
    """A ``COPY --from`` of a stage: ``stage`` is its index, None for an image ``ref``."""

    line: int
    ref: str
    stage: int | None


@dataclass(frozen=True, slots=True)
class Stage:
    """One build stage: its FROM, the base resolved, and the instructions after it."""

    index: int
    name: str | None
    from_: ins.From
    base: str
    platform: str | None
    base_stage: int | None
    instructions: tuple[ins.Instruction, ...]
    copy_from: tuple[CopyFrom, ...]

    @property
    def scratch(self) -> bool:
        """Builds on the empty image."""
        return self.base_stage is None and self.base.lower() == "scratch"

    @property
    def deps(self) -> frozenset[int]:
        """Indexes of the stages this one needs built first."""
        out = {c.stage for c in self.copy_from if c.stage is not None}
        if self.base_stage is not None:
            out.add(self.base_stage)
        return frozenset(out)

    @property
    def label(self) -> str:
        """How progress output names the stage: its name, else its index."""
        return self.name if self.name is not None else str(self.index)


@dataclass(frozen=True, slots=True)
class BuildPlan:
    """What to build: every stage, the target, the needed ones and their levels."""

    stages: tuple[Stage, ...]
    target: int
    needed: tuple[int, ...]
    levels: tuple[tuple[int, ...], ...]
    global_args: tuple[tuple[str, str | None], ...]
    unused_build_args: tuple[str, ...]
    escape: str = "\\"

    def deps(self, index: int) -> frozenset[int]:
        """The stages stage *index* waits for."""
        return self.stages[index].deps

    def external_images(self) -> tuple[tuple[str, int], ...]:
        """``(image reference, line)`` of every image the needed stages use."""
        seen: dict[str, int] = {}
        for i in self.needed:
            st = self.stages[i]
            if st.base_stage is None and not st.scratch:
                seen.setdefault(st.base, st.from_.line)
            for c in st.copy_from:
                if c.stage is None:
                    seen.setdefault(c.ref, c.line)
        return tuple(seen.items())


def platform_args(os: str = "linux", arch: str = "amd64", variant: str = "") -> dict[str, str]:
    """The automatic platform ARGs (``TARGETPLATFORM``, ``BUILDARCH`` ...) for a host."""
    plat = f"{os}/{arch}" + (f"/{variant}" if variant else "")
    out = {}
    for prefix in ("BUILD", "TARGET"):
        out.update({f"{prefix}PLATFORM": plat, f"{prefix}OS": os, f"{prefix}ARCH": arch,
                    f"{prefix}VARIANT": variant})
    return out


def plan(dockerfile: Dockerfile, *, target: str | None = None,
         build_args: Mapping[str, str] | None = None,
         predefined: Mapping[str, str] | None = None) -> BuildPlan:
    """Group *dockerfile* into stages and work out what building *target* takes.

    *build_args* are the user's ``--build-arg`` values; *predefined* are ARGs the
    global scope has without declaring them (see :func:`platform_args`). Errors are
    ``DockerfileError`` (naming the line) or ``InvalidArgument`` (empty file, unknown
    target).
    """
    build_args = dict(build_args or {})
    if not dockerfile.instructions:
        raise InvalidArgument("the Dockerfile cannot be empty")
    meta: list[ins.Arg] = []
    groups: list[tuple[ins.From, list[ins.Instruction]]] = []
    for instr in dockerfile.instructions:
        if isinstance(instr, ins.From):
            groups.append((instr, []))
        elif groups:
            groups[-1][1].append(instr)
        elif isinstance(instr, ins.Arg):
            meta.append(instr)
        else:
            raise ins.DockerfileError(instr.line, "no build stage in current context")
    if not groups:
        raise InvalidArgument("dockerfile contains no stages to build")

    env: dict[str, str] = dict(predefined or {})
    global_args: list[tuple[str, str | None]] = []
    for arg in meta:
        for decl in arg.args:
            value = build_args.get(decl.name)
            if value is None and decl.default is not None:
                value = _expand(decl.default, env, dockerfile.escape, arg.line)
            global_args.append((decl.name, value))
            if value is not None:
                env[decl.name] = value
            else:
                env.pop(decl.name, None)

    stages: list[Stage] = []
    names: dict[str, int] = {}
    for index, (frm, body) in enumerate(groups):
        if frm.name is not None and frm.name in names:
            raise ins.DockerfileError(frm.line, f'duplicate stage name "{frm.name}"')
        base = _expand(frm.base, env, dockerfile.escape, frm.line)
        if not base:
            raise ins.DockerfileError(frm.line, f"base name ({frm.base}) should not be blank")
        platform = (None if frm.platform is None
                    else _expand(frm.platform, env, dockerfile.escape, frm.line))
        base_stage = names.get(base.lower())
        copy_from = tuple(_copy_from(c, index, names, groups) for c in body
                          if isinstance(c, ins.Copy) and c.from_ is not None)
        stages.append(Stage(index, frm.name, frm, base, platform or None, base_stage,
                            tuple(body), copy_from))
        if frm.name is not None:
            names[frm.name] = index

    if target is None:
        goal = len(stages) - 1
    else:
        found = names.get(target.lower())
        if found is None:
            raise InvalidArgument(f"failed to reach build target {target} in Dockerfile")
        goal = found

    needed: set[int] = set()
    todo = [goal]
    while todo:
        i = todo.pop()
        if i not in needed:
            needed.add(i)
            todo.extend(stages[i].deps)
    level: dict[int, int] = {}
    for i in sorted(needed):  # deps always point at earlier stages
        level[i] = 1 + max((level[d] for d in stages[i].deps), default=-1)
    levels = tuple(tuple(i for i in sorted(needed) if level[i] == k)
                   for k in range(max(level.values()) + 1))

    declared = {name for name, _ in global_args}
    for i in needed:
        for c in stages[i].instructions:
            if isinstance(c, ins.Arg):
                declared.update(d.name for d in c.args)
    unused = tuple(sorted(k for k in build_args if k not in declared and k not in PROXY_ARGS))
    return BuildPlan(tuple(stages), goal, tuple(sorted(needed)), levels, tuple(global_args),
                     unused, dockerfile.escape)


def _expand(word: str, env: Mapping[str, str], escape: str, line: int) -> str:
    try:
        return expand_word(word, env, escape)
    except ExpansionError as e:
        raise ins.DockerfileError(line, str(e)) from None


def _copy_from(c: ins.Copy, current: int, names: Mapping[str, int],
               groups: Sequence[tuple[ins.From, list[ins.Instruction]]]) -> CopyFrom:
    ref = c.from_ or ""

    def bad(why: str) -> ins.DockerfileError:
        return ins.DockerfileError(c.line, f"invalid from flag value {ref}: {why}")

    if ref.isdigit():
        n = int(ref)
        if n >= len(groups):
            raise bad("index out of bounds")
        if n == current:
            raise bad("refers to current build stage")
        if n > current:
            raise bad("refers to a later build stage")
        return CopyFrom(c.line, ref, n)
    key = ref.lower()
    if key in names:
        return CopyFrom(c.line, ref, names[key])
    for later, (frm, _) in enumerate(groups):
        if frm.name == key and later >= current:
            raise bad("refers to current build stage" if later == current
                      else "refers to a later build stage")
    return CopyFrom(c.line, ref, None)


@dataclass(frozen=True, slots=True)
class StageVars:
    """A stage's variables while it builds; each change returns a new value.

    ``env`` is the image's ``Env`` (base image first, then ENV lines); ``args`` are the
    ARGs declared in the stage so far with their values (None: declared, no value).
    ENV wins over an ARG of the same name, in expansion and in RUN's environment.
    """

    env: tuple[tuple[str, str], ...] = ()
    args: tuple[tuple[str, str | None], ...] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    global_args: Mapping[str, str | None] = field(default_factory=dict)

    @classmethod
    def start(cls, image_env: Sequence[str], plan: BuildPlan,
              build_args: Mapping[str, str] | None = None) -> StageVars:
        """The scope at a stage's FROM: the base image's ``Env`` and nothing declared."""
        env = tuple((k, v) for k, _, v in (e.partition("=") for e in image_env))
        return cls(env, (), dict(build_args or {}), dict(plan.global_args))

    def declare(self, decl: ins.ArgDecl) -> StageVars:
        """Apply one (already expanded) ``ARG`` name: build-arg > default > global."""
        if decl.name in self.build_args:
            value: str | None = self.build_args[decl.name]
        elif decl.default is not None:
            value = decl.default
        else:
            value = self.global_args.get(decl.name)
        args = (*tuple(a for a in self.args if a[0] != decl.name), (decl.name, value))
        return dataclasses.replace(self, args=args)

    def set_env(self, pairs: Sequence[ins.KeyValue]) -> StageVars:
        """Apply one (already expanded) ``ENV`` line."""
        env = list(self.env)
        for p in pairs:
            env = [e for e in env if e[0] != p.key]
            env.append((p.key, p.value))
        return dataclasses.replace(self, env=tuple(env))

    def expansion_env(self) -> dict[str, str]:
        """What ``$NAME`` means at this point of the stage."""
        out = {k: v for k, v in self.args if v is not None}
        out.update((k, v) for k, v in self.build_args.items() if k in PROXY_ARGS)
        out.update(self.env)
        return out

    def image_env(self) -> list[str]:
        """The image config's ``Env`` (ARGs are never stored)."""
        return [f"{k}={v}" for k, v in self.env]

    def run_env(self) -> list[str]:
        """RUN's environment: ``Env`` plus the ARG values ENV does not shadow."""
        names = {k for k, _ in self.env}
        extra = [f"{k}={v}" for k, v in self.args if v is not None and k not in names]
        extra += [f"{k}={v}" for k, v in self.build_args.items()
                  if k in PROXY_ARGS and k not in names]
        return self.image_env() + extra
