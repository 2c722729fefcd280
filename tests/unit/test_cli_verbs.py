"""The ``ketch`` CLI's verb index: a command line parses with only its verb's module."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ketch.client import cli


def _declared() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in cli._TOP_MODULES:
        for c in cli._module(name).COMMANDS:
            if c.name == "inspect" and name != "system":
                continue  # the top-level inspect is system's
            assert c.name not in out, f"verb {c.name} declared twice"
            out[c.name] = name
    return out


def test_index_is_what_the_modules_declare() -> None:
    assert _declared() == cli._VERBS


@pytest.mark.parametrize("argv", [["ps", "-a"], ["-H", "unix:///x", "rm", "-f", "c"],
                                  ["image", "ls"], ["build", "-t", "x", "."],
                                  ["push", "r/x:1"]])
def test_a_verbs_parser_parses_as_the_whole_tree(argv: list[str]) -> None:
    whole = vars(cli.parser().parse_known_args(argv)[0])
    own = vars(cli.parser(argv).parse_known_args(argv)[0])
    assert {k: v for k, v in own.items() if k != "group"} == \
        {k: v for k, v in whole.items() if k != "group"}


def test_ketch_build_loads_no_other_verbs_module() -> None:
    code = ("import sys; from ketch.client import cli; "
            "cli.parser(['build', '.']).parse_known_args(['build', '.']); "
            "print(' '.join(m for m in sys.modules if m.startswith('ketch.')))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.split())
    assert "ketch.client.cli.build" in loaded
    assert not loaded & {"ketch.client.cli.login", "ketch.client.cli.bootstrap",
                         "ketch.client.cli.containers", "ketch.client.cli.images"}
    assert "ketch.distribution.credentials" not in loaded


def test_help_lists_every_verb_and_group(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in [*cli._VERBS, *cli.GROUPS]:
        assert verb in out
