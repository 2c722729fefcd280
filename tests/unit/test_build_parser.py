"""Dockerfile parser: docker's reading rules, every instruction, errors with line numbers."""

from __future__ import annotations

import pytest

from ketch.errors import InvalidArgument
from ketch.image.build import instructions as ins
from ketch.image.build.parser import parse, parse_trigger

SEC = 1_000_000_000


def one(text: str) -> ins.Instruction:
    found = parse(text).instructions
    assert len(found) == 1, found
    return found[0]


def error_of(text: str) -> ins.DockerfileError:
    with pytest.raises(ins.DockerfileError) as info:
        parse(text)
    return info.value


# -- reading rules ------------------------------------------------------------------------

def test_comments_blank_lines_and_line_numbers() -> None:
    df = parse("# top comment\n\nFROM busybox\n   # indented comment\n\nRUN true\n")
    assert [(i.keyword, i.line) for i in df.instructions] == [("FROM", 3), ("RUN", 6)]


def test_keywords_are_case_insensitive() -> None:
    df = parse("from busybox As Base\nrun echo hi\nCoPy a /b\n")
    assert [type(i) for i in df.instructions] == [ins.From, ins.Run, ins.Copy]
    assert df.instructions[0].name == "base"  # type: ignore[attr-defined]


def test_continuations_skip_comments_and_blank_lines() -> None:
    df = parse("FROM x\nRUN echo a \\\n# inner comment\n\n  && echo b \\   \n  c\nRUN d\n")
    run = df.instructions[1]
    assert isinstance(run, ins.Run)
    # continued lines keep their leading blanks; the escape and blanks after it go
    assert run.command == ("echo a   && echo b   c",)
    assert (run.line, run.end_line) == (2, 6)
    assert df.instructions[2].line == 7
    assert any("empty continuation" in w for w in df.warnings)


def test_escape_directive_backtick() -> None:
    df = parse("# escape=`\nFROM x\nRUN echo a `\n  b\nCOPY C:\\dir\\ /x/\n")
    assert df.escape == "`"
    run = df.instructions[1]
    assert isinstance(run, ins.Run) and run.command == ("echo a   b",)
    cp = df.instructions[2]
    assert isinstance(cp, ins.Copy) and cp.sources == ("C:\\dir\\",)


@pytest.mark.parametrize(("text", "escape", "syntax"), [
    ("# syntax=docker/dockerfile:1\n# escape=`\nFROM x\n", "`", "docker/dockerfile:1"),
    ("#  ESCAPE = `  \nFROM x\n", "`", None),                 # any case, blanks allowed
    ("# check=skip=all\n# escape=`\nFROM x\n", "`", None),      # check is accepted, ignored
    ("\n# escape=`\nFROM x\n", "\\", None),                    # after a blank line: comment
    ("# hello\n# escape=`\nFROM x\n", "\\", None),             # after a comment: comment
    ("# unknown=1\n# escape=`\nFROM x\n", "\\", None),         # unknown ends directives
    ("FROM x\n# escape=`\n", "\\", None),                      # after an instruction
])
def test_parser_directives(text: str, escape: str, syntax: str | None) -> None:
    df = parse(text)
    assert (df.escape, df.syntax) == (escape, syntax)


def test_directive_errors() -> None:
    assert "only one escape parser directive" in str(error_of("# escape=`\n# escape=\\\n"))
    err = error_of("# escape=x\nFROM a\n")
    assert err.line == 1 and "invalid escape token 'x'" in str(err)


def test_bom_and_crlf() -> None:
    df = parse(b"\xef\xbb\xbfFROM busybox\r\nRUN echo hi\r\n")
    assert [i.original for i in df.instructions] == ["FROM busybox", "RUN echo hi"]


# -- JSON or shell form -------------------------------------------------------------------

@pytest.mark.parametrize(("text", "command", "is_json"), [
    ('RUN ["echo", "a b"]', ("echo", "a b"), True),
    ('RUN   [ "x" ]', ("x",), True),
    ("RUN []", (), True),
    ('RUN ["a"] trailing words', ("a",), True),      # Go's decoder stops at the array
    ("RUN [oops", ("[oops",), False),                 # not JSON: shell form
    ("RUN ['single']", ("['single']",), False),
    ('RUN ["a", NaN]', ('["a", NaN]',), False),       # NaN is not JSON in Go
    ("RUN echo [a]", ("echo [a]",), False),
    ('RUN ["\\u00e9"]', ("\u00e9",), True),
])
def test_json_detection(text: str, command: tuple[str, ...], is_json: bool) -> None:
    run = one(text)
    assert isinstance(run, ins.Run)
    assert (run.command, run.json) == (command, is_json)


def test_json_array_of_non_strings_is_an_error() -> None:
    err = error_of("FROM x\nCMD [1, 2]\n")
    assert str(err) == ("dockerfile parse error on line 2: when using JSON array syntax, "
                        "arrays must be comprised of strings only")


# -- every instruction --------------------------------------------------------------------

def test_from_forms() -> None:
    f = one("FROM --platform=linux/arm64 golang:1.22 AS Build-1")
    assert isinstance(f, ins.From)
    assert (f.base, f.name, f.platform) == ("golang:1.22", "build-1", "linux/arm64")
    s = one("FROM scratch")
    assert isinstance(s, ins.From) and (s.base, s.name) == ("scratch", None)


def test_run_network_flag_and_unsupported_flags() -> None:
    run = one("RUN --network=none echo hi")
    assert isinstance(run, ins.Run) and run.network == "none"
    assert run.shell_argv(["/bin/sh", "-c"]) == ["/bin/sh", "-c", "echo hi"]
    err = error_of("FROM x\nRUN --mount=type=cache,target=/c make")
    assert err.line == 2 and "--mount option of RUN requires BuildKit" in str(err)
    assert "unsupported network mode" in str(error_of("RUN --network=bridge x"))


def test_cmd_entrypoint_shell() -> None:
    cmd = one("CMD echo $HOME")
    assert isinstance(cmd, ins.Cmd) and (cmd.command, cmd.json) == (("echo $HOME",), False)
    ep = one('ENTRYPOINT ["/init", "--serve"]')
    assert isinstance(ep, ins.Entrypoint) and ep.command == ("/init", "--serve") and ep.json
    assert one("ENTRYPOINT []").command == ()  # type: ignore[attr-defined]
    sh = one('SHELL ["/bin/bash", "-eo", "pipefail", "-c"]')
    assert isinstance(sh, ins.Shell) and sh.shell == ("/bin/bash", "-eo", "pipefail", "-c")


def test_env_forms() -> None:
    env = one('ENV A=1 B="two words" C=\'$x\' D=a\\ b')
    assert isinstance(env, ins.Env) and not env.legacy
    # words keep their quotes and escapes until expansion
    assert [(p.key, p.value) for p in env.pairs] == [
        ("A", "1"), ("B", '"two words"'), ("C", "'$x'"), ("D", "a\\ b")]
    legacy = one("ENV NAME some value  here")
    assert isinstance(legacy, ins.Env) and legacy.legacy
    assert legacy.pairs == (ins.KeyValue("NAME", "some value  here"),)


def test_arg_label_expose_volume_user_workdir_stopsignal_maintainer() -> None:
    arg = one("ARG A B=2 C=\"x y\"")
    assert isinstance(arg, ins.Arg)
    assert arg.args == (ins.ArgDecl("A"), ins.ArgDecl("B", "2"), ins.ArgDecl("C", '"x y"'))
    label = one('LABEL org.example.x="a b" y=z')
    assert isinstance(label, ins.Label)
    assert label.pairs == (ins.KeyValue("org.example.x", '"a b"'), ins.KeyValue("y", "z"))
    expose = one("EXPOSE 80 53/udp 8000-8002/tcp")
    assert isinstance(expose, ins.Expose)
    assert expose.ports == ("53/udp", "80", "8000-8002/tcp")  # sorted, as docker keeps them
    assert ins.expose_ports(expose.ports) == (
        "53/udp", "80/tcp", "8000/tcp", "8001/tcp", "8002/tcp")
    vol_json = one('VOLUME ["/data", "/with space"]')
    assert isinstance(vol_json, ins.Volume) and vol_json.paths == ("/data", "/with space")
    vol = one("VOLUME /a /b")
    assert isinstance(vol, ins.Volume) and vol.paths == ("/a", "/b") and not vol.json
    assert one("USER app:app").user == "app:app"  # type: ignore[attr-defined]
    assert one("WORKDIR /srv/my app").path == "/srv/my app"  # type: ignore[attr-defined]
    assert one("STOPSIGNAL SIGQUIT").signal == "SIGQUIT"  # type: ignore[attr-defined]
    m = one("MAINTAINER Jane <jane@example.com>")
    assert isinstance(m, ins.Maintainer) and m.author == "Jane <jane@example.com>"


def test_copy_and_add() -> None:
    cp = one("COPY --from=build --chown=app:app --chmod=0755 --link a b* /dst/")
    assert isinstance(cp, ins.Copy)
    assert (cp.sources, cp.dest, cp.from_, cp.chown, cp.chmod, cp.link) == (
        ("a", "b*"), "/dst/", "build", "app:app", "0755", True)
    js = one('COPY ["my file", "/dest dir/"]')
    assert isinstance(js, ins.Copy) and js.sources == ("my file",) and js.json
    add = one("ADD --checksum=sha256:abc --keep-git-dir=false https://x/y.tgz /opt/")
    assert isinstance(add, ins.Add)
    assert (add.checksum, add.keep_git_dir, add.sources) == (
        "sha256:abc", False, ("https://x/y.tgz",))
    assert isinstance(one("COPY a ."), ins.Copy)  # "." is a directory destination


def test_healthcheck() -> None:
    hc = one("HEALTHCHECK --interval=1m30s --timeout=5s --start-period=1s "
             "--start-interval=500ms --retries=3 CMD curl -f http://localhost/")
    assert isinstance(hc, ins.Healthcheck)
    assert hc.test == ("CMD-SHELL", "curl -f http://localhost/")
    assert (hc.interval, hc.timeout, hc.start_period, hc.start_interval, hc.retries) == (
        90 * SEC, 5 * SEC, SEC, SEC // 2, 3)
    exec_form = one('HEALTHCHECK CMD ["/bin/check", "-q"]')
    assert exec_form.test == ("CMD", "/bin/check", "-q")  # type: ignore[attr-defined]
    assert one("healthcheck none").test == ("NONE",)  # type: ignore[attr-defined]


def test_onbuild() -> None:
    ob = one("ONBUILD COPY . /app/src")
    assert isinstance(ob, ins.OnBuild)
    assert isinstance(ob.trigger, ins.Copy) and ob.trigger.sources == (".",)
    assert ob.expression == "COPY . /app/src"
    # the stored trigger parses back to the same instruction
    again = parse_trigger(ob.expression, line=7)
    assert isinstance(again, ins.Copy) and again.dest == "/app/src"


# -- heredocs -----------------------------------------------------------------------------

def test_run_heredoc_script() -> None:
    df = parse("FROM x\nRUN <<EOF\necho one\n  echo two\nEOF\nRUN after\n")
    run = df.instructions[1]
    assert isinstance(run, ins.Run) and run.script
    assert run.heredocs == (ins.Heredoc("EOF", "echo one\n  echo two\n"),)
    assert (run.line, run.end_line) == (2, 5)
    assert run.shell_argv(["/bin/sh", "-c"]) == ["/bin/sh", "-c", "echo one\n  echo two\n"]
    assert df.instructions[2].line == 6
    shebang = one("RUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\n")
    assert isinstance(shebang, ins.Run) and shebang.shebang_script() is not None


def test_heredoc_chomp_quotes_and_several_on_a_line() -> None:
    run = one("RUN <<-'A' cat > /a && cat <<B > /b\n\tone $x\n\tA\ntwo\nB\n")
    assert isinstance(run, ins.Run) and not run.script
    a, b = run.heredocs
    assert (a.name, a.chomp, a.expand, a.body()) == ("A", True, False, "one $x\n")
    assert (b.name, b.chomp, b.expand, b.content) == ("B", False, True, "two\n")
    # the shell gets the line and the bodies and reads the heredocs itself
    argv = run.shell_argv(["/bin/sh", "-c"])
    assert argv[2] == "<<-'A' cat > /a && cat <<B > /b\n\tone $x\nA\ntwo\nB"


def test_copy_heredoc_and_fd_prefix() -> None:
    cp = one('COPY <<EOF <<"RAW" /etc/\nhello $NAME\nEOF\nliteral $NAME\nRAW\n')
    assert isinstance(cp, ins.Copy) and cp.sources == ()
    assert [(h.name, h.expand, h.content) for h in cp.inline] == [
        ("EOF", True, "hello $NAME\n"), ("RAW", False, "literal $NAME\n")]
    run = one("RUN python3 3<<EOF\nx\nEOF\n")
    assert run.heredocs[0].fd == 3  # type: ignore[attr-defined]


@pytest.mark.parametrize("text", [
    'RUN ["cat", "<<EOF"]\nFROM x\n',     # JSON form: no heredoc
    "RUN cat<<EOF\nFROM x\n",             # not a word of its own
    "ENV A=<<EOF\nFROM x\n",              # ENV cannot have heredocs
])
def test_not_heredocs(text: str) -> None:
    assert len(parse(text).instructions) == 2


def test_heredoc_errors() -> None:
    assert "unterminated heredoc" in str(error_of("FROM x\nRUN <<EOF\necho\n"))
    assert "cannot accept a heredoc as a destination" in str(error_of("COPY a <<EOF\nx\nEOF\n"))


# -- errors -------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "line", "problem"), [
    ("FROM x\nRUN ok\nFOO bar\n", 3, "unknown instruction: FOO"),
    ("FROM x\nfoo bar\n", 2, "unknown instruction: foo"),
    ("FROM x\nCOPY --frm=a b /c\n", 2, "unknown flag: --frm"),
    ("MAINTAINER --boo joe@example.com\n", 1, "unknown flag: --boo"),
    ("FROM x\nCOPY --from a /b\n", 2, "missing a value on flag: from"),
    ("FROM x\nCOPY --link=maybe a /b\n", 2, "expecting boolean value for flag link, not: maybe"),
    ("FROM x\nCOPY --chown=a --chown=b a /b\n", 2, "duplicate flag specified: chown"),
    ("FROM x\nCOPY onlyone\n", 2, "COPY requires at least two arguments, but only one was "
     "provided. Destination could not be determined"),
    ("FROM x\nCOPY\t\n  quux \\\n  bar\n", 2, "COPY requires at least two arguments"),
    ("FROM x\nADD a b /c\n", 2, "When using ADD with more than one source file, the "
     "destination must be a directory and end with a /"),
    ("FROM\n", 1, "FROM requires either one or three arguments"),
    ("FROM a b\n", 1, "FROM requires either one or three arguments"),
    ("FROM a AS 1st\n", 1, 'invalid name for build stage: "1st", name can\'t start with a '
     "number or contain symbols"),
    ("FROM x\nRUN\n", 2, "RUN requires at least one argument"),
    ("FROM x\nCMD\n", 2, "CMD requires at least one argument"),
    ("FROM x\nENV\n", 2, "ENV requires at least one argument"),
    ("FROM x\nENV A=1 B\n", 2, 'Syntax error - can\'t find = in "B". Must be of the form: '
     "name=value"),
    ("FROM x\nENV =1\n", 2, "ENV names can not be blank"),
    ("FROM x\nENV ONLYKEY\n", 2, "ENV must have two arguments"),
    ("FROM x\nLABEL\n", 2, "LABEL requires at least one argument"),
    ("FROM x\nARG\n", 2, "ARG requires at least one argument"),
    ("FROM x\nARG =v\n", 2, "ARG names can not be blank"),
    ("FROM x\nEXPOSE\n", 2, "EXPOSE requires at least one argument"),
    ("FROM x\nEXPOSE http\n", 2, "invalid containerPort: http"),
    ("FROM x\nEXPOSE 80/xyz\n", 2, "invalid proto: xyz"),
    ("FROM x\nEXPOSE 70000\n", 2, "invalid containerPort: 70000"),
    ("FROM x\nVOLUME\n", 2, "VOLUME requires at least one argument"),
    ('FROM x\nVOLUME ["/a", " "]\n', 2, "VOLUME specified can not be an empty string"),
    ("FROM x\nUSER\n", 2, "USER requires exactly one argument"),
    ("FROM x\nWORKDIR\n", 2, "WORKDIR requires exactly one argument"),
    ("FROM x\nSTOPSIGNAL\n", 2, "STOPSIGNAL requires exactly one argument"),
    ("FROM x\nMAINTAINER\n", 2, "MAINTAINER requires exactly one argument"),
    ("FROM x\nSHELL /bin/bash -c\n", 2, "SHELL requires the arguments to be in JSON form"),
    ("FROM x\nSHELL []\n", 2, "SHELL requires at least one argument"),
    ("FROM x\nHEALTHCHECK\n", 2, "HEALTHCHECK requires at least one argument"),
    ("FROM x\nHEALTHCHECK NONE x\n", 2, "HEALTHCHECK NONE takes no arguments"),
    ("FROM x\nHEALTHCHECK CMD\n", 2, "Missing command after HEALTHCHECK CMD"),
    ("FROM x\nHEALTHCHECK RUN x\n", 2, 'Unknown type "RUN" in HEALTHCHECK (try CMD)'),
    ("FROM x\nHEALTHCHECK --interval=50ns CMD x\n", 2,
     'Interval "interval" cannot be less than 1ms'),
    ("FROM x\nHEALTHCHECK --retries=-1 CMD x\n", 2, "--retries cannot be negative (-1)"),
    ("FROM x\nHEALTHCHECK --interval=soon CMD x\n", 2, "time: invalid duration 'soon'"),
    ("FROM x\nHEALTHCHECK --bogus=1 CMD x\n", 2, "unknown flag: --bogus"),
    ("FROM x\nONBUILD\n", 2, "ONBUILD requires at least one argument"),
    ("FROM x\nONBUILD ONBUILD RUN x\n", 2,
     "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
    ("FROM x\nONBUILD FROM scratch\n", 2, "FROM isn't allowed as an ONBUILD trigger"),
    ("FROM x\nONBUILD maintainer me\n", 2, "MAINTAINER isn't allowed as an ONBUILD trigger"),
    ("FROM x\nONBUILD NOPE x\n", 2, "unknown instruction: NOPE"),
])
def test_errors_name_line_and_problem(text: str, line: int, problem: str) -> None:
    err = error_of(text)
    assert isinstance(err, InvalidArgument)
    assert err.line == line
    assert problem in err.problem, err.problem
    assert str(err).startswith(f"dockerfile parse error on line {line}: ")


def test_error_after_continuation_names_first_line() -> None:
    err = error_of("FROM x\nRUN ok\nBAD \\\n  more\n")
    assert str(err) == "dockerfile parse error on line 3: unknown instruction: BAD"
