"""``Runtime``: ketch's OCI runtime as a library (what ``ketch-runtime`` calls).

Every method is safe to call from a fresh process: all it needs is on disk under
``root`` (see :mod:`ketch.runtime.state`). Methods raise ``ketch.errors`` classes
with runc's wording where tools parse it.
"""

from __future__ import annotations

# _socket, not socket: socket.py builds its enums and imports selectors (~3 ms a start)
import _socket as socket
import builtins
import errno
import os
import signal
import time
from collections.abc import Callable, Mapping

from ketch.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from ketch.runtime.launch import (
    ExecHandle,
    StdioFds,
    console_ends,
    destroy_cgroup,
    error_from_child,
    hand_over_master,
    kill_quiet,
    merge,
    needs_cgroup_v2,
    owner,
    rmtree,
    with_default_devices,
    write_id_maps,
)
from ketch.runtime.state import (
    DEFAULT_ROOT,
    ContainerDir,
    Status,
    list_ids,
    proc_start_time,
)

# typing costs ms to import on every container start; annotations are strings here
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ketch.runtime.oci_runtime import OCIRuntime, Stdio

__all__ = ["Runtime"]

_NS_ORDER = ("user", "ipc", "uts", "network", "pid", "cgroup", "time", "mount")


def _now_rfc3339() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


def _cgroup_manager(record: Mapping[str, Any]) -> Any:
    from ketch.runtime.cgroups import new_manager

    return new_manager(record.get("cgroupsPath"), record["id"])


def _until_read(fd: int, timeout: float = 2.0) -> None:
    """Wait until the init has taken the start byte out of the exec fifo (``fd``, our
    write end): from then on its signals are the program's (see ``init._wait_for_start``),
    so a signal sent right after ``start`` returns is not mistaken for one before it."""
    import array
    import fcntl
    import termios

    pending = array.array("i", [0])
    deadline = time.monotonic() + timeout
    delay = 0.0001
    while True:
        fcntl.ioctl(fd, termios.FIONREAD, pending, True)
        if pending[0] == 0 or time.monotonic() > deadline:
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.005)


def _wait_gone(pid: int, start: int | None, timeout: float) -> bool:
    """Wait until ``pid`` (with start time ``start``) has exited; False on timeout."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # already gone (or a kernel without pidfds: poll below)
        fd = -1
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if start is None or proc_start_time(pid) != start:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if fd >= 0:  # readable once the process has exited
                import select

                select.select([fd], [], [], min(left, 0.1))
            else:
                time.sleep(0.005)
    finally:
        if fd >= 0:
            os.close(fd)


class Runtime:
    """The runtime rooted at ``root`` (runc's ``--root``)."""

    name = "ketch"

    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        self.root = root

    # ---- reading state -------------------------------------------------------------

    def _status(self, cd: ContainerDir, rec: Mapping[str, Any]) -> str:
        if rec.get("status") == Status.CREATING:
            creator = rec.get("creator") or [0, None]
            alive = creator[0] and proc_start_time(creator[0]) == creator[1]
            return Status.CREATING if alive else Status.STOPPED
        pid = rec.get("pid") or 0
        if not pid or proc_start_time(pid) != rec.get("startTime"):
            return Status.STOPPED
        if os.path.exists(cd.fifo):
            return Status.CREATED
        try:
            if _cgroup_manager(rec).frozen():
                return Status.PAUSED
        except OSError:
            pass
        return Status.RUNNING

    def _oci_state(self, cd: ContainerDir, rec: Mapping[str, Any]) -> dict[str, Any]:
        status = self._status(cd, rec)
        pid = rec.get("pid") or 0
        return {
            "ociVersion": rec.get("ociVersion", "1.2.1"),
            "id": cd.id,
            "pid": 0 if status == Status.STOPPED else pid,
            "status": status,
            "bundle": rec.get("bundle", ""),
            "rootfs": rec.get("rootfs", ""),
            "created": rec.get("created", ""),
            "owner": rec.get("owner", ""),
            "annotations": rec.get("annotations") or {},
        }

    def state(self, container_id: str) -> dict[str, Any]:
        cd = ContainerDir(self.root, container_id)
        return self._oci_state(cd, cd.load())

    def list(self) -> list[dict[str, Any]]:
        out = []
        for cid in list_ids(self.root):
            cd = ContainerDir(self.root, cid)
            try:
                out.append(self._oci_state(cd, cd.load()))
            except NotFound:
                continue
        return out

    # ---- create ----------------------------------------------------------------------

    def create(self, container_id: str, bundle: str, *, console_socket: str | None = None,
               pid_file: str | None = None, no_pivot: bool = False, preserve_fds: int = 0,
               stdio: Stdio | None = None, foreground_console: bool = False,
               on_console: Callable[[int], None] | None = None) -> int:
        """Create the container; returns the init's host pid. Status is then ``created``.

        ``foreground_console``: the terminal's master is received by this process and
        handed to ``on_console`` (``run -t`` without a console socket).
        """
        from ketch.runtime.validate import load_config, validate

        cd = ContainerDir(self.root, container_id)
        bundle = os.path.abspath(bundle)
        config = load_config(bundle)
        seccomp = validate(config, bundle)
        process = config.get("process") or {}
        if process.get("terminal") and not console_socket and not foreground_console:
            raise InvalidArgument("cannot allocate tty if ketch-runtime will detach without "
                                  "setting console socket")
        if not process.get("terminal") and console_socket:
            raise InvalidArgument("cannot use console socket if ketch-runtime will not "
                                  "detach or allocate tty")
        linux = config.get("linux") or {}
        os.makedirs(self.root, 0o711, exist_ok=True)
        try:
            os.mkdir(cd.path, 0o711)
        except FileExistsError:
            raise Conflict(f"container with given ID already exists: {container_id}") from None
        root_path = config["root"]["path"]
        rootfs = os.path.realpath(os.path.join(bundle, root_path))
        record: dict[str, Any] = {
            "ociVersion": config.get("ociVersion"), "id": container_id, "bundle": bundle,
            "rootfs": rootfs, "created": _now_rfc3339(), "owner": owner(),
            "annotations": config.get("annotations") or {}, "status": Status.CREATING,
            "creator": [os.getpid(), proc_start_time(os.getpid())],
            "cgroupsPath": linux.get("cgroupsPath"), "config": config,
        }
        pid = 0
        cgroup = None
        try:
            cd.save(record)
            from ketch.runtime.cgroups import new_manager

            cgroup = new_manager(linux.get("cgroupsPath"), container_id)
            cgroup.create()
            cgroup.set(with_default_devices(linux, linux.get("resources") or {}))
            os.mkfifo(cd.fifo, 0o600)
            fifo_fd = os.open(cd.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with StdioFds(stdio) as fds:
                pid = self._spawn_init(cd, config, bundle, rootfs, cgroup, seccomp, fifo_fd,
                                       console_socket, foreground_console, on_console, no_pivot,
                                       preserve_fds, fds)
            os.close(fifo_fd)
            record.update(status=Status.CREATED, pid=pid, startTime=proc_start_time(pid))
            record.pop("creator", None)
            cd.save(record)
            if pid_file:
                from ketch.runtime.state import atomic_write

                atomic_write(os.path.abspath(pid_file), str(pid).encode(), 0o644)
        except BaseException:
            if pid:
                kill_quiet(pid, signal.SIGKILL)
                _wait_gone(pid, None, 0)
            if cgroup is not None:
                destroy_cgroup(cgroup)
            rmtree(cd.path)
            raise
        return pid

    def _spawn_init(self, cd: ContainerDir, config: Mapping[str, Any], bundle: str, rootfs: str,
                    cgroup: Any, seccomp: tuple[bytes, int] | None, fifo_fd: int,
                    console_socket: str | None, foreground_console: bool,
                    on_console: Callable[[int], None] | None, no_pivot: bool,
                    preserve_fds: int, stdio: builtins.list[int | None]) -> int:
        from ketch.runtime.init import Channel, CreateContext, init_child, init_direct, preload
        from ketch.sys.ns import CLONE, NS_FLAGS

        preload(config, config.get("process") or {}, seccomp is not None)
        linux = config.get("linux") or {}
        join: list[tuple[str, str]] = []
        new_flags = 0
        userns: str | None = None
        for ns in linux.get("namespaces") or []:
            kind = ns["type"]
            if kind == "user":
                userns = "join" if ns.get("path") else "new"
            if ns.get("path"):
                join.append((kind, ns["path"]))
            elif kind != "user":
                new_flags |= NS_FLAGS[kind][0]
        join.sort(key=lambda j: _NS_ORDER.index(j[0]))
        console, local_console = console_ends(config.get("process") or {}, console_socket)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ctx = CreateContext(
            bundle=bundle, cgroup=cgroup, cgroup_binds=cgroup.mount_binds(),
            cgroup_v2=needs_cgroup_v2(linux),
            chan=Channel(child), config=config, console=console, fifo_fd=fifo_fd,
            id=cd.id, join=join, new_flags=new_flags, no_pivot=no_pivot,
            preserve_fds=preserve_fds, rootfs=rootfs, seccomp=seccomp, userns=userns,
            stdio=stdio)
        direct = (userns is None and not new_flags & CLONE.NEWTIME
                  and not any(kind in ("pid", "user") for kind, _ in join))
        if direct:
            cpid = _fork_in_new_pidns(bool(new_flags & CLONE.NEWPID))
            if cpid == 0:
                parent.close()
                init_direct(ctx)
        else:
            cpid = os.fork()
            if cpid == 0:
                parent.close()
                init_child(ctx)
        child.close()
        if console is not None:
            console.close()
        chan = Channel(parent)
        init_pid = 0
        if direct:  # the child is I itself
            init_pid, cpid = cpid, 0
        ready = hooks_pending = False
        try:
            # C's "pid" and I's messages share the channel and may arrive in either order.
            while not (ready and init_pid):
                msg = chan.recv()
                kind = msg.get("type")
                if kind == "error":
                    raise error_from_child(msg["message"])
                if kind == "userns":
                    write_id_maps(msg["pid"], linux)
                    chan.send(type="userns-ok")
                elif kind == "pid":
                    init_pid = msg["pid"]
                    os.waitpid(cpid, 0)
                    cpid = 0
                elif kind == "hooks":
                    hooks_pending = True
                elif kind == "ready":
                    ready = True
                if hooks_pending and init_pid:
                    from ketch.runtime.hooks import run_hooks

                    state = {"ociVersion": config.get("ociVersion"), "id": cd.id,
                             "status": Status.CREATING, "pid": init_pid, "bundle": bundle,
                             "annotations": config.get("annotations") or {}}
                    run_hooks(config, "prestart", state)
                    run_hooks(config, "createRuntime", state)
                    chan.send(type="hooks-ok", state=state)
                    hooks_pending = False
            hand_over_master(local_console, on_console)
            return init_pid
        except ConnectionError:
            raise FailedPrecondition("container init exited before it was ready") from None
        except BaseException:
            if init_pid:
                kill_quiet(init_pid, signal.SIGKILL)
            raise
        finally:
            if cpid:
                kill_quiet(cpid, signal.SIGKILL)
                try:
                    os.waitpid(cpid, 0)
                except ChildProcessError:
                    pass
            parent.close()
            if local_console is not None:
                local_console.close()

    # ---- start / signals / delete ------------------------------------------------------

    def start(self, container_id: str) -> None:
        cd = ContainerDir(self.root, container_id)
        with cd.locked():
            rec = cd.load()
            status = self._status(cd, rec)
            if status == Status.STOPPED:
                raise FailedPrecondition("cannot start a container that has stopped")
            if status != Status.CREATED:
                raise FailedPrecondition("cannot start an already running container")
            try:
                fd = os.open(cd.fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    raise FailedPrecondition("cannot start a container that has stopped") \
                        from None
                raise
            try:
                os.write(fd, b"0")
                _until_read(fd)
            finally:
                os.close(fd)
            os.unlink(cd.fifo)
            config = rec.get("config") or {}
            from ketch.runtime.hooks import has_hooks, run_hooks

            if has_hooks(config, "poststart"):
                run_hooks(config, "poststart", self._oci_state(cd, rec), fatal=False)

    def kill(self, container_id: str, signal: int = 15, *,
             all_processes: bool = False) -> None:
        cd = ContainerDir(self.root, container_id)
        rec = cd.load()
        status = self._status(cd, rec)
        if status == Status.STOPPED:
            raise FailedPrecondition("container not running")
        if all_processes:
            _cgroup_manager(rec).kill_all(signal)
            return
        kill_quiet(rec["pid"], signal)

    def pause(self, container_id: str) -> None:
        cd = ContainerDir(self.root, container_id)
        with cd.locked():
            rec = cd.load()
            status = self._status(cd, rec)
            if status not in (Status.RUNNING, Status.CREATED):
                raise FailedPrecondition(f"container not running: {status}")
            _cgroup_manager(rec).freeze()

    def resume(self, container_id: str) -> None:
        cd = ContainerDir(self.root, container_id)
        with cd.locked():
            rec = cd.load()
            if self._status(cd, rec) != Status.PAUSED:
                raise FailedPrecondition("container not paused")
            _cgroup_manager(rec).thaw()

    def delete(self, container_id: str, *, force: bool = False) -> None:
        cd = ContainerDir(self.root, container_id)
        with cd.locked():
            rec = cd.load()
            status = self._status(cd, rec)
            if status in (Status.RUNNING, Status.PAUSED) and not force:
                raise FailedPrecondition(
                    f"cannot delete container {container_id} that is not stopped: {status}")
            cgroup = None
            try:
                cgroup = _cgroup_manager(rec)
            except Exception:
                cgroup = None
            if status != Status.STOPPED:
                pid = rec["pid"]
                if cgroup is not None:
                    try:
                        cgroup.kill_all(signal.SIGKILL)
                        if status == Status.PAUSED:
                            cgroup.thaw()
                    except OSError:
                        pass
                kill_quiet(pid, signal.SIGKILL)
                _wait_gone(pid, rec.get("startTime"), 10)
            if cgroup is not None:
                destroy_cgroup(cgroup)
            config = rec.get("config") or {}
            from ketch.runtime.hooks import has_hooks, run_hooks

            if has_hooks(config, "poststop"):
                st = self._oci_state(cd, rec)
                st["status"] = Status.STOPPED
                run_hooks(config, "poststop", st, fatal=False)
            rmtree(cd.path)

    # ---- processes and resources ------------------------------------------------------

    def ps(self, container_id: str) -> builtins.list[int]:
        cd = ContainerDir(self.root, container_id)
        rec = cd.load()
        pids: builtins.list[int] = _cgroup_manager(rec).pids()
        return pids

    def update(self, container_id: str, resources: dict[str, Any]) -> None:
        cd = ContainerDir(self.root, container_id)
        with cd.locked():
            rec = cd.load()
            if self._status(cd, rec) == Status.STOPPED:
                raise FailedPrecondition("container not running")
            from ketch.runtime.validate import validate

            config = rec.get("config") or {}
            linux = config.setdefault("linux", {})
            merged = merge(linux.get("resources") or {}, resources)
            trial = dict(config, linux=dict(linux, resources=merged))
            validate(trial, rec["bundle"], need_process=False, check_rootfs=False)
            _cgroup_manager(rec).set(with_default_devices(linux, merged))
            linux["resources"] = merged
            cd.save(rec)

    def stats(self, container_id: str) -> dict[str, Any]:
        cd = ContainerDir(self.root, container_id)
        rec = cd.load()
        if self._status(cd, rec) == Status.STOPPED:
            raise FailedPrecondition("container not running")
        data: dict[str, Any] = _cgroup_manager(rec).stats()
        return data

    def oom_kills(self, container_id: str) -> int:
        cd = ContainerDir(self.root, container_id)
        n: int = _cgroup_manager(cd.load()).oom_kills()
        return n

    def exec(self, container_id: str, process: dict[str, Any], *, detach: bool = False,
             console_socket: str | None = None, pid_file: str | None = None,
             stdio: Stdio | None = None, preserve_fds: int = 0,
             ignore_paused: bool = False) -> int:
        """Run ``process`` in the container: its exit status, or with ``detach`` its pid."""
        handle = self.spawn_exec(container_id, process, detach=detach,
                                 console_socket=console_socket, pid_file=pid_file, stdio=stdio,
                                 preserve_fds=preserve_fds, ignore_paused=ignore_paused)
        return handle.pid if detach else handle.wait()

    def spawn_exec(self, container_id: str, process: dict[str, Any], *, detach: bool = False,
                   console_socket: str | None = None, pid_file: str | None = None,
                   stdio: Stdio | None = None, preserve_fds: int = 0,
                   ignore_paused: bool = False, foreground_console: bool = False,
                   on_console: Callable[[int], None] | None = None) -> ExecHandle:
        """Start ``process`` in the container; the handle has its pid and waits for it.

        ``foreground_console``: a terminal's master comes to ``on_console`` (``exec -t``
        without a console socket).
        """
        from ketch.runtime.init import Channel, ExecContext, exec_child, preload
        from ketch.runtime.validate import validate_process

        cd = ContainerDir(self.root, container_id)
        rec = cd.load()
        status = self._status(cd, rec)
        if status == Status.STOPPED:
            raise FailedPrecondition("cannot exec in a stopped container")
        if status == Status.PAUSED and not ignore_paused:
            raise FailedPrecondition("cannot exec in a paused container (use --ignore-paused)")
        validate_process(process)
        config = rec.get("config") or {}
        if process.get("terminal") and not console_socket and not foreground_console:
            raise InvalidArgument("cannot allocate tty if ketch-runtime will detach without "
                                  "setting console socket")
        linux = config.get("linux") or {}
        seccomp = None
        if linux.get("seccomp"):
            from ketch.runtime.seccomp import compile_seccomp

            seccomp = compile_seccomp(linux["seccomp"])
        userns = "join" if any(ns["type"] == "user" for ns in linux.get("namespaces") or []) \
            else None
        console, local_console = console_ends(process, console_socket)
        preload({}, process, seccomp is not None)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with StdioFds(stdio) as fds:
            ctx = ExecContext(cgroup=_cgroup_manager(rec), cgroup_v2=needs_cgroup_v2(linux),
                              chan=Channel(child), console=console, init_pid=rec["pid"],
                              preserve_fds=preserve_fds, process=process, seccomp=seccomp,
                              userns=userns, stdio=fds, detach=detach)
            cpid = os.fork()
            if cpid == 0:
                parent.close()
                exec_child(ctx)
        child.close()
        if console is not None:
            console.close()
        chan = Channel(parent)
        pid = 0
        ready = False
        try:
            while not (ready and pid):  # C's "pid" and E's "ready" arrive in either order
                msg = chan.recv()
                if msg.get("type") == "error":
                    raise error_from_child(msg["message"])
                if msg.get("type") == "pid":
                    pid = msg["pid"]
                    if detach:
                        os.waitpid(cpid, 0)
                        cpid = 0
                elif msg.get("type") == "ready":
                    ready = True
            hand_over_master(local_console, on_console)
        except ConnectionError:
            raise FailedPrecondition("exec process exited before it was ready") from None
        except BaseException:
            if pid:
                kill_quiet(pid, signal.SIGKILL)
            if cpid:
                kill_quiet(cpid, signal.SIGKILL)
                os.waitpid(cpid, 0)
            parent.close()
            raise
        finally:
            if local_console is not None:
                local_console.close()
        if pid_file:
            from ketch.runtime.state import atomic_write

            atomic_write(os.path.abspath(pid_file), str(pid).encode(), 0o644)
        if detach:
            # EOF once C has exited and E's copy closed on exec: the program runs now
            try:
                while chan.recv():
                    pass
            except ConnectionError:
                pass
            parent.close()
        return ExecHandle(pid, cpid, chan)


if TYPE_CHECKING:  # mypy proves the library fits the seam the engine uses
    _seam: OCIRuntime = Runtime()


def _fork_in_new_pidns(new_pid_ns: bool) -> int:
    """fork(); with ``new_pid_ns`` the child is pid 1 of a new pid namespace. Only the
    child is in it: by the time this returns in the parent, the parent's later children
    are back in the parent's own pid namespace (the child never runs that part)."""
    if not new_pid_ns:
        return os.fork()
    from ketch.sys.ns import CLONE, setns, unshare

    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        unshare(CLONE.NEWPID)
    except BaseException:
        os.close(own)
        raise
    try:
        pid = os.fork()
    except BaseException:
        setns(own, CLONE.NEWPID)
        os.close(own)
        raise
    if pid == 0:
        os.close(own)
        return 0
    try:
        setns(own, CLONE.NEWPID)
    finally:
        os.close(own)
    return pid
