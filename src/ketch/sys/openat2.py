"""openat2(2): open a path with the kernel resolving it under rules (Linux 5.6+)."""

from __future__ import annotations

import ctypes
import enum
import os

from ketch.sys.libc import MACHINE, libc

__all__ = ["RESOLVE", "openat2"]


class RESOLVE(enum.IntFlag):
    """``open_how.resolve`` flags from <linux/openat2.h>."""

    NO_XDEV = 0x01
    NO_MAGICLINKS = 0x02
    NO_SYMLINKS = 0x04
    BENEATH = 0x08
    IN_ROOT = 0x10
    CACHED = 0x20


class _OpenHow(ctypes.Structure):
    # struct open_how { __u64 flags; __u64 mode; __u64 resolve; };
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


# The generic syscall table gives openat2 the same number everywhere Linux has it.
_NR_OPENAT2 = 437 if MACHINE in ("x86_64", "aarch64", "riscv64", "ppc64le", "s390x") else -1

# long syscall(SYS_openat2, int dirfd, const char *path, struct open_how *how, size_t size);
_syscall = libc.syscall
_syscall.restype = ctypes.c_long


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """Return a new descriptor for ``path`` opened relative to ``dirfd``.

    With ``RESOLVE.IN_ROOT`` every component, ``..`` and symlink included, resolves as
    if ``dirfd`` were ``/``: nothing can lead outside it. Raises ``OSError`` (ENOSYS on
    kernels before 5.6 or machines we have no number for)."""
    if _NR_OPENAT2 < 0:
        raise OSError(38, os.strerror(38), f"openat2({path!r}): unknown syscall here")
    how = _OpenHow(flags, mode, resolve)
    fd = _syscall(ctypes.c_long(_NR_OPENAT2), ctypes.c_int(dirfd), path.encode(),
                  ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), f"openat2({dirfd}, {path!r}, {flags:#x}, "
                      f"resolve={resolve:#x})")
    return int(fd)
