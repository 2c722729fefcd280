"""The container side of ``create`` and ``exec``: code that runs in forked children.

Process tree of ``create`` (P is the ketch-runtime process)::

    P  validates, makes the state dir and cgroup, forks C, serves C and I over a
       SOCK_SEQPACKET channel, writes state.json, exits (create) or waits (run)
    └─ C  joins the cgroup, joins/creates the user namespace (P writes its id maps),
          joins/creates the other namespaces, forks I, reports I's pid, exits
       └─ I  pid 1 of the new pid namespace: mounts, pivot_root, console, identity;
             says "ready", then blocks on exec.fifo until ``start``; execs the program

``exec`` is the same with C joining the namespaces of a running init and E in
place of I. A pid namespace (new or joined) only applies to children, which is
why C exists. Every message is one JSON object; an error in C, I or E travels
back as ``{"type": "error", "message": ...}`` so P can print one clear line.

The common case goes without C (:func:`init_direct`, one fork fewer on every start):
when the container makes no user or time namespace and joins no pid or user namespace,
P unshares just the new pid namespace (which applies to P's children only), forks I,
and puts its own children back in its pid namespace at once; I then does C's part
(cgroup, joins, the other new namespaces) and goes on as pid 1. A new user namespace
must own the new pid namespace, and a joined pid namespace needs setns in a process
that then forks, so those keep C.
"""

from __future__ import annotations

# _socket, not socket: socket.py builds its enums and imports selectors (~3 ms a start)
import _socket as socket
import json
import os
import select
import signal
from collections.abc import Mapping, Sequence

from ketch.errors import KetchError
from ketch.runtime import process as proc
from ketch.sys import prctl
from ketch.sys.ns import CLONE, NS_FLAGS, setdomainname, sethostname, setns, unshare

# typing costs ms to import on every container start; annotations are strings here
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

__all__ = [
    "Channel", "CreateContext", "ExecContext", "exec_child", "init_child", "init_direct",
    "preload",
]


class Channel:
    """JSON messages over a SOCK_SEQPACKET socket (one message per packet)."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, **msg: Any) -> None:
        self.sock.send(json.dumps(msg).encode())

    def recv(self) -> dict[str, Any]:
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("peer closed the sync channel")
        out: dict[str, Any] = json.loads(data)
        return out

    def expect(self, kind: str) -> dict[str, Any]:
        msg = self.recv()
        if msg.get("type") != kind:
            raise ConnectionError(f"sync: expected {kind}, got {msg.get('type')}")
        return msg


def _describe(e: BaseException) -> str:
    if isinstance(e, KetchError):
        return str(e)
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror}"
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return f"{type(e).__name__}: {e}"


def _fail(chan: Channel | None, e: BaseException) -> NoReturn:
    try:
        if chan is not None:
            chan.send(type="error", message=_describe(e))
    finally:
        os._exit(1)


class CreateContext:
    """Everything C and I need, computed by P before the fork."""

    __slots__ = (
        "bundle",
        "cgroup",
        "cgroup_binds",
        "cgroup_v2",
        "chan",
        "config",
        "console",
        "fifo_fd",
        "id",
        "join",
        "new_flags",
        "no_pivot",
        "preserve_fds",
        "rootfs",
        "seccomp",
        "stdio",
        "userns",
    )

    def __init__(self, *, bundle: str, cgroup: Any, cgroup_binds: Sequence[tuple[str, str]],
                 cgroup_v2: bool,
                 chan: Channel, config: Mapping[str, Any], console: socket.socket | None,
                 fifo_fd: int, id: str, join: Sequence[tuple[str, str]], new_flags: int,
                 no_pivot: bool, preserve_fds: int, rootfs: str,
                 seccomp: tuple[bytes, int] | None, userns: str | None,
                 stdio: Sequence[int | None] = ()) -> None:
        self.bundle = bundle
        self.stdio = stdio  # fds to become 0, 1, 2 (None: keep ours)
        self.cgroup = cgroup
        self.cgroup_v2 = cgroup_v2  # join a hybrid host's cgroup2 hierarchy too
        self.cgroup_binds = cgroup_binds
        self.chan = chan
        self.config = config
        self.console = console
        self.fifo_fd = fifo_fd
        self.id = id
        self.join = join
        self.new_flags = new_flags
        self.no_pivot = no_pivot
        self.preserve_fds = preserve_fds
        self.rootfs = rootfs
        self.seccomp = seccomp
        self.userns = userns  # None, "new" or "join"


class ExecContext:
    """What C and E need for ``exec``: the init's pid and the process to run."""

    __slots__ = ("cgroup", "cgroup_v2", "chan", "console", "detach", "init_pid", "preserve_fds",
                 "process", "seccomp", "stdio", "userns")

    def __init__(self, *, cgroup: Any, cgroup_v2: bool, chan: Channel,
                 console: socket.socket | None,
                 init_pid: int, preserve_fds: int, process: Mapping[str, Any],
                 seccomp: tuple[bytes, int] | None, userns: str | None,
                 stdio: Sequence[int | None] = (), detach: bool = True) -> None:
        self.cgroup = cgroup
        self.cgroup_v2 = cgroup_v2
        self.stdio = stdio
        self.detach = detach  # False: C stays, waits for E and reports its status
        self.chan = chan
        self.console = console
        self.init_pid = init_pid
        self.preserve_fds = preserve_fds
        self.process = process
        self.seccomp = seccomp
        self.userns = userns


def preload(config: Mapping[str, Any], process: Mapping[str, Any], seccomp: bool) -> None:
    """Import, in P before the fork, every module I or E will need.

    After pivot_root (or setns into the container's mount namespace) the host's
    Python library is out of reach, so a lazy import there would fail.
    """
    from ketch.runtime import hooks, rootfs  # noqa: F401

    if process.get("terminal"):
        import fcntl  # noqa: F401
        import termios  # noqa: F401

        from ketch.runtime import console  # noqa: F401
    if seccomp:
        from ketch.sys import seccomp as _seccomp  # noqa: F401
    if hooks.has_hooks(config, "createContainer", "startContainer"):
        import subprocess  # noqa: F401


_UNTIL_START = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                signal.SIGUSR2)


def _terminate_on_signals() -> None:
    # As pid 1 of its namespace, I only receives signals it has a handler for; until
    # the program runs, a TERM/INT/... from the host must still end it. From start on,
    # the program's own dispositions decide (see _wait_for_start).
    def die(signum: int, _frame: object) -> None:
        os._exit(128 + signum)

    for s in _UNTIL_START:
        signal.signal(s, die)


def _take_stdio(fds: Sequence[int | None]) -> None:
    """Make ``fds`` (None: leave alone) this process's stdin, stdout and stderr."""
    # dup everything above 2 first, so a source that is itself 0-2 isn't clobbered
    high = [None if fd is None else os.dup(fd) for fd in fds]
    for target, fd in enumerate(high):
        if fd is not None:
            os.dup2(fd, target)
            os.close(fd)


def _ns_join(join: Sequence[tuple[str, str]], only_user: bool) -> None:
    for kind, path in join:
        if (kind == "user") != only_user:
            continue
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd, NS_FLAGS[kind][0])
        finally:
            os.close(fd)


def _become_ns_root() -> None:
    try:
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    except OSError:  # 0 is not mapped in this user namespace; stay as we are
        pass


def init_child(ctx: CreateContext) -> NoReturn:
    """C of ``create``: never returns."""
    chan: Channel = ctx.chan
    try:
        prctl.set_dumpable(False)
        _take_stdio(ctx.stdio)
        ctx.cgroup.join_self(unified=ctx.cgroup_v2)  # I inherits it
        _ns_join(ctx.join, only_user=True)
        if ctx.userns == "new":
            unshare(CLONE.NEWUSER)
            chan.send(type="userns", pid=os.getpid())
            chan.expect("userns-ok")
            _become_ns_root()
        _ns_join(ctx.join, only_user=False)
        if ctx.new_flags:
            unshare(ctx.new_flags)
        offsets = (ctx.config.get("linux") or {}).get("timeOffsets")
        if ctx.new_flags & CLONE.NEWTIME and offsets:
            with open("/proc/self/timens_offsets", "w") as f:
                for clock, off in offsets.items():
                    f.write(f"{clock} {off.get('secs', 0)} {off.get('nanosecs', 0)}\n")
        pid = os.fork()
        if pid == 0:
            _init(ctx)
        chan.send(type="pid", pid=pid)
        os._exit(0)
    except BaseException as e:
        _fail(chan, e)


def init_direct(ctx: CreateContext) -> NoReturn:
    """I forked by P itself, already pid 1 of the new pid namespace (module docstring):
    C's part, then :func:`_init`. Never returns."""
    try:
        prctl.set_dumpable(False)
        _take_stdio(ctx.stdio)
        ctx.cgroup.join_self(unified=ctx.cgroup_v2)
        _ns_join(ctx.join, only_user=False)
        rest = ctx.new_flags & ~CLONE.NEWPID
        if rest:
            unshare(rest)
    except BaseException as e:
        _fail(ctx.chan, e)
    _init(ctx)


def _setup_console(process: Mapping[str, Any], console: socket.socket | None) -> None:
    from ketch.runtime.console import open_pty, send_fd, set_winsize
    from ketch.sys.mount import MS, mount

    master, slave, path = open_pty()
    size = process.get("consoleSize")
    if size:
        set_winsize(master, size.get("height", 0), size.get("width", 0))
    if os.path.exists("/dev/console"):
        try:
            mount(path, "/dev/console", None, MS.BIND)
        except OSError:
            pass
    if console is None:
        raise OSError("terminal requested but no console socket")
    send_fd(console, master, path)
    os.close(master)
    console.close()
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _sysctl(values: Mapping[str, str]) -> None:
    for key, value in values.items():
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(str(value))


def _wait_for_start(fd: int) -> None:
    """Block until ``start`` writes the exec fifo. From that moment a signal is the
    program's: the handlers that ended a not-yet-started I go back to the default (for
    pid 1 of a namespace: ignored), under a blocked mask so none slips in between."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        try:
            poller.poll()
        except InterruptedError:
            continue
        signal.pthread_sigmask(signal.SIG_BLOCK, _UNTIL_START)
        try:
            data = os.read(fd, 1)
        except (InterruptedError, BlockingIOError):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _UNTIL_START)
            continue
        if data:
            for s in _UNTIL_START:
                signal.signal(s, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _UNTIL_START)
            os.close(fd)
            return
        os._exit(1)  # the writer went away without starting us


def _init(ctx: CreateContext) -> NoReturn:
    """I: pid 1 of the container. Never returns."""
    chan: Channel = ctx.chan
    config = ctx.config
    process: Mapping[str, Any] = config.get("process") or {}
    linux = config.get("linux") or {}
    try:
        prctl.set_dumpable(False)
        os.setsid()
        _terminate_on_signals()
        new_mnt = bool(ctx.new_flags & CLONE.NEWNS)
        userns = ctx.userns is not None
        if new_mnt:
            from ketch.runtime import rootfs

            rootfs.prepare(ctx.rootfs, ctx.bundle, config, userns=userns,
                           cgroup_binds=ctx.cgroup_binds or ())
        from ketch.runtime.hooks import has_hooks, run_hooks

        if has_hooks(config, "prestart", "createRuntime", "createContainer"):
            chan.send(type="hooks")
            state = chan.expect("hooks-ok")["state"]
            run_hooks(config, "createContainer", state)
        if new_mnt:
            rootfs.pivot(ctx.rootfs, no_pivot=bool(ctx.no_pivot))
        if process.get("terminal"):
            _setup_console(process, ctx.console)
        if config.get("hostname"):
            sethostname(config["hostname"])
        if config.get("domainname"):
            setdomainname(config["domainname"])
        if linux.get("sysctl"):
            _sysctl(linux["sysctl"])  # before /proc/sys turns read-only
        if new_mnt:
            rootfs.finalize(config, userns=userns)
        if linux.get("personality"):
            prctl.personality(0x0008 if linux["personality"].get("domain") == "LINUX32" else 0)
        path, args, env, tramp, nnp = _prepare_program(process, ctx)
        chan.send(type="ready")
        chan.sock.close()
    except BaseException as e:
        _fail(chan, e)
    try:
        _wait_for_start(ctx.fifo_fd)
        if has_hooks(config, "startContainer"):
            run_hooks(config, "startContainer", {
                "ociVersion": config.get("ociVersion"), "id": ctx.id, "status": "created",
                "pid": os.getpid(), "bundle": ctx.bundle,
                "annotations": config.get("annotations") or {}})
        if ctx.seccomp and nnp:
            _load_seccomp(ctx.seccomp)
        proc.exec_user(path, args, env, tramp, ctx.preserve_fds or 0)
    except BaseException as e:
        os.write(2, f"ketch-runtime: {_describe(e)}\n".encode())
    os._exit(127)


def _prepare_program(process: Mapping[str, Any], ctx: CreateContext | ExecContext
                     ) -> tuple[str, list[str], dict[str, str], int | None, bool]:
    """Limits, environment, trampoline, early seccomp, identity, program lookup.

    Returns (path, args, env, trampoline fd, noNewPrivileges). With
    noNewPrivileges the caller loads seccomp itself, as late as it can.
    """
    proc.set_rlimits(process)
    env = proc.prepare_env(process)
    tramp = proc.trampoline()
    nnp = bool(process.get("noNewPrivileges"))
    if ctx.seccomp and not nnp:
        _load_seccomp(ctx.seccomp)
    proc.apply_identity(process, setgroups_allowed=_setgroups_allowed(ctx))
    args = list(process["args"])
    return proc.lookup(args[0], env, process.get("cwd") or "/"), args, env, tramp, nnp


def _load_seccomp(compiled: tuple[bytes, int]) -> None:
    from ketch.sys.seccomp import load_filter

    load_filter(compiled[0], compiled[1])


def _setgroups_allowed(ctx: CreateContext | ExecContext) -> bool:
    if ctx.userns is None:
        return True
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() != "deny"
    except OSError:
        return True


def exec_child(ctx: ExecContext) -> NoReturn:
    """C of ``exec``: join the running container's namespaces and fork E."""
    chan: Channel = ctx.chan
    try:
        prctl.set_dumpable(False)
        _take_stdio(ctx.stdio)
        if ctx.cgroup is not None:
            ctx.cgroup.join_self(unified=ctx.cgroup_v2)
        order = ["user", "ipc", "uts", "network", "cgroup", "time", "pid", "mount"]
        fds: list[tuple[str, int]] = []
        for kind in order:
            name = NS_FLAGS[kind][1]
            target = f"/proc/{ctx.init_pid}/ns/{name}"
            try:
                if os.stat(target).st_ino == os.stat(f"/proc/self/ns/{name}").st_ino:
                    continue
            except FileNotFoundError:
                continue
            fds.append((kind, os.open(target, os.O_RDONLY | os.O_CLOEXEC)))
        for kind, fd in fds:
            setns(fd, NS_FLAGS[kind][0])
            os.close(fd)
            if kind == "user":
                _become_ns_root()
        pid = os.fork()
        if pid == 0:
            _exec_main(ctx)
        chan.send(type="pid", pid=pid)
        if ctx.detach:
            os._exit(0)
        # Attached: stay as E's parent (a few MB, shared with P) to collect its status,
        # so the caller needs no subreaper rights.
        for fd in (0, 1, 2):
            os.close(fd)  # E's stdio must reach EOF when E is done, not when we are
        _, status = os.waitpid(pid, 0)
        chan.send(type="exit", status=os.waitstatus_to_exitcode(status))
        os._exit(0)
    except BaseException as e:
        _fail(chan, e)


def _exec_main(ctx: ExecContext) -> NoReturn:
    chan: Channel = ctx.chan
    process = ctx.process
    try:
        prctl.set_dumpable(False)
        if process.get("terminal"):
            os.setsid()
            _setup_console(process, ctx.console)
        path, args, env, tramp, nnp = _prepare_program(process, ctx)
        if ctx.seccomp and nnp:
            _load_seccomp(ctx.seccomp)
        chan.send(type="ready")
        # the channel stays open (close-on-exec): its EOF tells P the program was exec'd
        proc.exec_user(path, args, env, tramp, ctx.preserve_fds or 0)
    except BaseException as e:
        _fail(chan, e)
    os._exit(127)
