"""apply_changes: the Dockerfile instructions of `docker import/commit --change`."""

from __future__ import annotations

from typing import Any

import pytest

from ketch.errors import InvalidArgument
from ketch.image.changes import apply_changes, parse_duration

SEC = 1_000_000_000


def test_cmd_json_and_shell_forms() -> None:
    assert apply_changes({}, ['CMD ["echo", "hi there"]'])["Cmd"] == ["echo", "hi there"]
    assert apply_changes({}, ["CMD echo $HOME"])["Cmd"] == ["/bin/sh", "-c", "echo $HOME"]
    # a config Shell replaces /bin/sh -c for the shell form
    out = apply_changes({"Shell": ["/bin/bash", "-eo", "pipefail", "-c"]}, ["CMD ls"])
    assert out["Cmd"] == ["/bin/bash", "-eo", "pipefail", "-c", "ls"]
    # brackets that are not a JSON string array are shell form
    assert apply_changes({}, ["CMD [oops"])["Cmd"] == ["/bin/sh", "-c", "[oops"]


def test_entrypoint_clears_cmd_unless_cmd_came_first() -> None:
    base = {"Cmd": ["sh"]}
    assert apply_changes(base, ['ENTRYPOINT ["/init"]']) == \
        {"Cmd": None, "Entrypoint": ["/init"]}
    out = apply_changes(base, ['CMD ["-v"]', 'ENTRYPOINT ["/init"]'])
    assert out["Cmd"] == ["-v"] and out["Entrypoint"] == ["/init"]
    out = apply_changes(base, ["ENTRYPOINT /init --serve"])
    assert out["Entrypoint"] == ["/bin/sh", "-c", "/init --serve"]


def test_env_forms_quotes_and_expansion() -> None:
    out = apply_changes({"Env": ["PATH=/bin", "A=old"]}, [
        'ENV A=1 B="two words" C=\'$A literal\' D=${A}x',
        "ENV LEGACY value with  spaces",
        "ENV E=${UNSET:-fallback} F=${A:+set} G=$PATH:/sbin",
    ])
    # as in a Dockerfile, one ENV line expands with the values from before it
    assert out["Env"] == ["PATH=/bin", "A=1", "B=two words", "C=$A literal", "D=oldx",
                          "LEGACY=value with  spaces", "E=fallback", "F=set",
                          "G=/bin:/sbin"]
    assert apply_changes({}, [r"ENV X=a\ b Y=\$HOME"])["Env"] == ["X=a b", "Y=$HOME"]


def test_env_errors() -> None:
    with pytest.raises(InvalidArgument, match="can't find = in"):
        apply_changes({}, ["ENV A=1 B"])
    with pytest.raises(InvalidArgument, match="ENV must have two arguments"):
        apply_changes({}, ["ENV ONLYKEY"])
    with pytest.raises(InvalidArgument, match="double-quote"):
        apply_changes({}, ['ENV A="open'])


def test_label_expose_user_volume() -> None:
    out = apply_changes({"Env": ["V=9"], "Labels": {"keep": "1"}}, [
        'LABEL org.example.name="my app" version=$V',
        "LABEL legacy a value",
        "EXPOSE 80 53/udp 8000-8002/tcp ${V}0",
        "USER nobody:nogroup",
        'VOLUME ["/data", "/logs"]',
        "VOLUME /cache /tmp/x",
    ])
    assert out["Labels"] == {"keep": "1", "org.example.name": "my app", "version": "9",
                             "legacy": "a value"}
    assert sorted(out["ExposedPorts"]) == ["53/udp", "80/tcp", "8000/tcp", "8001/tcp",
                                           "8002/tcp", "90/tcp"]
    assert out["User"] == "nobody:nogroup"
    assert sorted(out["Volumes"]) == ["/cache", "/data", "/logs", "/tmp/x"]


@pytest.mark.parametrize("change, message", [
    ("EXPOSE http", "invalid containerPort: http"),
    ("EXPOSE 90-80", "invalid containerPort: 90-80"),
    ("EXPOSE 80/icmp", "invalid proto: icmp"),
    ("USER a b", "USER requires exactly one argument"),
    ('VOLUME [""]', "VOLUME specified can not be an empty string"),
    ("STOPSIGNAL SIGNOPE", "Invalid signal: SIGNOPE"),
    ("ONBUILD ONBUILD RUN x", "Chaining ONBUILD"),
    ("ONBUILD FROM busybox", "FROM isn't allowed as an ONBUILD trigger"),
    ("CMD", "CMD requires at least one argument"),
    ("CMD --platform=x ls", "Unknown flag: platform"),
])
def test_bad_arguments(change: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        apply_changes({}, [change])


def test_workdir_onbuild_stopsignal() -> None:
    out = apply_changes({"WorkingDir": "/app"}, ["WORKDIR src", "WORKDIR ../lib"])
    assert out["WorkingDir"] == "/app/lib"
    assert apply_changes({}, ["WORKDIR rel"])["WorkingDir"] == "/rel"
    assert apply_changes({"Env": ["D=/srv"]}, ["WORKDIR $D/www"])["WorkingDir"] == "/srv/www"
    out = apply_changes({}, ["ONBUILD RUN make", "ONBUILD COPY . /src"])
    assert out["OnBuild"] == ["RUN make", "COPY . /src"]
    for sig in ("SIGTERM", "TERM", "9", "SIGRTMIN+3", "sigusr1"):
        assert apply_changes({}, [f"STOPSIGNAL {sig}"])["StopSignal"] == sig


def test_healthcheck() -> None:
    assert apply_changes({}, ["HEALTHCHECK NONE"])["Healthcheck"] == {"Test": ["NONE"]}
    hc = apply_changes({}, ["HEALTHCHECK --interval=30s --timeout=1m30s --retries=3 "
                            "--start-period=500ms CMD wget -q localhost || exit 1"])["Healthcheck"]
    assert hc == {"Test": ["CMD-SHELL", "wget -q localhost || exit 1"], "Interval": 30 * SEC,
                  "Timeout": 90 * SEC, "StartPeriod": SEC // 2, "Retries": 3}
    hc = apply_changes({}, ['HEALTHCHECK CMD ["/bin/check", "-q"]'])["Healthcheck"]
    assert hc == {"Test": ["CMD", "/bin/check", "-q"]}


@pytest.mark.parametrize("change, message", [
    ("HEALTHCHECK --interval=1us CMD true", "cannot be less than 1ms"),
    ("HEALTHCHECK --retries=-1 CMD true", "--retries cannot be negative"),
    ("HEALTHCHECK --interval=soon CMD true", "invalid duration"),
    ("HEALTHCHECK RUN true", 'Unknown type "RUN" in HEALTHCHECK'),
    ("HEALTHCHECK --timeout=3s NONE", "HEALTHCHECK NONE takes no arguments"),
    ("HEALTHCHECK --colour=red CMD true", "Unknown flag: colour"),
])
def test_healthcheck_errors(change: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        apply_changes({}, [change])


@pytest.mark.parametrize("change, instr", [
    ("RUN echo hi", "run"), ("FROM busybox", "from"), ("copy a b", "copy"),
    ("MAINTAINER me", "maintainer"), ("ADD x /", "add"), ("ARG x", "arg"),
])
def test_instructions_outside_the_list_are_refused(change: str, instr: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        apply_changes({}, ["ENV A=1", change])
    assert str(e.value) == f"{instr} is not a valid change command"


def test_lines_comments_continuations_and_case() -> None:
    out = apply_changes({}, ["# a comment", "", "env A=1 \\", "    B=2", "cmd [\"x\"]"])
    assert out == {"Env": ["A=1", "B=2"], "Cmd": ["x"]}
    # one change string may hold several lines
    assert apply_changes({}, ["USER me\nWORKDIR /w"]) == {"User": "me", "WorkingDir": "/w"}


def test_input_is_not_modified_and_nothing_applies_on_error() -> None:
    base: dict[str, Any] = {"Env": ["A=1"], "Labels": {"x": "y"}}
    out = apply_changes(base, ["ENV B=2", "LABEL z=w"])
    assert base == {"Env": ["A=1"], "Labels": {"x": "y"}}
    assert out["Env"] == ["A=1", "B=2"] and out["Labels"] == {"x": "y", "z": "w"}
    with pytest.raises(InvalidArgument):
        apply_changes(base, ["ENV C=3", "RUN x"])
    assert base == {"Env": ["A=1"], "Labels": {"x": "y"}}
    assert apply_changes(base, []) == base


@pytest.mark.parametrize("text, ns", [
    ("0", 0), ("1s", SEC), ("1m30s", 90 * SEC), ("1.5h", 5400 * SEC), ("250ms", SEC // 4),
    ("10us", 10_000), ("7ns", 7), ("-2s", -2 * SEC), ("1h2m3s4ms", 3723 * SEC + 4_000_000),
])
def test_parse_duration(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["", "1", "s", "1d", "1 s", "1.s.", "abc"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid duration"):
        parse_duration(text)
