"""Process-launch helpers shared by ``Runtime``'s create and exec paths.

The pieces that sit between P and its children: stdio and terminal hand-over,
the id maps of a new user namespace, the exec waiter's handle, cleanup.
"""

from __future__ import annotations

# _socket, not socket: socket.py builds its enums and imports selectors (~3 ms a start)
import _socket as socket
import errno
import os
import signal
from collections.abc import Callable, Mapping

from ketch.errors import FailedPrecondition, InvalidArgument

# typing costs ms to import on every container start; annotations are strings here
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ketch.runtime.oci_runtime import Stdio

__all__ = [
    "ExecHandle",
    "StdioFds",
    "console_ends",
    "destroy_cgroup",
    "error_from_child",
    "hand_over_master",
    "kill_quiet",
    "merge",
    "needs_cgroup_v2",
    "owner",
    "rmtree",
    "with_default_devices",
    "write_id_maps",
]


class ExecHandle:
    """A process started by :meth:`Runtime.spawn_exec`.

    Attached, its parent is a small waiter (C) that reports the exit status over
    the sync channel; :meth:`wait` collects it and reaps the waiter.
    """

    __slots__ = ("_chan", "_waiter", "pid")

    def __init__(self, pid: int, waiter: int, chan: Any) -> None:
        self.pid = pid
        self._waiter = waiter
        self._chan = chan

    def wait(self) -> int:
        """The exit status (negative: killed by that signal, as subprocess reports it)."""
        if not self._waiter:
            raise FailedPrecondition("a detached exec process cannot be waited for")
        try:
            while True:
                try:
                    msg = self._chan.recv()
                except InterruptedError:
                    continue
                except ConnectionError:
                    return 255  # the waiter died: nothing to report
                if msg.get("type") == "exit":
                    code: int = msg["status"]
                    return code
        finally:
            self._chan.sock.close()
            try:
                os.waitpid(self._waiter, 0)
            except ChildProcessError:
                pass
            self._waiter = 0


def owner() -> str:
    uid = os.geteuid()
    if uid == 0:
        return "root"
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)


def merge(base: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def console_ends(process: Mapping[str, Any], console_socket: str | None
                  ) -> tuple[socket.socket | None, socket.socket | None]:
    """(end the container sends its pty master on, end we receive it on) for a terminal.

    With ``--console-socket`` the master goes to that socket's listener; without,
    to us (foreground ``run -t``/``exec -t``). No terminal: (None, None).
    """
    if not process.get("terminal"):
        return None, None
    if not console_socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return theirs, ours
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(console_socket)
    except OSError as e:
        sock.close()
        raise InvalidArgument(f"console socket {console_socket}: {e.strerror}") from None
    return sock, None


def hand_over_master(local: socket.socket | None, on_console: Callable[[int], None] | None
                      ) -> None:
    if local is None:
        return
    from ketch.runtime.console import recv_fd

    master = recv_fd(local)
    if on_console is not None:
        on_console(master)
    else:
        os.close(master)


def needs_cgroup_v2(linux: Mapping[str, Any]) -> bool:
    """Whether a hybrid host's cgroup2 hierarchy holds anything for this container
    (joining it costs an RCU grace period; see CgroupManager.join_self)."""
    res = linux.get("resources") or {}
    return bool(res.get("hugepageLimits") or res.get("unified") or res.get("rdma"))


class StdioFds:
    """A :class:`Stdio` as three fds for the child (None: inherit); opens /dev/null for
    ``subprocess.DEVNULL`` and closes what it opened on exit."""

    __slots__ = ("_opened", "_stdio")

    def __init__(self, stdio: Stdio | None) -> None:
        self._stdio = stdio
        self._opened: list[int] = []

    def __enter__(self) -> list[int | None]:
        if self._stdio is None:
            return []
        out: list[int | None] = []
        for item in (self._stdio.stdin, self._stdio.stdout, self._stdio.stderr):
            if item is None:
                out.append(None)
            elif isinstance(item, int):
                if item == -3:  # subprocess.DEVNULL
                    fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                    self._opened.append(fd)
                    out.append(fd)
                elif item < 0:
                    raise InvalidArgument(f"stdio: unsupported descriptor {item}")
                else:
                    out.append(item)
            else:
                out.append(item.fileno())
        return out

    def __exit__(self, *exc: object) -> None:
        for fd in self._opened:
            os.close(fd)


def with_default_devices(linux: Mapping[str, Any], resources: Mapping[str, Any]
                          ) -> dict[str, Any]:
    """``resources`` plus the device rules every container needs (the spec's
    "deny all" usually comes first; the default nodes must stay usable)."""
    from ketch.runtime.cgroups.convert import default_device_rules

    out = dict(resources)
    out["devices"] = [*(resources.get("devices") or []), *default_device_rules(linux)]
    return out


def error_from_child(message: str) -> Exception:
    if message.startswith("exec: "):
        return InvalidArgument(message)
    return FailedPrecondition(message)


def kill_quiet(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def write_id_maps(pid: int, linux: Mapping[str, Any]) -> None:
    def fmt(maps: Any) -> bytes:
        return "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n"
                       for m in maps or []).encode()

    if os.geteuid() != 0:
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
    for name, key in (("uid_map", "uidMappings"), ("gid_map", "gidMappings")):
        fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, fmt(linux.get(key)))
        finally:
            os.close(fd)


def destroy_cgroup(cgroup: Any) -> None:
    try:
        if cgroup.exists():
            try:
                cgroup.kill_all(signal.SIGKILL)
            except OSError:
                pass
        cgroup.destroy()
    except OSError:
        pass


def rmtree(path: str) -> None:
    """Remove a container's state directory (flat: a few files), quietly.

    A concurrent caller may recreate the lock file meanwhile (it then finds no state
    and removes it again): an ENOTEMPTY is retried a few times.
    """
    for _ in range(5):
        try:
            _rmtree_once(path)
            return
        except OSError as e:
            if e.errno != errno.ENOTEMPTY:
                raise
    _rmtree_once(path)


def _rmtree_once(path: str) -> None:
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(path, name))
        except IsADirectoryError:
            import shutil  # never expected here; stay correct if it happens

            shutil.rmtree(os.path.join(path, name), ignore_errors=True)
        except FileNotFoundError:
            pass
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
