"""Network namespaces pinned at a path, and running code inside one.

A network namespace lives as long as something refers to it: a process or thread in
it, an open fd of it, a socket created in it, or a bind mount of its nsfs inode.
:func:`create` makes one and pins it with a bind mount at any path (like
``ip netns add``, which does the same under ``/run/netns``); :func:`delete` drops
the mount, after which the namespace goes away with its last other reference.

Namespace membership is per *thread* on Linux (setns/unshare with CLONE_NEWNET act
on the calling thread only, and are allowed in a multithreaded process), so nothing
here moves the whole process or forks:

- :func:`create` and :func:`run_in` do their work in a short-lived thread that
  joins (or unshares) the namespace and then exits, so no thread is ever left
  behind in a foreign namespace, even on failure;
- :func:`entered` switches the *current* thread and back, for callers that must
  run a short synchronous block in place.

Mounts are made in the caller's mount namespace; propagation to other mount
namespaces follows the mount the path lives on (``ip netns`` makes ``/run/netns``
a shared mount for that; choose a path on a shared mount if other mount
namespaces must see the pin).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from ketch.errors import InvalidArgument
from ketch.sys.libc import libc
from ketch.sys.mount import MNT_DETACH, MS, mount, umount
from ketch.sys.netlink import Netlink
from ketch.sys.ns import CLONE, setns, unshare

__all__ = ["NSFS_MAGIC", "create", "delete", "entered", "is_netns", "run_in"]

T = TypeVar("T")

NSFS_MAGIC = 0x6E736673
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), <linux/nsfs.h>
_THREAD_NET = "/proc/thread-self/ns/net"
_MAX_STACKED = 64

# int statfs(const char *path, struct statfs *buf);
# f_type is the first member, a __fsword_t (long on glibc's Linux ABIs)
_statfs = libc.statfs
_statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
_statfs.restype = ctypes.c_int


def _open(netns: str | int) -> tuple[int, bool]:
    """(fd, owned) for a netns path (opened here) or fd (borrowed)."""
    if isinstance(netns, str):
        return os.open(netns, os.O_RDONLY | os.O_CLOEXEC), True
    if isinstance(netns, int) and not isinstance(netns, bool):
        return netns, False
    raise InvalidArgument(f"invalid netns {netns!r}: want a path or an fd")


def _in_thread(fn: Callable[[], T], name: str) -> T:
    """Run ``fn`` in a new thread, wait, and return its result or raise its error."""
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # handed to the caller's thread
            error.append(e)

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def run_in(netns: str | int, fn: Callable[[], T]) -> T:
    """Call ``fn()`` in a short-lived thread inside ``netns`` (path or borrowed fd)
    and return its result. Sockets ``fn`` creates stay in ``netns`` for their whole
    life; the calling thread's namespace never changes. ``fn`` must not keep
    references to the thread itself (it exits when ``fn`` returns)."""
    fd, owned = _open(netns)
    try:

        def body() -> T:
            setns(fd, CLONE.NEWNET)
            return fn()

        return _in_thread(body, "ketch-netns")
    finally:
        if owned:
            os.close(fd)


def is_netns(path: str) -> bool:
    """True if ``path`` is a network namespace (an nsfs file, bind-mounted or a
    ``/proc/PID/ns/net`` link); False for anything else, missing paths included."""
    buf = (ctypes.c_long * 32)()
    if _statfs(os.fsencode(path), buf) != 0 or buf[0] & 0xFFFFFFFF != NSFS_MAGIC:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return bool(fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE.NEWNET)
    except OSError:
        return False
    finally:
        os.close(fd)


def create(path: str) -> None:
    """Make a new network namespace, pin it at ``path`` and bring its ``lo`` up.

    ``path`` is created as an empty file if missing (its directory must exist); an
    existing namespace there is ``FileExistsError``. On any failure nothing is left
    mounted and a file this call created is removed. Undo with :func:`delete`.

    How: a short-lived thread unshare(CLONE_NEWNET)s itself, bind-mounts
    ``/proc/thread-self/ns/net`` onto ``path`` and sets ``lo`` up through a netlink
    socket it opens there, then exits; the mount keeps the namespace alive. No fork:
    forking a threaded daemon is unsafe, and CLONE_NEWNET is per-thread, so a
    thread is enough.
    """
    call = f"netns.create({path!r})"
    if is_netns(path):
        raise OSError(errno.EEXIST, "a network namespace is mounted there already", call)
    made = False
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
        made = True
    except FileExistsError:
        pass

    def body() -> None:
        unshare(CLONE.NEWNET)
        mount(_THREAD_NET, path, None, MS.BIND)
        try:
            with Netlink.open() as nl:
                nl.set_link("lo", up=True)
        except BaseException:
            umount(path, MNT_DETACH)
            raise

    try:
        _in_thread(body, "ketch-netns-create")
    except BaseException:
        if made:
            os.unlink(path)
        raise


def delete(path: str) -> None:
    """Unmount the namespace pinned at ``path`` (lazily, MNT_DETACH: processes and
    sockets still in it keep it alive) and remove the file. A missing path is not an
    error; a path that is not a pinned namespace is only unlinked."""
    for _ in range(_MAX_STACKED):  # create() twice on one path stacks mounts
        if not is_netns(path):
            break
        umount(path, MNT_DETACH)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@contextmanager
def entered(netns: str | int) -> Iterator[None]:
    """Run a ``with`` block with the *current thread* in ``netns`` (path or borrowed
    fd), restoring the thread's own namespace afterwards, even on error.

    Per-thread: other threads (the asyncio loop's, a pool's) stay where they are,
    so the block must be synchronous: no ``await``, no yielding to other code that
    would then run in the wrong namespace. Sockets made inside stay in ``netns``, and
    so do threads started inside (a new thread inherits its creator's namespaces).
    Prefer :func:`run_in`, which never moves the caller's thread.
    """
    own = os.open(_THREAD_NET, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd, owned = _open(netns)
        try:
            setns(fd, CLONE.NEWNET)
        finally:
            if owned:
                os.close(fd)
        try:
            yield
        finally:
            setns(own, CLONE.NEWNET)
    finally:
        os.close(own)
