"""The exec trampoline: a sealed in-memory executable that runs the user's program.

Why: a container whose program is ``#!/proc/self/exe`` (CVE-2019-5736) makes the
kernel run whatever binary the *exec'ing* process runs from. Our init is a
Python interpreter forked from the host's, so ``/proc/self/exe`` would be the
host's interpreter and a container process could later open it for writing.
Instead, the last step of every container start is ``execveat`` of a tiny
static ELF that lives only in a sealed memfd; it ``execve``s the user's
program. If the user's program points back at ``/proc/self/exe``, the kernel
finds the sealed memfd, which can be neither written nor grown, and which
refuses to run anything unless its first argument carries our marker byte.

The machine code (x86_64), position independent::

    mov rcx,[rsp]; lea rsi,[rsp+8]          ; argc, argv
    mov rax,[rsi]; test rax,rax; jz fail    ; argv[0] must exist ...
    cmp byte [rax],1; jne fail              ; ... and start with the marker 0x01
    cmp rcx,3; jb fail                      ; marker, path, argv0 at least
    mov rdi,[rsi+8]                         ; path = argv[1]
    lea rdx,[rsp+rcx*8+16]                  ; envp
    add rsi,16                              ; argv = &argv[2]
    mov eax,59; syscall                     ; execve
    neg eax; ebx = (eax == ENOENT) ? 127 : 126; jmp out
  fail: mov ebx,126
  out:  write(2, "ketch-runtime: exec failed\\n", 27); exit_group(ebx)
"""

from __future__ import annotations

import fcntl
import os
import struct

from ketch.sys.libc import MACHINE

__all__ = ["MARKER", "elf_image", "sealed_trampoline", "supported"]

MARKER = "\x01"

_CODE_X86_64 = bytes.fromhex(
    "488b0c24488d742408488b064885c07433803801752e4883f9037228488b7e08488d54cc10"
    "4883c610b83b0000000f05f7d8bb7e000000ba7f00000083f8020f44daeb05bb7e000000bf"
    "02000000488d3515000000ba1b000000b8010000000f0589dfb8e70000000f05"
) + b"ketch-runtime: exec failed\n"

_MFD_CLOEXEC = 0x1
_MFD_ALLOW_SEALING = 0x2
_MFD_EXEC = 0x10  # Linux 6.3+: say explicitly that this memfd may be executed
_SEALS = 0x1 | 0x2 | 0x4 | 0x8  # F_SEAL_SEAL | SHRINK | GROW | WRITE


def supported() -> bool:
    """Whether a trampoline exists for this machine's architecture."""
    return MACHINE == "x86_64"


def elf_image() -> bytes:
    """A minimal static ELF64 executable: header, one PT_LOAD segment, the code."""
    if MACHINE != "x86_64":
        raise OSError(95, f"no exec trampoline for {MACHINE}")
    base = 0x400000
    ehsize, phsize = 64, 56
    code_off = ehsize + phsize
    entry = base + code_off
    total = code_off + len(_CODE_X86_64)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little endian, SysV
    ehdr = ident + struct.pack(
        "<HHIQQQIHHHHHH",
        2,  # ET_EXEC
        62,  # EM_X86_64
        1,  # EV_CURRENT
        entry,
        ehsize,  # program headers follow the ELF header
        0,  # no section headers
        0,
        ehsize,
        phsize,
        1,
        0,
        0,
        0,
    )
    phdr = struct.pack(
        "<IIQQQQQQ",
        1,  # PT_LOAD
        5,  # PF_R | PF_X
        0,
        base,
        base,
        total,
        total,
        0x1000,
    )
    return ehdr + phdr + _CODE_X86_64


def sealed_trampoline() -> int:
    """A close-on-exec fd of a sealed memfd holding :func:`elf_image`.

    Pass it to ``os.execve(fd, [MARKER, path, argv0, ...], env)``.
    """
    image = elf_image()
    try:
        fd = os.memfd_create("ketch-exec", _MFD_CLOEXEC | _MFD_ALLOW_SEALING | _MFD_EXEC)
    except OSError:  # kernels before 6.3 do not know MFD_EXEC
        fd = os.memfd_create("ketch-exec", _MFD_CLOEXEC | _MFD_ALLOW_SEALING)
    try:
        os.write(fd, image)
        os.fchmod(fd, 0o555)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd
