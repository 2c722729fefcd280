"""``ketch-runtime``: runc's command line over :class:`ketch.runtime.container.Runtime`.

Errors print one line on stderr (and a record in ``--log`` when given) and exit 1.
``run`` and ``exec`` without ``--detach`` exit with the program's status
(128+N when it was killed by signal N), as runc does.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from ketch.errors import InvalidArgument, KetchError, NotFound

__all__ = ["main"]

PROG = "ketch-runtime"


class _Log:
    """runc's --log/--log-format: where error records go besides stderr."""

    path: str | None = None
    fmt: str = "text"
    debug: bool = False

    @classmethod
    def write(cls, level: str, msg: str) -> None:
        if not cls.path:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if cls.fmt == "json":
            line = json.dumps({"level": level, "msg": msg, "time": now})
        else:
            line = f'time="{now}" level={level} msg="{msg}"'
        try:
            with open(cls.path, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass


def _signal_number(text: str) -> int:
    t = text.upper()
    if t.isdigit():
        return int(t)
    if not t.startswith("SIG"):
        t = "SIG" + t
    try:
        return int(signal.Signals[t])
    except KeyError:
        raise InvalidArgument(f"unknown signal {text!r}") from None


_GLOBAL_WITH_VALUE = ("--root", "--log", "--log-format", "--rootless")


def _find_verb(argv: Sequence[str]) -> str | None:
    """The verb in ``argv`` (first word that is not a global option or its value)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg.startswith("-"):
            skip = arg in _GLOBAL_WITH_VALUE
            continue
        return arg
    return None


def _create_args(sp: argparse.ArgumentParser, name: str) -> None:
    sp.add_argument("-b", "--bundle", default=".")
    sp.add_argument("--console-socket")
    sp.add_argument("--pid-file")
    sp.add_argument("--no-pivot", action="store_true")
    sp.add_argument("--no-new-keyring", action="store_true")
    sp.add_argument("--preserve-fds", type=int, default=0)
    if name == "run":
        sp.add_argument("-d", "--detach", action="store_true")
        sp.add_argument("--keep", action="store_true")


def _exec_args(sp: argparse.ArgumentParser, _name: str) -> None:
    sp.add_argument("command", nargs=argparse.REMAINDER)
    sp.add_argument("-p", "--process")
    sp.add_argument("-t", "--tty", action="store_true")
    sp.add_argument("-d", "--detach", action="store_true")
    sp.add_argument("--console-socket")
    sp.add_argument("--pid-file")
    sp.add_argument("--cwd")
    sp.add_argument("-e", "--env", action="append", default=[])
    sp.add_argument("-u", "--user")
    sp.add_argument("-g", "--additional-gids", action="append", default=[])
    sp.add_argument("-c", "--cap", action="append", default=[])
    sp.add_argument("--no-new-privs", action="store_true")
    sp.add_argument("--preserve-fds", type=int, default=0)
    sp.add_argument("--ignore-paused", action="store_true")
    sp.add_argument("--process-label")
    sp.add_argument("--apparmor")


def _update_args(sp: argparse.ArgumentParser, _name: str) -> None:
    sp.add_argument("-r", "--resources", help="OCI linux.resources JSON file, - for stdin")
    for flag in ("--memory", "--memory-reservation", "--memory-swap", "--kernel-memory",
                 "--cpu-shares", "--cpu-quota", "--cpu-period", "--cpu-rt-period",
                 "--cpu-rt-runtime", "--cpuset-cpus", "--cpuset-mems", "--pids-limit",
                 "--blkio-weight", "--l3-cache-schema", "--mem-bw-schema"):
        sp.add_argument(flag)


def _kill_args(sp: argparse.ArgumentParser, _name: str) -> None:
    sp.add_argument("signal", nargs="?", default="SIGTERM")
    sp.add_argument("-a", "--all", action="store_true")


def _format_args(sp: argparse.ArgumentParser, name: str) -> None:
    sp.add_argument("-f", "--format", default="table", choices=["table", "json"])
    if name == "list":
        sp.add_argument("-q", "--quiet", action="store_true")
    else:
        sp.add_argument("ps_args", nargs=argparse.REMAINDER)


def _flag(flag: str, short: str | None = None) -> Any:
    def add(sp: argparse.ArgumentParser, _name: str) -> None:
        names = [short, flag] if short else [flag]
        sp.add_argument(*names, action="store_true")
    return add


def _events_args(sp: argparse.ArgumentParser, _name: str) -> None:
    sp.add_argument("--interval", default="5s")
    sp.add_argument("--stats", action="store_true")


def _spec_args(sp: argparse.ArgumentParser, _name: str) -> None:
    sp.add_argument("-b", "--bundle", default=".")
    sp.add_argument("--rootless", action="store_true")


def _none(_sp: argparse.ArgumentParser, _name: str) -> None:
    pass


# verb -> (help, takes an id, adds the verb's flags)
_VERBS: dict[str, tuple[str, bool, Any]] = {
    "create": ("create a container", True, _create_args),
    "run": ("create and run a container", True, _create_args),
    "start": ("start a created container", True, _none),
    "state": ("print the state of a container", True, _none),
    "kill": ("send a signal to a container", True, _kill_args),
    "delete": ("delete a container", True, _flag("--force", "-f")),
    "list": ("list containers", False, _format_args),
    "ps": ("processes of a container", True, _format_args),
    "exec": ("run a process in a container", True, _exec_args),
    "pause": ("freeze every process of a container", True, _none),
    "resume": ("thaw a paused container", True, _none),
    "update": ("update resource limits", True, _update_args),
    "events": ("resource usage and OOM events", True, _events_args),
    "spec": ("write a default config.json", False, _spec_args),
    "features": ("print the features this runtime supports", False, _none),
}


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser; with ``only``, just that verb's sub-parser (argparse is slow to build)."""
    p = argparse.ArgumentParser(prog=PROG, description="Run OCI containers (runc-compatible).")
    p.add_argument("--root", default=os.environ.get("KETCH_RUNTIME_ROOT", "/run/ketch-runtime"),
                   help="directory for container state")
    p.add_argument("--log", default=None, help="log file (default: stderr only)")
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    p.add_argument("--debug", action="store_true")
    p.add_argument("--systemd-cgroup", action="store_true", help="not supported")
    p.add_argument("--rootless", default="auto")
    p.add_argument("-v", "--version", action="store_true")
    sub = p.add_subparsers(dest="verb", metavar="COMMAND")
    for name, (help_, takes_id, add) in _VERBS.items():
        if only is not None and name != only:
            continue
        sp = sub.add_parser(name, help=help_)
        if takes_id:
            sp.add_argument("id")
        add(sp, name)
    return p


def _size(text: str) -> int:
    t = text.strip().lower()
    if t == "-1":
        return -1
    mult = 1
    for suffix, m in (("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30), ("t", 1 << 40)):
        if t.endswith(suffix + "b") or t.endswith(suffix):
            mult, t = m, t.rstrip("b")[:-1]
            break
    try:
        return int(float(t) * mult)
    except ValueError:
        raise InvalidArgument(f"invalid size {text!r}") from None


def _update_resources(a: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if a.resources:
        if a.resources == "-":
            src = sys.stdin.read()
        else:
            with open(a.resources) as f:
                src = f.read()
        try:
            res = json.loads(src)
        except ValueError as e:
            raise InvalidArgument(f"resources: invalid JSON: {e}") from None
    mem = res.setdefault("memory", {})
    cpu = res.setdefault("cpu", {})
    for flag, key, conv in (("memory", "limit", _size), ("memory_reservation", "reservation",
                                                        _size),
                            ("memory_swap", "swap", _size)):
        if getattr(a, flag) is not None:
            mem[key] = conv(getattr(a, flag))
    for flag, key in (("cpu_shares", "shares"), ("cpu_quota", "quota"), ("cpu_period", "period"),
                      ("cpu_rt_period", "realtimePeriod"), ("cpu_rt_runtime", "realtimeRuntime")):
        if getattr(a, flag) is not None:
            cpu[key] = int(getattr(a, flag))
    if a.cpuset_cpus is not None:
        cpu["cpus"] = a.cpuset_cpus
    if a.cpuset_mems is not None:
        cpu["mems"] = a.cpuset_mems
    if a.pids_limit is not None:
        res["pids"] = {"limit": int(a.pids_limit)}
    if a.blkio_weight is not None:
        res["blockIO"] = {"weight": int(a.blkio_weight)}
    return {k: v for k, v in res.items() if v}


def _exec_process(rt: Any, a: argparse.Namespace) -> dict[str, Any]:
    if a.process:
        try:
            with open(a.process) as f:
                proc: dict[str, Any] = json.load(f)
        except OSError as e:
            raise InvalidArgument(f"process: {a.process}: {e.strerror}") from None
        except ValueError as e:
            raise InvalidArgument(f"process: {a.process}: invalid JSON: {e}") from None
        return proc
    from ketch.runtime.state import ContainerDir

    cmd = [c for c in a.command if c != "--"] if a.command else []
    if not cmd:
        raise InvalidArgument("exec: no command given (args or --process)")
    rec = ContainerDir(rt.root, a.id).load()
    base = dict((rec.get("config") or {}).get("process") or {})
    base["args"] = cmd
    base["terminal"] = bool(a.tty)
    base.pop("consoleSize", None)
    if a.cwd:
        base["cwd"] = a.cwd
    if a.env:
        base["env"] = list(base.get("env") or []) + a.env
    if a.user:
        uid, _, gid = a.user.partition(":")
        base["user"] = dict(base.get("user") or {}, uid=int(uid), gid=int(gid or 0))
    if a.additional_gids:
        base.setdefault("user", {})["additionalGids"] = [int(g) for g in a.additional_gids]
    if a.cap:
        caps = dict(base.get("capabilities") or {})
        for k in ("bounding", "effective", "permitted", "ambient"):
            caps[k] = sorted(set(caps.get(k) or []) | set(a.cap))
        base["capabilities"] = caps
    if a.no_new_privs:
        base["noNewPrivileges"] = True
    return base


def _wait_child(pid: int) -> int:
    """Wait for ``pid`` (our child or orphan we reap as subreaper), forwarding signals."""
    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
              signal.SIGUSR2):
        signal.signal(s, forward)
    while True:
        try:
            wpid, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            return 255
        if wpid == pid:
            if os.WIFSIGNALED(status):
                return 128 + os.WTERMSIG(status)
            return os.WEXITSTATUS(status)


def _foreground(rt: Any, a: argparse.Namespace, launch: Any) -> int:
    """Run a container or exec process attached to our stdio; returns its exit status."""
    from ketch.sys import prctl

    prctl.set_child_subreaper()
    masters: list[int] = []
    pid = launch(masters.append)
    if masters:
        import threading

        from ketch.runtime.console import proxy

        t = threading.Thread(target=proxy, args=(masters[0], lambda: True), daemon=True)
        t.start()
    return _wait_child(pid)


def _cmd(a: argparse.Namespace) -> int:
    from ketch.runtime.container import Runtime

    rt = Runtime(a.root)
    v = a.verb
    if v == "create":
        rt.create(a.id, a.bundle, console_socket=a.console_socket, pid_file=a.pid_file,
                  no_pivot=a.no_pivot, preserve_fds=a.preserve_fds)
    elif v == "run":
        if a.detach:
            rt.create(a.id, a.bundle, console_socket=a.console_socket, pid_file=a.pid_file,
                      no_pivot=a.no_pivot, preserve_fds=a.preserve_fds)
            rt.start(a.id)
            return 0

        def launch(on_console: Any) -> int:
            pid: int = rt.create(a.id, a.bundle, console_socket=a.console_socket,
                                 pid_file=a.pid_file, no_pivot=a.no_pivot,
                                 preserve_fds=a.preserve_fds,
                                 foreground_console=not a.console_socket,
                                 on_console=on_console)
            rt.start(a.id)
            return pid

        try:
            code = _foreground(rt, a, launch)
        finally:
            if not a.keep:
                try:
                    rt.delete(a.id, force=True)
                except NotFound:
                    pass
        return code
    elif v == "start":
        rt.start(a.id)
    elif v == "state":
        print(json.dumps(rt.state(a.id), indent=2))
    elif v == "kill":
        rt.kill(a.id, _signal_number(a.signal), all_processes=a.all)
    elif v == "delete":
        rt.delete(a.id, force=a.force)
    elif v == "list":
        _print_list(rt.list(), a)
    elif v == "ps":
        pids = rt.ps(a.id)
        if a.format == "json":
            print(json.dumps(pids))
        else:
            _print_ps(pids, [x for x in a.ps_args if x != "--"])
    elif v == "exec":
        process = _exec_process(rt, a)
        if a.detach:
            rt.exec(a.id, process, detach=True, console_socket=a.console_socket,
                    pid_file=a.pid_file, preserve_fds=a.preserve_fds,
                    ignore_paused=a.ignore_paused)
            return 0

        def launch_exec(on_console: Any) -> int:
            pid: int = rt.exec(a.id, process, console_socket=a.console_socket,
                               pid_file=a.pid_file, preserve_fds=a.preserve_fds,
                               ignore_paused=a.ignore_paused,
                               foreground_console=not a.console_socket, on_console=on_console)
            return pid

        return _foreground(rt, a, launch_exec)
    elif v == "pause":
        rt.pause(a.id)
    elif v == "resume":
        rt.resume(a.id)
    elif v == "update":
        rt.update(a.id, _update_resources(a))
    elif v == "events":
        return _events(rt, a)
    elif v == "spec":
        _spec(a)
    elif v == "features":
        from ketch.runtime.features import features

        print(json.dumps(features(), indent=2))
    return 0


def _print_list(states: list[dict[str, Any]], a: argparse.Namespace) -> None:
    if a.quiet:
        for s in states:
            print(s["id"])
        return
    if a.format == "json":
        print(json.dumps(states))
        return
    rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
    rows += [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], s["owner"])
             for s in states]
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for r in rows:
        print("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _print_ps(pids: list[int], ps_args: list[str]) -> None:
    import subprocess

    out = subprocess.run(["ps", *(ps_args or ["-ef"])], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise InvalidArgument(f"ps: {out.stderr.strip()}")
    lines = out.stdout.splitlines()
    if not lines:
        return
    header = lines[0].split()
    try:
        col = header.index("PID")
    except ValueError:
        raise InvalidArgument("ps: output has no PID column") from None
    print(lines[0])
    want = set(pids)
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > col and fields[col].isdigit() and int(fields[col]) in want:
            print(line)


def _events(rt: Any, a: argparse.Namespace) -> int:
    if a.stats:
        print(json.dumps({"type": "stats", "id": a.id, "data": rt.stats(a.id)}))
        return 0
    interval = float(a.interval.rstrip("s") or 5)
    ooms = rt.oom_kills(a.id)
    while rt.state(a.id)["status"] != "stopped":
        n = rt.oom_kills(a.id)
        if n > ooms:
            print(json.dumps({"type": "oom", "id": a.id}), flush=True)
            ooms = n
        try:
            print(json.dumps({"type": "stats", "id": a.id, "data": rt.stats(a.id)}), flush=True)
        except KetchError:
            break
        time.sleep(interval)
    return 0


def _spec(a: argparse.Namespace) -> None:
    from ketch.runtime.specgen import default_spec

    path = os.path.join(a.bundle, "config.json")
    if os.path.exists(path):
        raise InvalidArgument("File config.json exists. Remove it first.")
    with open(path, "w") as f:
        json.dump(default_spec(rootless=a.rootless), f, indent="\t")
        f.write("\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    verb = _find_verb(args)
    parser = _parser(verb if verb in _VERBS else None)
    a = parser.parse_args(args)
    if a.version:
        from ketch import __version__
        from ketch.oci.runtime_spec import OCI_VERSION

        print(f"ketch-runtime version {__version__}\nspec: {OCI_VERSION}")
        return 0
    if not a.verb:
        parser.print_help()
        return 0
    _Log.path, _Log.fmt, _Log.debug = a.log, a.log_format, a.debug
    if a.systemd_cgroup:
        msg = "systemd cgroup driver is not supported; use cgroupfs (omit --systemd-cgroup)"
        print(f"{PROG}: {msg}", file=sys.stderr)
        _Log.write("error", msg)
        return 1
    try:
        return _cmd(a)
    except (KetchError, OSError) as e:
        if isinstance(e, OSError):
            msg = f"{e.filename}: {e.strerror}" if e.filename else (e.strerror or str(e))
        else:
            msg = str(e)
        print(f"{PROG}: {msg}", file=sys.stderr)
        _Log.write("error", msg)
        return 1
    except KeyboardInterrupt:
        return 130
