"""Per-container supervisors ("shims") and the zygote that forks them.

ketchd never forks-and-unshares itself. Each container gets a *supervisor*: a
small single-threaded process that holds the container's stdio, writes its log,
records its exit status and outlives a daemon restart (containerd-shim's and
conmon's job). Supervisors are forked from the *zygote*, a fork server ketchd
starts before it has threads, with everything pre-imported and ``gc.freeze()``
called so that supervisors share those pages copy-on-write.

Lifecycle of one container::

    ZygoteHandle.spawn(SpawnRequest)   zygote double-forks a supervisor; it runs
                                       runtime.create and listens on sup.sock
        → SpawnResult(supervisor_pid, init_pid)      status "created"
    SupervisorClient.open_attach(...)  attach clients connect (before start, so
                                       they see the first byte)
    SupervisorClient.start()           runtime.start              status "running";
                                       then the supervisor execs the C holder
                                       (``handover``, ``holder.c``) unless
                                       KETCH_HOLDER=none or it is not built
    ... output → log driver + attach clients; resize; kills go through the
        runtime (make_runtime(desc).kill) from ketchd, never via the supervisor
    SupervisorClient.open_exec(..., zygote=z)   an exec supervisor per exec
                                       (``execsup``), on <state_dir>/x-<hash>.sock
    init exits → output drained (≤ 2 s) → log closed → [Python: runtime.delete] →
        exit.json → waits answered, connections closed → sup.sock removed → exit;
        with the holder, ketchd deletes the runtime state once sup.sock is gone
                                                      status "exited"

State directory (``SpawnRequest.state_dir``; files written atomically)::

    sup.sock          control/attach socket, 0600 (gone once the supervisor exited)
    sup.pid           the supervisor's pid (the holder keeps it)
    init.pid          the container init's host pid
    spawn.json        the spawn request (what exec supervisors need)
    exit.json         {"exit_code", "finished_at", "oom_killed", "error"} once exited
    execs/<id>.json   {"pid", "running", "exit_code"} per exec
    x-<hash>.sock     an exec supervisor's socket (attach, resize, exec-state)
    sup.log           the supervisor's own tracebacks (removed when empty)

Control protocol on ``sup.sock``: one JSON request line, one JSON reply line
(``{"ok": true, ...}`` or ``{"error": msg, "kind": ketch.errors class}``):

    attach      {"stdin","stdout","stderr": bool, "detach_keys": [int]} → raw stream
    start       → ok
    resize      {"height","width"} → ok
    wait        → {"exit": {...}} once the container exited
    state       → {"status", "pid", "exit"}

Streams carry Docker's multiplexed frames (8-byte header: stream 1/2, three zero
bytes, big-endian length) unless the process has a terminal (raw bytes).
See docs/supervisor.md for the rules on stdin EOF, detach keys and draining.

Modules: ``protocol`` (wire shapes, framing, detach keys), ``zygote`` (fork server,
``make_runtime``), ``shim`` (a supervisor's lifecycle and requests), ``handover``
(exec of the C holder), ``execsup`` (exec supervisors), ``loop`` (its
epoll I/O), ``launch`` (process plumbing: helper children, stdio, setup), ``client``.
"""

from ketch.engine.supervisor.client import SupervisorClient
from ketch.engine.supervisor.protocol import (
    DEFAULT_DETACH_KEYS,
    DetachScanner,
    ExecRequest,
    ExecResult,
    FrameDecoder,
    SpawnRequest,
    SpawnResult,
    exec_socket_path,
    frame,
    parse_detach_keys,
)
from ketch.engine.supervisor.zygote import ZygoteHandle, make_runtime, start_zygote

__all__ = [
    "DEFAULT_DETACH_KEYS",
    "DetachScanner",
    "ExecRequest",
    "ExecResult",
    "FrameDecoder",
    "SpawnRequest",
    "SpawnResult",
    "SupervisorClient",
    "ZygoteHandle",
    "exec_socket_path",
    "frame",
    "make_runtime",
    "parse_detach_keys",
    "start_zygote",
    "supervisor_pss_kib",
]


def supervisor_pss_kib(pid: int) -> int:
    """Proportional set size of process ``pid`` in KiB (``/proc/<pid>/smaps_rollup``)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise OSError(f"/proc/{pid}/smaps_rollup has no Pss line")
