"""Syscall numbers: built-in for x86_64/aarch64, from the seccomp tables elsewhere."""

from __future__ import annotations

import pytest

from ketch.sys import libc


@pytest.mark.parametrize(("machine", "name", "number"), [
    ("x86_64", "pivot_root", 155), ("aarch64", "pivot_root", 41),
    ("armv7l", "pivot_root", 218), ("armv7l", "seccomp", 383),
    ("i686", "pivot_root", 217), ("i686", "seccomp", 354),
])
def test_syscall_numbers(monkeypatch: pytest.MonkeyPatch, machine: str, name: str,
                         number: int) -> None:
    monkeypatch.setattr(libc, "MACHINE", machine)
    assert libc.nr(name) == number


def test_unknown_machine_is_enosys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libc, "MACHINE", "sparc64")
    with pytest.raises(OSError) as e:
        libc.nr("pivot_root")
    assert e.value.errno == 38 and "sparc64" in str(e.value)
