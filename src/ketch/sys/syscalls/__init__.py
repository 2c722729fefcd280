"""Syscall number tables per ABI, named as libseccomp and the OCI spec name them.

A seccomp filter sees a syscall as the pair (``seccomp_data.arch``,
``seccomp_data.nr``). :data:`ARCHES` says, for each ``SCMP_ARCH_*`` name ketch
can filter, which audit arch value the kernel reports and how wide the
arguments are; :func:`table` gives the name → number map of that ABI.

x32 is the odd one: it shares ``AUDIT_ARCH_X86_64`` with the 64-bit ABI and is
told apart only by :data:`X32_SYSCALL_BIT` in the number, which its table
already includes.

The tables are generated modules (``scripts/gen_syscall_tables.py``) imported
on first use, so a run pays only for the ABIs its profile names.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping

from ketch.errors import InvalidArgument

__all__ = [
    "ARCHES",
    "KNOWN_UNSUPPORTED",
    "X32_SYSCALL_BIT",
    "Arch",
    "native_arch",
    "table",
]

X32_SYSCALL_BIT = 0x40000000

# <linux/audit.h>: EM_* machine number | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
_AUDIT_64 = 0x80000000
_AUDIT_LE = 0x40000000


class Arch:
    """One ABI: its ``SCMP_ARCH_*`` name, audit arch, argument width and table module."""

    __slots__ = ("audit", "bits", "module", "name")

    def __init__(self, name: str, audit: int, bits: int, module: str) -> None:
        self.name = name
        self.audit = audit
        self.bits = bits
        self.module = module

    def __repr__(self) -> str:
        return f"Arch({self.name}, audit={self.audit:#x}, bits={self.bits})"


ARCHES: dict[str, Arch] = {
    "SCMP_ARCH_X86_64": Arch("SCMP_ARCH_X86_64", 62 | _AUDIT_64 | _AUDIT_LE, 64, "x86_64"),
    "SCMP_ARCH_X86": Arch("SCMP_ARCH_X86", 3 | _AUDIT_LE, 32, "x86"),
    # x32 passes 64-bit registers, so its arguments are compared as 64-bit.
    "SCMP_ARCH_X32": Arch("SCMP_ARCH_X32", 62 | _AUDIT_64 | _AUDIT_LE, 64, "x32"),
    "SCMP_ARCH_AARCH64": Arch("SCMP_ARCH_AARCH64", 183 | _AUDIT_64 | _AUDIT_LE, 64, "aarch64"),
    "SCMP_ARCH_ARM": Arch("SCMP_ARCH_ARM", 40 | _AUDIT_LE, 32, "arm"),
}

# Names the OCI spec allows that ketch has no table for. Such an ABI cannot
# run on the hosts ketch supports, so a profile listing one is accepted and
# the entry ignored (its syscalls would meet the bad-arch action anyway).
KNOWN_UNSUPPORTED = frozenset({
    "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390", "SCMP_ARCH_S390X", "SCMP_ARCH_PARISC",
    "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64", "SCMP_ARCH_LOONGARCH64", "SCMP_ARCH_M68K",
    "SCMP_ARCH_SH", "SCMP_ARCH_SHEB",
})

# uname -m (and Go/Docker spellings) -> SCMP_ARCH name of the native ABI.
_MACHINES = {
    "x86_64": "SCMP_ARCH_X86_64", "amd64": "SCMP_ARCH_X86_64",
    "i386": "SCMP_ARCH_X86", "i486": "SCMP_ARCH_X86", "i586": "SCMP_ARCH_X86",
    "i686": "SCMP_ARCH_X86", "x86": "SCMP_ARCH_X86",
    "aarch64": "SCMP_ARCH_AARCH64", "arm64": "SCMP_ARCH_AARCH64",
    "arm": "SCMP_ARCH_ARM", "armv6l": "SCMP_ARCH_ARM", "armv7l": "SCMP_ARCH_ARM",
    "armv8l": "SCMP_ARCH_ARM",
}

_tables: dict[str, Mapping[str, int]] = {}


def native_arch(machine: str | None = None) -> str:
    """The ``SCMP_ARCH_*`` name for ``machine`` (default: this host's ``uname -m``).

    Accepts an ``SCMP_ARCH_*`` name from :data:`ARCHES` unchanged; raises
    :class:`InvalidArgument` for a machine ketch has no table for.
    """
    m = os.uname().machine if machine is None else machine
    if m in ARCHES:
        return m
    try:
        return _MACHINES[m.lower()]
    except KeyError:
        raise InvalidArgument(f"seccomp: no syscall table for architecture {m!r}") from None


def table(arch: str) -> Mapping[str, int]:
    """Name → ``seccomp_data.nr`` for the ABI ``arch`` (an ``SCMP_ARCH_*`` key of ARCHES)."""
    t = _tables.get(arch)
    if t is None:
        mod = importlib.import_module(f"ketch.sys.syscalls.{ARCHES[arch].module}")
        loaded: Mapping[str, int] = mod.SYSCALLS
        t = _tables[arch] = loaded
    return t
