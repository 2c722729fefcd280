"""Handing a started container over to the C holder (``holder.c``).

A Python supervisor costs ~2.5 MiB of private memory for as long as its container
runs. Once ``start`` succeeded it has nothing left to do that needs Python, so it
``execve``s ``ketch-holder`` (same pid: the container's init stays its child, the
subreaper flag and the ignored signals carry over) and hands over, on inherited
descriptors, everything it holds: the sup.sock listener, the container's output
fds, the stdin sink, every client connection with its unsent bytes, the log's
settings and unterminated lines, and where to count OOM kills. The document is
JSON in a memfd whose number is the holder's only argument::

    {"id", "state_dir", "name", "init_pid", "tty", "stdin_once", "listener", "master",
     "sources": [{"fd", "stream"}], "sink": {"fd", "buf", "eof"} | null,
     "conns": [{"fd", "mode", "stdin", "stdout", "stderr", "detach_keys", "held",
                "out", "in", "read_eof", "closing"}],
     "log": {"path", "max_size", "max_file", "compress", "pending": [{"stream", "data",
             "ts"}]} | null,
     "oom": {"path", "start"} | null}

Byte strings travel as hex. Where the holder is: ``$KETCH_HOLDER`` (``none``: stay
in Python), else ``<sys.prefix>/libexec/ketch-holder`` (built by ``./bootstrap``);
when it is missing the Python supervisor simply carries on.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ketch.engine.supervisor.shim import Supervisor

__all__ = ["handover", "handover_doc", "holder_path", "oom_source"]


def holder_path() -> str | None:
    """The holder binary to exec, or None (not built, or ``KETCH_HOLDER=none``)."""
    path = os.environ.get("KETCH_HOLDER") or os.path.join(sys.prefix, "libexec", "ketch-holder")
    if path == "none" or not os.access(path, os.X_OK):
        return None
    return path


def _oom_count(path: str) -> int:
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    return 0


def oom_source(pid: int) -> tuple[str, int] | None:
    """The file counting OOM kills in ``pid``'s memory cgroup (v1 ``memory.oom_control``
    or v2 ``memory.events``, key ``oom_kill``) and its count now; None if unknown."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            groups = f.read().splitlines()
        with open("/proc/self/mountinfo") as f:
            mounts = f.read().splitlines()
    except OSError:
        return None
    v1 = v2 = None
    for line in groups:
        _hier, ctrls, path = line.split(":", 2)
        if "memory" in ctrls.split(","):
            v1 = path
        elif ctrls == "":
            v2 = path
    for m in mounts:
        pre, _, post = m.partition(" - ")
        fields, info = pre.split(), post.split()
        if len(fields) < 5 or len(info) < 3:
            continue
        root, point, (fstype, _src, opts) = fields[3], fields[4], info[:3]
        if v1 is not None and fstype == "cgroup" and "memory" in opts.split(","):
            path, name = v1, "memory.oom_control"
        elif v1 is None and v2 is not None and fstype == "cgroup2":
            path, name = v2, "memory.events"
        else:
            continue
        if root != "/" and (path + "/").startswith(root + "/"):
            path = path[len(root):]
        file = os.path.join(point + path, name)
        try:
            return file, _oom_count(file)
        except (OSError, ValueError):
            return None
    return None


def handover_doc(sup: Supervisor) -> tuple[dict[str, Any], list[int]]:
    """The document describing ``sup``'s state, and the descriptors it names."""
    fds: list[int] = []
    assert sup.listener is not None
    fds.append(sup.listener.fileno())
    sources = []
    for fd, (stream, _ex) in sup.sources.items():
        sources.append({"fd": fd, "stream": stream})
        fds.append(fd)
    sink = None
    if sup.stdin_sink is not None:
        s = sup.stdin_sink
        sink = {"fd": s.fd, "buf": bytes(s.buf).hex(), "eof": s.eof}
        fds.append(s.fd)
    conns = []
    for c in sup.conns.values():
        sc = c.scanner
        conns.append({"fd": c.fd, "mode": c.mode, "stdin": c.stdin, "stdout": c.stdout,
                      "stderr": c.stderr, "detach_keys": list(sc.keys) if sc else [],
                      "held": sc.held if sc else 0, "out": bytes(c.out).hex(),
                      "in": bytes(c.inbuf).hex(), "read_eof": c.read_eof,
                      "closing": c.closing})
        fds.append(c.fd)
    log = None
    if sup.log is not None:
        opts = sup.log.options
        pending = [{"stream": st, "data": bytes(buf).hex(), "ts": ts}
                   for st, (buf, ts) in sup.log._pending.items()]
        log = {"path": sup.log.path, "max_size": opts.max_size, "max_file": opts.max_file,
               "compress": opts.compress, "pending": pending}
    oom = oom_source(sup.init_pid)
    doc = {"id": sup.req.id, "state_dir": sup.dir, "name": f"ksup-{sup.req.id[:10]}",
           "init_pid": sup.init_pid, "tty": sup.tty, "stdin_once": sup.stdin_once,
           "listener": fds[0], "master": sup.master, "sources": sources, "sink": sink,
           "conns": conns, "log": log,
           "oom": {"path": oom[0], "start": oom[1]} if oom is not None else None}
    return doc, fds


def handover(sup: Supervisor) -> None:
    """Exec the holder in place of this started supervisor. Returns only when that
    cannot be done (no holder; the init already exited; exec failed): the Python
    supervisor then carries on."""
    path = holder_path()
    if path is None or sup.exit_status is not None or sup.listener is None:
        return
    doc, fds = handover_doc(sup)
    handed = set(fds)
    mfd = os.memfd_create("ketch-handover", 0)  # no CLOEXEC: the holder reads it
    try:
        os.write(mfd, json.dumps(doc).encode())
        os.lseek(mfd, 0, os.SEEK_SET)
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd != mfd:
                try:
                    os.set_inheritable(fd, fd in handed)
                except OSError:
                    pass  # the listdir's own descriptor
        os.execv(path, [path, str(mfd)])
    except OSError as e:
        print(f"ketch supervisor: cannot exec the holder {path}: {e}; carrying on in Python",
              file=sys.stderr, flush=True)
        for fd in handed:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass
    finally:
        os.close(mfd)
