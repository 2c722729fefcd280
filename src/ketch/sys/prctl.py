"""prctl(2) options the runtime uses, and personality(2)."""

from __future__ import annotations

import ctypes

from ketch.sys.libc import check, libc

__all__ = [
    "PR",
    "cap_ambient_clear",
    "cap_ambient_raise",
    "capbset_drop",
    "personality",
    "set_child_subreaper",
    "set_dumpable",
    "set_keepcaps",
    "set_name",
    "set_no_new_privs",
    "set_pdeathsig",
]

# int prctl(int option, unsigned long arg2, unsigned long arg3,
#           unsigned long arg4, unsigned long arg5);
_prctl = libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int

# int personality(unsigned long persona);
_personality = libc.personality
_personality.argtypes = [ctypes.c_ulong]
_personality.restype = ctypes.c_int


class PR:
    """Option numbers from <linux/prctl.h>."""

    SET_PDEATHSIG = 1
    SET_DUMPABLE = 4
    SET_KEEPCAPS = 8
    SET_NAME = 15
    CAPBSET_READ = 23
    CAPBSET_DROP = 24
    SET_SECUREBITS = 28
    SET_NO_NEW_PRIVS = 38
    SET_CHILD_SUBREAPER = 36
    CAP_AMBIENT = 47
    CAP_AMBIENT_RAISE = 2
    CAP_AMBIENT_CLEAR_ALL = 4


def prctl(option: int, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> int:
    """prctl(2) with errno kept."""
    return check(_prctl(option, a2, a3, a4, a5), f"prctl({option}, {a2}, {a3})")


def set_dumpable(on: bool) -> None:
    prctl(PR.SET_DUMPABLE, int(on))


def set_keepcaps(on: bool) -> None:
    prctl(PR.SET_KEEPCAPS, int(on))


def set_no_new_privs() -> None:
    prctl(PR.SET_NO_NEW_PRIVS, 1)


def set_pdeathsig(sig: int) -> None:
    prctl(PR.SET_PDEATHSIG, sig)


def set_child_subreaper() -> None:
    prctl(PR.SET_CHILD_SUBREAPER, 1)


def set_name(name: str) -> None:
    buf = ctypes.create_string_buffer(name.encode()[:15])
    check(_prctl(PR.SET_NAME, ctypes.cast(buf, ctypes.c_void_p).value or 0, 0, 0, 0),
          f"prctl(PR_SET_NAME, {name!r})")


def capbset_drop(cap: int) -> None:
    prctl(PR.CAPBSET_DROP, cap)


def cap_ambient_raise(cap: int) -> None:
    prctl(PR.CAP_AMBIENT, PR.CAP_AMBIENT_RAISE, cap)


def cap_ambient_clear() -> None:
    prctl(PR.CAP_AMBIENT, PR.CAP_AMBIENT_CLEAR_ALL)


def personality(persona: int) -> int:
    """personality(2); returns the previous persona."""
    return check(_personality(persona), f"personality({persona:#x})")
