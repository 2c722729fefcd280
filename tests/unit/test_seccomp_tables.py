"""Syscall tables: spot checks of well-known numbers, and that they match the headers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ketch.errors import InvalidArgument
from ketch.sys import seccomp as sc
from ketch.sys.syscalls import ARCHES, X32_SYSCALL_BIT, native_arch, table

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("arch", "name", "nr"), [
    ("SCMP_ARCH_X86_64", "read", 0),
    ("SCMP_ARCH_X86_64", "mkdir", 83),
    ("SCMP_ARCH_X86_64", "seccomp", 317),
    ("SCMP_ARCH_X86_64", "clone3", 435),
    ("SCMP_ARCH_X86_64", "uretprobe", 335),
    ("SCMP_ARCH_X86_64", "file_setattr", 469),
    ("SCMP_ARCH_X86", "mkdir", 39),
    ("SCMP_ARCH_X86", "socketcall", 102),
    ("SCMP_ARCH_X86", "seccomp", 354),
    ("SCMP_ARCH_X32", "read", X32_SYSCALL_BIT + 0),
    ("SCMP_ARCH_X32", "execve", X32_SYSCALL_BIT + 520),
    ("SCMP_ARCH_X32", "fchmodat2", X32_SYSCALL_BIT + 452),
    ("SCMP_ARCH_AARCH64", "openat", 56),
    ("SCMP_ARCH_AARCH64", "seccomp", 277),
    ("SCMP_ARCH_AARCH64", "clone", 220),
    ("SCMP_ARCH_ARM", "read", 3),
    ("SCMP_ARCH_ARM", "seccomp", 383),
    ("SCMP_ARCH_ARM", "set_tls", 0xF0005),
    ("SCMP_ARCH_ARM", "sync_file_range2", 341),
])
def test_known_numbers(arch: str, name: str, nr: int) -> None:
    assert table(arch)[name] == nr


def test_absent_calls() -> None:
    assert "open" not in table("SCMP_ARCH_AARCH64")  # asm-generic has openat only
    assert "mkdir" not in table("SCMP_ARCH_AARCH64")
    assert "socketcall" not in table("SCMP_ARCH_X86_64")
    assert "uretprobe" not in table("SCMP_ARCH_X86")


def test_tables_agree_with_libc_numbers() -> None:
    from ketch.sys.libc import _NR

    for machine, arch in (("x86_64", "SCMP_ARCH_X86_64"), ("aarch64", "SCMP_ARCH_AARCH64")):
        for name, nr in _NR[machine].items():
            assert table(arch)[name] == nr, (machine, name)


def test_audit_arches() -> None:
    assert ARCHES["SCMP_ARCH_X86_64"].audit == sc.AUDIT_ARCH_X86_64
    assert ARCHES["SCMP_ARCH_X32"].audit == sc.AUDIT_ARCH_X86_64
    assert ARCHES["SCMP_ARCH_X86"].audit == sc.AUDIT_ARCH_I386
    assert ARCHES["SCMP_ARCH_AARCH64"].audit == sc.AUDIT_ARCH_AARCH64
    assert ARCHES["SCMP_ARCH_ARM"].audit == sc.AUDIT_ARCH_ARM


def test_native_arch() -> None:
    assert native_arch("x86_64") == "SCMP_ARCH_X86_64"
    assert native_arch("SCMP_ARCH_ARM") == "SCMP_ARCH_ARM"
    assert native_arch() in ARCHES
    with pytest.raises(InvalidArgument):
        native_arch("riscv64")


def test_x32_numbers_all_carry_the_bit() -> None:
    assert all(nr & X32_SYSCALL_BIT for nr in table("SCMP_ARCH_X32").values())
    assert not any(nr & X32_SYSCALL_BIT for nr in table("SCMP_ARCH_X86_64").values())


def _header_version() -> str | None:
    try:
        text = Path("/usr/include/linux/version.h").read_text()
    except OSError:
        return None
    m = re.search(r"LINUX_VERSION_MAJOR (\d+)\s+#define LINUX_VERSION_PATCHLEVEL (\d+)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


@pytest.mark.skipif(shutil.which("cpp") is None
                    or not Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h").exists(),
                    reason="needs cpp and linux-libc-dev headers")
def test_generated_tables_are_current() -> None:
    made_from = re.search(r"\(Linux (\S+) UAPI headers\)",
                          (ROOT / "src/ketch/sys/syscalls/x86_64.py").read_text())
    assert made_from
    if _header_version() != made_from.group(1):
        pytest.skip(f"installed headers are not Linux {made_from.group(1)}'s")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "scripts/gen_syscall_tables.py"),
                          "--check"], capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stderr
