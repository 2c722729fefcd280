"""Namespaces: unshare(2), setns(2), and the CLONE_* flags that name them."""

from __future__ import annotations

import ctypes
import enum

from ketch.sys.libc import check, libc

__all__ = ["CLONE", "NS_FLAGS", "setdomainname", "sethostname", "setns", "unshare"]


class CLONE(enum.IntFlag):
    """Namespace flags from <sched.h>."""

    NEWTIME = 0x00000080
    NEWNS = 0x00020000
    NEWCGROUP = 0x02000000
    NEWUTS = 0x04000000
    NEWIPC = 0x08000000
    NEWUSER = 0x10000000
    NEWPID = 0x20000000
    NEWNET = 0x40000000


# OCI namespace type -> (clone flag, name under /proc/<pid>/ns)
NS_FLAGS: dict[str, tuple[CLONE, str]] = {
    "pid": (CLONE.NEWPID, "pid"),
    "network": (CLONE.NEWNET, "net"),
    "mount": (CLONE.NEWNS, "mnt"),
    "ipc": (CLONE.NEWIPC, "ipc"),
    "uts": (CLONE.NEWUTS, "uts"),
    "user": (CLONE.NEWUSER, "user"),
    "cgroup": (CLONE.NEWCGROUP, "cgroup"),
    "time": (CLONE.NEWTIME, "time"),
}

# int unshare(int flags);
_unshare = libc.unshare
_unshare.argtypes = [ctypes.c_int]
_unshare.restype = ctypes.c_int

# int setns(int fd, int nstype);
_setns = libc.setns
_setns.argtypes = [ctypes.c_int, ctypes.c_int]
_setns.restype = ctypes.c_int

# int sethostname(const char *name, size_t len);
_sethostname = libc.sethostname
_sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_sethostname.restype = ctypes.c_int

# int setdomainname(const char *name, size_t len);
_setdomainname = libc.setdomainname
_setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_setdomainname.restype = ctypes.c_int


def unshare(flags: int) -> None:
    """unshare(2)."""
    check(_unshare(flags), f"unshare({CLONE(flags)!r})")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace that ``fd`` refers to."""
    check(_setns(fd, nstype), f"setns({fd}, {nstype:#x})")


def sethostname(name: str) -> None:
    """sethostname(2)."""
    b = name.encode()
    check(_sethostname(b, len(b)), f"sethostname({name!r})")


def setdomainname(name: str) -> None:
    """setdomainname(2)."""
    b = name.encode()
    check(_setdomainname(b, len(b)), f"setdomainname({name!r})")
