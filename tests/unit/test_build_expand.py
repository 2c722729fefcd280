"""Builder variable substitution: docker's shell-word rules, and which instructions expand."""

from __future__ import annotations

import pytest

from ketch.image.build import instructions as ins
from ketch.image.build.expand import (
    ExpansionError,
    expand_heredoc,
    expand_instruction,
    expand_word,
    expand_words,
)
from ketch.image.build.parser import parse

ENV = {"A": "a", "EMPTY": "", "SP": "x y", "P": "/usr/local/lib.tar.gz"}


@pytest.mark.parametrize(("word", "out"), [
    ("plain", "plain"),
    ("$A", "a"),
    ("${A}b", "ab"),
    ("$Ab", ""),                     # the name is Ab, unset
    ("$UNSET", ""),
    ("x$", "x$"),
    ("$/x", "$/x"),
    ("'$A'", "$A"),                  # single quotes: literal
    ('"$A and $SP"', "a and x y"),   # double quotes: expansion, blanks kept
    ('"a\\"b"', 'a"b'),              # \" inside double quotes
    ('"a\\nb"', "a\\nb"),            # other escapes stay inside double quotes
    ("\\$A", "$A"),                  # escaped dollar
    ("a\\ b", "a b"),
    ("trailing\\", "trailing"),
    ("${UNSET:-dflt}", "dflt"),
    ("${EMPTY:-dflt}", "dflt"),
    ("${EMPTY-dflt}", ""),           # set (to empty): no default
    ("${UNSET-dflt}", "dflt"),
    ("${A:+alt}", "alt"),
    ("${EMPTY:+alt}", ""),
    ("${EMPTY+alt}", "alt"),
    ("${UNSET+alt}", ""),
    ("${UNSET:-$A$A}", "aa"),        # the word is expanded too
    ("${UNSET:-'q q'}", "q q"),
    ("${P#*/}", "usr/local/lib.tar.gz"),
    ("${P##*/}", "lib.tar.gz"),
    ("${P%.*}", "/usr/local/lib.tar"),
    ("${P%%.*}", "/usr/local/lib"),
    ("${P/lib/LIB}", "/usr/local/LIB.tar.gz"),
    ("${P//l/L}", "/usr/LocaL/Lib.tar.gz"),
    ("$1", ""),
    ("${A}${SP}", "ax y"),
])
def test_expand_word(word: str, out: str) -> None:
    assert expand_word(word, ENV) == out


def test_backtick_escape() -> None:
    assert expand_word("`$A", ENV, "`") == "$A"
    assert expand_word("C:\\path", ENV, "`") == "C:\\path"


def test_expand_words_splits_unquoted_blanks_only() -> None:
    assert expand_words("80 $PORTS '8 9' \"\"", {"PORTS": "81  82/udp"}) == [
        "80", "81", "82/udp", "8 9"]


@pytest.mark.parametrize(("word", "message"), [
    ("${A", "syntax error: missing '}'"),
    ("${", "syntax error: missing '}'"),
    ("${}", "syntax error: bad substitution"),
    ("${:-x}", "syntax error: bad substitution"),
    ("'open", "unexpected end of statement while looking for matching single-quote"),
    ('"open', "unexpected end of statement while looking for matching double-quote"),
    ("${A!x}", "unsupported modifier (!) in substitution"),
    ("${UNSET?}", "UNSET: is not allowed to be unset"),
    ("${EMPTY:?needs a value}", "EMPTY: needs a value"),
])
def test_expand_errors(word: str, message: str) -> None:
    with pytest.raises(ExpansionError, match="^" + message.replace("$", "\\$")
                       .replace("(", "\\(").replace(")", "\\)").replace("?", "\\?")):
        expand_word(word, ENV)


def test_heredoc_body_expansion_keeps_quotes() -> None:
    assert expand_heredoc("x=$A '$A' \"$A\" \\$A\n", ENV) == "x=a 'a' \"a\" $A\n"


def _expand_all(text: str, env: dict[str, str]) -> list[ins.Instruction]:
    df = parse(text)
    return [expand_instruction(i, env, df.escape) for i in df.instructions]


def test_which_instructions_expand() -> None:
    env = {"V": "val", "D": "/data", "U": "app", "P": "8080", "S": "SIGTERM"}
    out = _expand_all(
        'ENV K_$V="$V here" L=$D\n'
        "ARG N_$V=${V}x M\n"
        "LABEL l=$V\n"
        "COPY --chown=$U:$U --chmod=0$P $D/* $D/\n"
        "ADD $D/a.tgz /opt/$V/\n"
        "EXPOSE $P 9$P/udp\n"
        "VOLUME $D\n"
        "USER $U\n"
        "WORKDIR $D/$U\n"
        "STOPSIGNAL $S\n"
        "RUN echo $V\n"
        "CMD echo $V\n"
        "ENTRYPOINT echo $V\n"
        'SHELL ["/bin/$V"]\n'
        "HEALTHCHECK CMD check $V\n"
        "ONBUILD RUN echo $V\n"
        "MAINTAINER $U\n", env)  # the last 7 are checked below
    env_, arg, label, cp, add, expose, vol, user, wd, sig = out[:10]
    assert env_.pairs == (ins.KeyValue("K_val", "val here"), ins.KeyValue("L", "/data"))  # type: ignore[attr-defined]
    assert arg.args == (ins.ArgDecl("N_val", "valx"), ins.ArgDecl("M"))  # type: ignore[attr-defined]
    assert label.pairs == (ins.KeyValue("l", "val"),)  # type: ignore[attr-defined]
    assert isinstance(cp, ins.Copy)
    assert (cp.chown, cp.chmod, cp.sources, cp.dest) == ("app:app", "08080", ("/data/*",), "/data/")
    assert isinstance(add, ins.Add) and add.dest == "/opt/val/"
    assert expose.ports == ("8080", "98080/udp")  # type: ignore[attr-defined]
    assert vol.paths == ("/data",)  # type: ignore[attr-defined]
    assert user.user == "app"  # type: ignore[attr-defined]
    assert wd.path == "/data/app"  # type: ignore[attr-defined]
    assert sig.signal == "SIGTERM"  # type: ignore[attr-defined]
    # left to the shell (or to the child build): unchanged
    raw = parse("RUN echo $V\nCMD echo $V\nENTRYPOINT echo $V\nSHELL [\"/bin/$V\"]\n"
                "HEALTHCHECK CMD check $V\nONBUILD RUN echo $V\nMAINTAINER $U\n").instructions
    assert [expand_instruction(i, env) for i in raw] == list(raw)
    assert len(out) == 17


def test_copy_heredoc_expands_unless_quoted() -> None:
    cp, = _expand_all("COPY <<EOF <<'RAW' /x/\nhi $V\nEOF\nhi $V\nRAW\n", {"V": "there"})
    assert isinstance(cp, ins.Copy)
    assert [h.content for h in cp.inline] == ["hi there\n", "hi $V\n"]


def test_env_and_label_quotes_removed_after_expansion() -> None:
    env, = _expand_all("ENV A=\"quoted value\" B='$NOPE' C=a\\ b D=\"\"\n", {})
    assert [(p.key, p.value) for p in env.pairs] == [  # type: ignore[attr-defined]
        ("A", "quoted value"), ("B", "$NOPE"), ("C", "a b"), ("D", "")]
    legacy, = _expand_all("ENV L value  with $X\n", {"X": "x"})
    assert legacy.pairs == (ins.KeyValue("L", "value  with x"),)  # type: ignore[attr-defined]


def test_expansion_error_names_the_line() -> None:
    df = parse("FROM x\nRUN ok\nWORKDIR ${NOPE:?is required}\n")
    with pytest.raises(ins.DockerfileError) as info:
        expand_instruction(df.instructions[2], {})
    assert info.value.line == 3
    assert str(info.value) == "dockerfile parse error on line 3: NOPE: is required"
