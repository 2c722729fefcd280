"""The hand-rolled fast parser agrees with argparse on the command lines runtimes get."""

from __future__ import annotations

import pytest

from ketch.runtime.cli import Args, _fast_parse, _parser

LINES = [
    ["--root", "/r", "--log", "/l.json", "--log-format", "json", "create", "--bundle", "/b",
     "--pid-file", "/p", "--console-socket", "/s", "c1"],
    ["--root=/r", "run", "-d", "--keep", "-b", "/b", "--preserve-fds", "2", "c1"],
    ["start", "c1"],
    ["state", "c1"],
    ["kill", "--all", "c1", "9"],
    ["kill", "c1"],
    ["delete", "--force", "c1"],
    ["list", "--format", "json", "-q"],
    ["ps", "--format", "json", "c1"],
    ["ps", "c1", "-ef"],
    ["exec", "-d", "--pid-file", "/p", "-e", "A=1", "-e", "B=2", "--cwd", "/tmp", "c1", "sh",
     "-c", "echo --not-an-option"],
    ["exec", "--process", "/proc.json", "--tty", "c1"],
    ["update", "--memory", "64m", "--pids-limit", "10", "c1"],
    ["events", "--stats", "c1"],
    ["spec", "--rootless", "--bundle", "/b"],
    ["features"],
    ["--debug", "pause", "c1"],
]


@pytest.mark.parametrize("argv", LINES, ids=[" ".join(a[:4]) for a in LINES])
def test_fast_parser_matches_argparse(argv: list[str]) -> None:
    fast = _fast_parse(argv)
    assert fast is not None
    slow = _parser().parse_args(argv, namespace=Args())
    if slow.root is None:
        slow.root = fast.root  # the default comes from the environment
    assert vars(fast) == vars(slow)


@pytest.mark.parametrize("argv", [
    ["--help"], ["kill"], ["create", "--bogus", "c1"], ["frobnicate", "c1"], [],
    ["create", "--preserve-fds", "x", "c1"], ["start", "c1", "extra"],
])
def test_help_and_mistakes_go_to_argparse(argv: list[str]) -> None:
    assert _fast_parse(argv) is None
