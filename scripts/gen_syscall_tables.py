#!/usr/bin/env python3
"""Regenerate ``src/ketch/sys/syscalls/<arch>.py`` from Linux UAPI headers.

Each table maps a syscall name to the number the kernel reports in
``seccomp_data.nr`` for that ABI. The numbers come from the C preprocessor run
over the installed headers, so the kernel's own conditionals decide which
calls an ABI has (the asm-generic table used by aarch64 is full of them):

    x86_64, x86, x32   /usr/include/x86_64-linux-gnu/asm/unistd_{64,32,x32}.h
                       (Debian: linux-libc-dev)
    aarch64            /usr/aarch64-linux-gnu/include/asm/unistd.h
                       (Debian: linux-libc-dev-arm64-cross)
    arm (EABI)         /usr/arm-linux-gnueabihf/include/asm/unistd.h
                       (Debian: linux-libc-dev-armhf-cross)

Calls added to Linux after the installed headers are listed in ``NEWER``
below by hand; a header that already has a call wins over that list. An ABI
whose headers are missing is left as it is, with a warning.

Usage: python scripts/gen_syscall_tables.py [--out DIR] [--check]
``--check`` exits 1 when a committed table differs from what would be written.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

X32_SYSCALL_BIT = 0x40000000

# Calls newer than Linux 6.1 (the headers Debian bookworm ships). Since 4.20
# new calls take the same number on every ABI (x32 adds its bit), so one
# number each serves all five tables.
NEWER_COMMON: dict[str, int] = {
    "cachestat": 451,  # 6.5
    "fchmodat2": 452,  # 6.6
    "map_shadow_stack": 453,  # 6.6
    "futex_wake": 454,  # 6.7
    "futex_wait": 455,
    "futex_requeue": 456,
    "statmount": 457,  # 6.8
    "listmount": 458,
    "lsm_get_self_attr": 459,
    "lsm_set_self_attr": 460,
    "lsm_list_modules": 461,
    "mseal": 462,  # 6.10
    "setxattrat": 463,  # 6.13
    "getxattrat": 464,
    "listxattrat": 465,
    "removexattrat": 466,
    "open_tree_attr": 467,  # 6.15
    "file_getattr": 468,  # 6.17
    "file_setattr": 469,
}
# Calls newer than the headers that exist on one ABI only.
NEWER_ONLY: dict[str, dict[str, int]] = {
    "x86_64": {"uretprobe": 335},  # 6.11, x86-64 ABI only
}

_X86 = Path("/usr/include/x86_64-linux-gnu/asm")


class Source:
    """How to get one ABI's macros out of cpp."""

    __slots__ = ("arch", "audit", "cpp_args", "describe", "needs")

    def __init__(self, arch: str, audit: str, needs: Path, cpp_args: list[str],
                 describe: str) -> None:
        self.arch = arch
        self.audit = audit
        self.needs = needs
        self.cpp_args = cpp_args
        self.describe = describe


SOURCES = [
    Source("x86_64", "AUDIT_ARCH_X86_64", _X86 / "unistd_64.h",
           [str(_X86 / "unistd_64.h")], "asm/unistd_64.h"),
    Source("x86", "AUDIT_ARCH_I386", _X86 / "unistd_32.h",
           [str(_X86 / "unistd_32.h")], "asm/unistd_32.h"),
    Source("x32", "AUDIT_ARCH_X86_64; numbers carry __X32_SYSCALL_BIT", _X86 / "unistd_x32.h",
           [f"-D__X32_SYSCALL_BIT={X32_SYSCALL_BIT:#x}", str(_X86 / "unistd_x32.h")],
           "asm/unistd_x32.h"),
    Source("aarch64", "AUDIT_ARCH_AARCH64", Path("/usr/aarch64-linux-gnu/include/asm/unistd.h"),
           ["-nostdinc", "-I/usr/aarch64-linux-gnu/include", "-include", "asm/unistd.h",
            "/dev/null"], "arm64 asm/unistd.h over asm-generic/unistd.h"),
    Source("arm", "AUDIT_ARCH_ARM (EABI)", Path("/usr/arm-linux-gnueabihf/include/asm/unistd.h"),
           ["-nostdinc", "-D__ARM_EABI__", "-I/usr/arm-linux-gnueabihf/include", "-include",
            "asm/unistd.h", "/dev/null"], "arm asm/unistd.h (EABI)"),
]

# Macros with the syscall prefix that are not syscalls.
_NOT_CALLS = {"__NR_SYSCALL_BASE", "__NR_OABI_SYSCALL_BASE", "__NR_syscalls",
              "__NR_arch_specific_syscall", "__ARM_NR_BASE"}
_DEFINE = re.compile(r"#define\s+(\w+)\s+(.*)$")
_IDENT = re.compile(r"\b[A-Za-z_]\w*")
_SUFFIX = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b")


def _macros(src: Source) -> dict[str, str]:
    out = subprocess.run(["cpp", "-dM", "-undef", *src.cpp_args], check=True,
                         capture_output=True, text=True).stdout
    macros: dict[str, str] = {}
    for line in out.splitlines():
        m = _DEFINE.match(line.strip())
        if m:
            macros[m.group(1)] = m.group(2).strip()
    return macros


def _eval(expr: str, macros: dict[str, str], depth: int = 0) -> int:
    """Evaluate a macro body made of integers, + and -, and other macros."""
    if depth > 20:
        raise ValueError(f"macro recursion too deep in {expr!r}")

    def sub(m: re.Match[str]) -> str:
        name = m.group(0)
        if name not in macros:
            raise ValueError(f"undefined macro {name}")
        return str(_eval(macros[name], macros, depth + 1))

    text = _IDENT.sub(sub, _SUFFIX.sub(r"\1", expr))
    return _arith(ast.parse(text, mode="eval").body)


def _arith(node: ast.expr) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub):
        a, b = _arith(node.left), _arith(node.right)
        return a + b if isinstance(node.op, ast.Add) else a - b
    raise ValueError(f"unsupported expression {ast.unparse(node)!r}")


def table(src: Source) -> dict[str, int]:
    """name -> number for one ABI, headers first, then the hand-kept newer calls."""
    macros = _macros(src)
    calls: dict[str, int] = {}
    for name, body in macros.items():
        if name in _NOT_CALLS:
            continue
        if name.startswith("__NR_"):
            short = name[5:]
        elif name.startswith("__ARM_NR_"):
            short = name[9:]
        else:
            continue
        calls[short] = _eval(body, macros)
    bit = X32_SYSCALL_BIT if src.arch == "x32" else 0
    for short, number in {**NEWER_COMMON, **NEWER_ONLY.get(src.arch, {})}.items():
        calls.setdefault(short, number | bit)
    return calls


def render(src: Source, calls: dict[str, int], version: str) -> str:
    # The table is one string parsed at import: Python compiles a string
    # literal far faster than a dict display of ~400 entries, which matters
    # where bytecode caches are off (PYTHONDONTWRITEBYTECODE).
    base = X32_SYSCALL_BIT if src.arch == "x32" else 0
    lines = [
        f'"""Syscall numbers of the {src.arch} ABI ({src.audit}).',
        "",
        f"Generated by scripts/gen_syscall_tables.py from {src.describe}",
        f"(Linux {version} UAPI headers) plus the calls it lists as newer. Do not edit.",
    ]
    if base:
        lines.append(f"Numbers below are offsets from __X32_SYSCALL_BIT ({base:#x}), "
                     "added at import.")
    if src.arch == "arm":
        lines.append("ARM-private calls sit at __ARM_NR_BASE (0xf0000) and up.")
    lines += [
        '"""',
        "",
        "from __future__ import annotations",
        "",
        '_DATA = """',
    ]
    for name, number in sorted(calls.items(), key=lambda kv: (kv[1], kv[0])):
        lines.append(f"{name} {number - base}")
    lines += [
        '"""',
        "",
        "_w = _DATA.split()",
    ]
    if base:
        lines.append("SYSCALLS: dict[str, int] = dict(zip(_w[::2], "
                     f"[int(n) + {base:#x} for n in _w[1::2]], strict=True))")
    else:
        lines.append("SYSCALLS: dict[str, int] = dict(zip(_w[::2], map(int, _w[1::2]), "
                     "strict=True))")
    lines.append("del _w")
    return "\n".join(lines) + "\n"


def _version(src: Source) -> str:
    root = Path("/usr/include") if src.arch in ("x86_64", "x86", "x32") else src.needs.parents[1]
    text = (root / "linux/version.h").read_text()
    parts = [re.search(rf"LINUX_VERSION_{k}\s+(\d+)", text) for k in ("MAJOR", "PATCHLEVEL")]
    return ".".join(m.group(1) for m in parts if m) or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent.parent
    ap.add_argument("--out", type=Path, default=here / "src/ketch/sys/syscalls")
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    stale = False
    for src in SOURCES:
        if not src.needs.exists():
            print(f"warning: {src.needs} missing; {src.arch} table left as it is",
                  file=sys.stderr)
            continue
        text = render(src, table(src), _version(src))
        dest = args.out / f"{src.arch}.py"
        if args.check:
            if not dest.exists() or dest.read_text() != text:
                print(f"{dest} is stale", file=sys.stderr)
                stale = True
        else:
            dest.write_text(text)
            print(f"wrote {dest}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
