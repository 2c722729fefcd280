"""seccomp(2): load a classic-BPF syscall filter, and the constants to build one.

A filter is a program of ``struct sock_filter`` instructions run by the kernel
on every syscall against ``struct seccomp_data``::

    struct seccomp_data {          offset
        int   nr;                  0    syscall number (x32 keeps its high bit)
        __u32 arch;                4    AUDIT_ARCH_* of the calling ABI
        __u64 instruction_pointer; 8
        __u64 args[6];             16 + 8*i, each in host byte order
    };

Its return value (``SECCOMP_RET_*`` in the top 16 bits, data such as an errno
in the low 16) decides the syscall's fate. Building programs is
``ketch.runtime.seccomp``'s job; this module only packs and loads them.

Loading needs ``no_new_privs`` set or ``CAP_SYS_ADMIN`` in the caller's user
namespace; which one is the caller's decision, so nothing here sets it.
"""

from __future__ import annotations

import struct

from ketch.errors import InvalidArgument

__all__ = [
    "AUDIT_ARCH_AARCH64",
    "AUDIT_ARCH_ARM",
    "AUDIT_ARCH_I386",
    "AUDIT_ARCH_X86_64",
    "BPF_ABS",
    "BPF_ALU",
    "BPF_AND",
    "BPF_JA",
    "BPF_JEQ",
    "BPF_JGE",
    "BPF_JGT",
    "BPF_JMP",
    "BPF_JSET",
    "BPF_K",
    "BPF_LD",
    "BPF_MAXINSNS",
    "BPF_RET",
    "BPF_W",
    "SECCOMP_DATA_ARCH",
    "SECCOMP_DATA_NR",
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_NEW_LISTENER",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_TSYNC_ESRCH",
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
    "SECCOMP_GET_ACTION_AVAIL",
    "SECCOMP_RET_ACTION_FULL",
    "SECCOMP_RET_ALLOW",
    "SECCOMP_RET_DATA",
    "SECCOMP_RET_ERRNO",
    "SECCOMP_RET_KILL_PROCESS",
    "SECCOMP_RET_KILL_THREAD",
    "SECCOMP_RET_LOG",
    "SECCOMP_RET_TRACE",
    "SECCOMP_RET_TRAP",
    "SECCOMP_RET_USER_NOTIF",
    "SECCOMP_SET_MODE_FILTER",
    "action_available",
    "arg_hi",
    "arg_lo",
    "filter_flag_supported",
    "load_filter",
    "sock_filter",
]

# seccomp(2) operations, <linux/seccomp.h>.
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_GET_ACTION_AVAIL = 2

# Filter flags for SECCOMP_SET_MODE_FILTER.
SECCOMP_FILTER_FLAG_TSYNC = 1 << 0
SECCOMP_FILTER_FLAG_LOG = 1 << 1
SECCOMP_FILTER_FLAG_SPEC_ALLOW = 1 << 2
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_FILTER_FLAG_TSYNC_ESRCH = 1 << 4
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5

# Filter return values, most to least restrictive; the kernel applies the
# most restrictive result of all stacked filters.
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_RET_TRACE = 0x7FF00000
SECCOMP_RET_LOG = 0x7FFC0000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ACTION_FULL = 0xFFFF0000
SECCOMP_RET_DATA = 0x0000FFFF

# AUDIT_ARCH_* from <linux/audit.h> (EM_* | 64-bit flag | little-endian flag).
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
AUDIT_ARCH_ARM = 0x40000028

# Offsets into struct seccomp_data.
SECCOMP_DATA_NR = 0
SECCOMP_DATA_ARCH = 4
_SECCOMP_DATA_ARGS = 16

# Classic BPF opcode parts, <linux/bpf_common.h>.
BPF_LD = 0x00
BPF_ALU = 0x04
BPF_JMP = 0x05
BPF_RET = 0x06
BPF_W = 0x00
BPF_ABS = 0x20
BPF_K = 0x00
BPF_AND = 0x50
BPF_JA = 0x00
BPF_JEQ = 0x10
BPF_JGT = 0x20
BPF_JGE = 0x30
BPF_JSET = 0x40
BPF_MAXINSNS = 4096

# struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; } in host order.
_INSN = struct.Struct("=HBBI")


def sock_filter(code: int, jt: int, jf: int, k: int) -> bytes:
    """One packed ``struct sock_filter`` (8 bytes)."""
    return _INSN.pack(code, jt, jf, k)


def arg_lo(index: int) -> int:
    """Offset of the low 32 bits of ``args[index]`` in seccomp_data (little-endian hosts)."""
    return _SECCOMP_DATA_ARGS + 8 * index


def arg_hi(index: int) -> int:
    """Offset of the high 32 bits of ``args[index]`` in seccomp_data (little-endian hosts)."""
    return _SECCOMP_DATA_ARGS + 8 * index + 4


def load_filter(program: bytes, flags: int = 0) -> None:
    """Install ``program`` (packed sock_filter instructions) on the calling thread.

    ``flags`` are ``SECCOMP_FILTER_FLAG_*``. The filter stays for the life of
    the thread and its future children and cannot be removed. The caller must
    have set no_new_privs or hold CAP_SYS_ADMIN. Raises :class:`InvalidArgument`
    for a program that is empty, not a whole number of instructions or over
    BPF_MAXINSNS, and ``OSError`` (errno kept) when the kernel refuses it; with
    TSYNC, a thread that could not be synchronised is reported as ``OSError``.
    """
    n, rem = divmod(len(program), _INSN.size)
    if rem or not 0 < n <= BPF_MAXINSNS:
        raise InvalidArgument(
            f"seccomp program of {len(program)} bytes is not 1..{BPF_MAXINSNS} instructions")
    # ctypes is imported here, not at module load: building a program needs
    # only the constants above, and this module is imported on every run.
    import ctypes

    from ketch.sys.libc import syscall

    class SockFprog(ctypes.Structure):
        # struct sock_fprog { unsigned short len; struct sock_filter *filter; };
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(program, len(program))
    prog = SockFprog(n, ctypes.addressof(buf))
    ret = syscall("seccomp", SECCOMP_SET_MODE_FILTER, flags,
                  ctypes.c_void_p(ctypes.addressof(prog)),
                  desc=f"seccomp(SECCOMP_SET_MODE_FILTER, {flags:#x}, <{n} insns>)")
    if ret > 0:
        # With TSYNC (and without TSYNC_ESRCH) the kernel answers with the id
        # of a thread it could not move onto the new filter.
        import errno

        raise OSError(errno.ESRCH, f"thread {ret} could not be synchronised",
                      "seccomp(SECCOMP_SET_MODE_FILTER, TSYNC)")


def action_available(action: int) -> bool:
    """Whether the running kernel knows the filter return ``action`` (a SECCOMP_RET_*)."""
    import ctypes

    from ketch.sys.libc import syscall

    value = ctypes.c_uint32(action & SECCOMP_RET_ACTION_FULL)
    try:
        syscall("seccomp", SECCOMP_GET_ACTION_AVAIL, 0,
                ctypes.c_void_p(ctypes.addressof(value)), desc="seccomp(GET_ACTION_AVAIL)")
    except OSError as e:
        import errno

        if e.errno == errno.EOPNOTSUPP:
            return False
        raise
    return True


def filter_flag_supported(flag: int) -> bool:
    """Whether the running kernel knows the ``SECCOMP_FILTER_FLAG_*`` bit ``flag``.

    Asks SECCOMP_SET_MODE_FILTER with no program: the kernel checks the flags
    before it reads the program, so a known flag meets EFAULT and an unknown
    one EINVAL, and nothing is ever installed.
    """
    import ctypes
    import errno

    from ketch.sys.libc import syscall

    try:
        syscall("seccomp", SECCOMP_SET_MODE_FILTER, flag, ctypes.c_void_p(None),
                desc=f"seccomp(SECCOMP_SET_MODE_FILTER, {flag:#x}, NULL)")
    except OSError as e:
        if e.errno == errno.EFAULT:
            return True
        if e.errno == errno.EINVAL:
            return False
        raise
    return True  # not reached: a NULL program is never accepted
