"""The C library handle and the raw ``syscall(2)`` entry shared by ``ketch.sys``.

Wrappers call :func:`check` on the return value so a failure becomes an
``OSError`` that carries the kernel's errno and a description of the call.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["MACHINE", "check", "libc", "malloc_trim", "nr", "syscall"]

libc = ctypes.CDLL(None, use_errno=True)

# long syscall(long number, ...);
_syscall = libc.syscall
_syscall.restype = ctypes.c_long

MACHINE = os.uname().machine  # platform.machine() says the same but costs ms to import

# Numbers for the calls glibc 2.36 does not wrap (or wraps too late for us), kept here
# for the two common machines because loading ketch.sys.syscalls costs every start time;
# nr() falls back to those generated tables elsewhere.
_NR: dict[str, dict[str, int]] = {
    "x86_64": {
        "pivot_root": 155,
        "capget": 125,
        "capset": 126,
        "seccomp": 317,
        "memfd_create": 319,
        "execveat": 322,
        "pidfd_open": 434,
        "pidfd_send_signal": 424,
        "close_range": 436,
        "setns": 308,
        "unshare": 272,
    },
    "aarch64": {
        "pivot_root": 41,
        "capget": 90,
        "capset": 91,
        "seccomp": 277,
        "memfd_create": 279,
        "execveat": 281,
        "pidfd_open": 434,
        "pidfd_send_signal": 424,
        "close_range": 436,
        "setns": 268,
        "unshare": 97,
    },
}


def nr(name: str) -> int:
    """The syscall number of ``name`` on this machine."""
    try:
        return _NR[MACHINE][name]
    except KeyError:
        pass
    # other architectures: the generated seccomp tables know every syscall
    from ketch.errors import InvalidArgument
    from ketch.sys.syscalls import native_arch, table

    try:
        return table(native_arch(MACHINE))[name]
    except (KeyError, InvalidArgument):
        raise OSError(38, f"syscall {name} unknown on {MACHINE}") from None


def check(ret: int, call: str) -> int:
    """Return ``ret`` or raise ``OSError`` with the current errno when it is -1."""
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), call)
    return ret


def syscall(name: str, *args: int | bytes | ctypes.c_void_p | None, desc: str = "") -> int:
    """Invoke a raw syscall by name; integers and bytes pass through ctypes as C values."""
    conv: list[object] = []
    for a in args:
        if isinstance(a, int):
            conv.append(ctypes.c_long(a))
        else:
            conv.append(a)
    return check(_syscall(ctypes.c_long(nr(name)), *conv), desc or name)


def malloc_trim() -> None:
    """Give free heap pages back to the kernel (glibc's ``malloc_trim(0)``); a no-op
    where the C library has no such call. Long-lived daemons call it once start-up
    garbage is gone, so their idle footprint is what they use."""
    fn = getattr(libc, "malloc_trim", None)
    if fn is not None:
        fn(0)
