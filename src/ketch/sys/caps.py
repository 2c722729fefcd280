"""Capabilities: names, capget(2)/capset(2) on the calling thread."""

from __future__ import annotations

import ctypes

from ketch.sys.libc import check, libc, nr

__all__ = ["CAPS", "CapSets", "capget", "capset", "last_cap"]

# Capability numbers from <linux/capability.h>.
CAPS: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}


def last_cap() -> int:
    """The highest capability number this kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return max(CAPS.values())


def bounding_set() -> list[str]:
    """Names of the capabilities in this process's bounding set (``--privileged``
    grants these: a daemon cannot give what it does not hold)."""
    try:
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))
    except (OSError, StopIteration, ValueError):
        return [n for n, b in CAPS.items() if b <= last_cap()]
    return [n for n, b in CAPS.items() if mask & (1 << b)]


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_VERSION_3 = 0x20080522
_syscall = libc.syscall
_syscall.restype = ctypes.c_long


class CapSets:
    """Effective, permitted and inheritable sets as 64-bit masks."""

    __slots__ = ("effective", "inheritable", "permitted")

    def __init__(self, effective: int = 0, permitted: int = 0, inheritable: int = 0) -> None:
        self.effective = effective
        self.permitted = permitted
        self.inheritable = inheritable


def capget(pid: int = 0) -> CapSets:
    """capget(2): int capget(cap_user_header_t hdrp, cap_user_data_t datap);"""
    hdr = _Header(_VERSION_3, pid)
    data = (_Data * 2)()
    check(_syscall(ctypes.c_long(nr("capget")), ctypes.byref(hdr), data), f"capget({pid})")
    return CapSets(
        data[0].effective | (data[1].effective << 32),
        data[0].permitted | (data[1].permitted << 32),
        data[0].inheritable | (data[1].inheritable << 32),
    )


def capset(sets: CapSets) -> None:
    """capset(2) on the calling thread."""
    hdr = _Header(_VERSION_3, 0)
    data = (_Data * 2)()
    m = 0xFFFFFFFF
    data[0].effective, data[1].effective = sets.effective & m, sets.effective >> 32
    data[0].permitted, data[1].permitted = sets.permitted & m, sets.permitted >> 32
    data[0].inheritable, data[1].inheritable = sets.inheritable & m, sets.inheritable >> 32
    check(_syscall(ctypes.c_long(nr("capset")), ctypes.byref(hdr), data), "capset()")
