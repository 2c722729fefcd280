"""mount(2), umount2(2), pivot_root(2) and the flags they take."""

from __future__ import annotations

import ctypes
import enum

from ketch.sys.libc import check, libc, syscall

__all__ = ["MNT_DETACH", "MS", "mount", "pivot_root", "umount"]


class MS(enum.IntFlag):
    """Mount flags from <sys/mount.h>."""

    RDONLY = 1
    NOSUID = 2
    NODEV = 4
    NOEXEC = 8
    SYNCHRONOUS = 16
    REMOUNT = 32
    MANDLOCK = 64
    DIRSYNC = 128
    NOSYMFOLLOW = 256
    NOATIME = 1024
    NODIRATIME = 2048
    BIND = 4096
    MOVE = 8192
    REC = 16384
    SILENT = 32768
    UNBINDABLE = 1 << 17
    PRIVATE = 1 << 18
    SLAVE = 1 << 19
    SHARED = 1 << 20
    RELATIME = 1 << 21
    STRICTATIME = 1 << 24
    LAZYTIME = 1 << 25


MNT_DETACH = 2

# int mount(const char *source, const char *target, const char *fstype,
#           unsigned long mountflags, const void *data);
_mount = libc.mount
_mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                   ctypes.c_char_p]
_mount.restype = ctypes.c_int

# int umount2(const char *target, int flags);
_umount2 = libc.umount2
_umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_umount2.restype = ctypes.c_int


def _b(s: str | None) -> bytes | None:
    return None if s is None else s.encode()


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    """mount(2); ``data`` is the comma-separated option string for the filesystem."""
    check(_mount(_b(source), target.encode(), _b(fstype), flags, _b(data)),
          f"mount({source!r}, {target!r}, {fstype!r}, {flags:#x}, {data!r})")


def umount(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    check(_umount2(target.encode(), flags), f"umount2({target!r}, {flags})")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2): int pivot_root(const char *new_root, const char *put_old);"""
    syscall("pivot_root", new_root.encode(), put_old.encode(),
            desc=f"pivot_root({new_root!r}, {put_old!r})")
