"""Build plan: stages, global ARGs, --target, COPY --from and the parallel levels."""

from __future__ import annotations

import pytest

from ketch.errors import InvalidArgument
from ketch.image.build import instructions as ins
from ketch.image.build.expand import expand_instruction
from ketch.image.build.parser import parse
from ketch.image.build.plan import BuildPlan, StageVars, plan, platform_args

MULTI = """\
ARG GO=1.22
ARG BASE
FROM golang:${GO} AS build
RUN go build -o /app
FROM debian:bookworm AS assets
RUN make assets
FROM build AS test
RUN go test
FROM ${BASE:-busybox} AS final
COPY --from=build /app /app
COPY --from=1 /assets /assets
COPY --from=nginx:1.27 /etc/nginx/nginx.conf /etc/
"""


def make(text: str, **kw: object) -> BuildPlan:
    return plan(parse(text), **kw)  # type: ignore[arg-type]


def test_stages_bases_and_dependencies() -> None:
    p = make(MULTI)
    assert [(s.index, s.name, s.base, s.base_stage) for s in p.stages] == [
        (0, "build", "golang:1.22", None), (1, "assets", "debian:bookworm", None),
        (2, "test", "build", 0), (3, "final", "busybox", None)]
    assert [(c.ref, c.stage, c.line) for c in p.stages[3].copy_from] == [
        ("build", 0, 10), ("1", 1, 11), ("nginx:1.27", None, 12)]
    assert p.stages[3].deps == {0, 1}
    assert [type(i) for i in p.stages[0].instructions] == [ins.Run]


def test_target_skips_unneeded_stages_and_levels_allow_parallelism() -> None:
    p = make(MULTI)
    assert p.target == 3 and p.needed == (0, 1, 3)          # "test" is skipped
    assert p.levels == ((0, 1), (3,))                      # build and assets in parallel
    t = make(MULTI, target="TEST")
    assert t.target == 2 and t.needed == (0, 2) and t.levels == ((0,), (2,))
    assert make(MULTI, target="assets").needed == (1,)
    assert set(p.external_images()) == {("golang:1.22", 3), ("debian:bookworm", 5),
                                         ("busybox", 9), ("nginx:1.27", 12)}


def test_global_args_build_args_and_predefined() -> None:
    p = make(MULTI, build_args={"GO": "1.21", "BASE": "alpine", "STRAY": "1",
                                "HTTP_PROXY": "http://p"})
    assert p.stages[0].base == "golang:1.21" and p.stages[3].base == "alpine"
    assert p.global_args == (("GO", "1.21"), ("BASE", "alpine"))
    assert p.unused_build_args == ("STRAY",)               # proxy args never count as unused
    q = make("ARG TARGETARCH\nFROM --platform=$BUILDPLATFORM img-$TARGETARCH\n",
             predefined=platform_args("linux", "arm64", "v8"))
    assert q.stages[0].base == "img-"                      # declared without value: unset
    r = make("FROM --platform=$BUILDPLATFORM img-$TARGETARCH\n",
             predefined=platform_args("linux", "arm64", "v8"))
    assert (r.stages[0].base, r.stages[0].platform) == ("img-arm64", "linux/arm64/v8")


def test_scratch_and_stage_name_case() -> None:
    p = make("FROM scratch AS Base\nFROM BASE\nFROM Scratch\n")
    assert p.stages[0].scratch and p.stages[0].name == "base"
    assert p.stages[1].base_stage == 0 and not p.stages[1].scratch
    assert p.stages[2].scratch


def test_from_own_name_is_an_image() -> None:
    p = make("FROM node AS node\nRUN x\n")
    assert p.stages[0].base_stage is None and p.external_images() == (("node", 1),)


@pytest.mark.parametrize(("text", "kw", "line", "problem"), [
    ("RUN x\nFROM a\n", {}, 1, "no build stage in current context"),
    ("ARG A\nENV B=1\nFROM a\n", {}, 2, "no build stage in current context"),
    ("FROM a AS x\nFROM b AS x\n", {}, 2, 'duplicate stage name "x"'),
    ("FROM a\nCOPY --from=later /x /y\nFROM b AS later\n", {}, 2,
     "invalid from flag value later: refers to a later build stage"),
    ("FROM a AS me\nCOPY --from=me /x /y\n", {}, 2,
     "invalid from flag value me: refers to current build stage"),
    ("FROM a\nCOPY --from=0 /x /y\n", {}, 2,
     "invalid from flag value 0: refers to current build stage"),
    ("FROM a\nCOPY --from=1 /x /y\nFROM b\n", {}, 2,
     "invalid from flag value 1: refers to a later build stage"),
    ("FROM a\nFROM b\nCOPY --from=5 /x /y\n", {}, 3,
     "invalid from flag value 5: index out of bounds"),
    ("ARG B\nFROM $B\n", {}, 2, "base name ($B) should not be blank"),
    ('ARG V="${X:?X is required}"\nFROM a\n', {}, 1, "X: X is required"),
])
def test_plan_errors_name_the_line(text: str, kw: dict[str, object], line: int,
                                   problem: str) -> None:
    with pytest.raises(ins.DockerfileError) as info:
        make(text, **kw)
    assert info.value.line == line and info.value.problem == problem


@pytest.mark.parametrize(("text", "kw", "message"), [
    ("", {}, "the Dockerfile cannot be empty"),
    ("# only a comment\n", {}, "the Dockerfile cannot be empty"),
    ("ARG A=1\n", {}, "dockerfile contains no stages to build"),
    ("FROM a AS x\n", {"target": "nope"}, "failed to reach build target nope in Dockerfile"),
])
def test_plan_errors_without_a_line(text: str, kw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        make(text, **kw)
    assert str(info.value) == message


def test_stage_vars_arg_scoping_as_docker() -> None:
    text = ("ARG VERSION=1.0\nARG OTHER=o\nFROM a\nARG VERSION\nARG LOCAL=${VERSION}-x\n"
            "ENV VERSION=env\nARG LATE\n")
    p = make(text, build_args={"LATE": "from-cli", "HTTP_PROXY": "http://p"})
    v = StageVars.start(["PATH=/bin"], p, {"LATE": "from-cli", "HTTP_PROXY": "http://p"})
    assert "VERSION" not in v.expansion_env()             # global ARGs are not in scope
    env_lines = []
    for instr in p.stages[0].instructions:
        instr = expand_instruction(instr, v.expansion_env(), p.escape)
        if isinstance(instr, ins.Arg):
            for decl in instr.args:
                v = v.declare(decl)
        elif isinstance(instr, ins.Env):
            v = v.set_env(instr.pairs)
        env_lines.append(dict(v.expansion_env()))
    assert env_lines[0]["VERSION"] == "1.0"              # re-declared: the global value
    assert env_lines[1]["LOCAL"] == "1.0-x"              # defaults expand with the scope
    assert env_lines[2]["VERSION"] == "env"              # ENV wins over ARG
    assert env_lines[3]["LATE"] == "from-cli"            # a build-arg wins over no default
    assert "OTHER" not in env_lines[3]
    assert v.image_env() == ["PATH=/bin", "VERSION=env"]  # ARGs are never stored
    assert v.run_env() == ["PATH=/bin", "VERSION=env", "LOCAL=1.0-x", "LATE=from-cli",
                           "HTTP_PROXY=http://p"]
