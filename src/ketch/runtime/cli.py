"""``ketch-runtime``: runc's command line over :class:`ketch.runtime.container.Runtime`.

Errors print one line on stderr (and a record in ``--log`` when given) and exit 1.
``run`` and ``exec`` without ``--detach`` exit with the program's status
(128+N when it was killed by signal N), as runc does.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import SimpleNamespace

from ketch.errors import InvalidArgument, KetchError, NotFound

# typing costs ms to import on every container start; annotations are strings here
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

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


class Args(SimpleNamespace):
    """Parsed command line: global options, ``verb`` and the verb's options."""


# One table drives both parsers: a hand-rolled one for the normal path (argparse
# costs several ms to build, on every container start) and argparse for --help
# and for error messages. Option kinds: flag, value, int, append.
if TYPE_CHECKING:
    Opt = tuple[tuple[str, ...], str, Any]

_GLOBAL: list[Opt] = [
    (("--root",), "value", None),
    (("--log",), "value", None),
    (("--log-format",), "value", "text"),
    (("--debug",), "flag", False),
    (("--systemd-cgroup",), "flag", False),
    (("--rootless",), "value", "auto"),
    (("-v", "--version"), "flag", False),
]
_CREATE: list[Opt] = [
    (("-b", "--bundle"), "value", "."), (("--console-socket",), "value", None),
    (("--pid-file",), "value", None), (("--no-pivot",), "flag", False),
    (("--no-new-keyring",), "flag", False), (("--preserve-fds",), "int", 0),
]
_RUN = [*_CREATE, (("-d", "--detach"), "flag", False), (("--keep",), "flag", False)]
_EXEC: list[Opt] = [
    (("-p", "--process"), "value", None), (("-t", "--tty"), "flag", False),
    (("-d", "--detach"), "flag", False), (("--console-socket",), "value", None),
    (("--pid-file",), "value", None), (("--cwd",), "value", None),
    (("-e", "--env"), "append", None), (("-u", "--user"), "value", None),
    (("-g", "--additional-gids"), "append", None), (("-c", "--cap"), "append", None),
    (("--no-new-privs",), "flag", False), (("--preserve-fds",), "int", 0),
    (("--ignore-paused",), "flag", False), (("--process-label",), "value", None),
    (("--apparmor",), "value", None),
]
_UPDATE: list[Opt] = [(("-r", "--resources"), "value", None)] + [
    ((f,), "value", None) for f in (
        "--memory", "--memory-reservation", "--memory-swap", "--kernel-memory", "--cpu-shares",
        "--cpu-quota", "--cpu-period", "--cpu-rt-period", "--cpu-rt-runtime", "--cpuset-cpus",
        "--cpuset-mems", "--pids-limit", "--blkio-weight", "--l3-cache-schema",
        "--mem-bw-schema")]
_FORMAT: list[Opt] = [(("-f", "--format"), "value", "table")]

# verb -> (help, options, positionals as (dest, "one" | "optional" | "rest", default))
_VERBS: dict[str, tuple[str, list[Opt], list[tuple[str, str, Any]]]] = {
    "create": ("create a container", _CREATE, [("id", "one", None)]),
    "run": ("create and run a container", _RUN, [("id", "one", None)]),
    "start": ("start a created container", [], [("id", "one", None)]),
    "state": ("print the state of a container", [], [("id", "one", None)]),
    "kill": ("send a signal to a container", [(("-a", "--all"), "flag", False)],
             [("id", "one", None), ("signal", "optional", "SIGTERM")]),
    "delete": ("delete a container", [(("-f", "--force"), "flag", False)],
               [("id", "one", None)]),
    "list": ("list containers", [*_FORMAT, (("-q", "--quiet"), "flag", False)], []),
    "ps": ("processes of a container", _FORMAT, [("id", "one", None), ("ps_args", "rest", [])]),
    "exec": ("run a process in a container", _EXEC,
             [("id", "one", None), ("command", "rest", [])]),
    "pause": ("freeze every process of a container", [], [("id", "one", None)]),
    "resume": ("thaw a paused container", [], [("id", "one", None)]),
    "update": ("update resource limits", _UPDATE, [("id", "one", None)]),
    "events": ("resource usage and OOM events",
               [(("--interval",), "value", "5s"), (("--stats",), "flag", False)],
               [("id", "one", None)]),
    "spec": ("write a default config.json",
             [(("-b", "--bundle"), "value", "."), (("--rootless",), "flag", False)], []),
    "features": ("print the features this runtime supports", [], []),
}


def _dest(names: tuple[str, ...]) -> str:
    return names[-1].lstrip("-").replace("-", "_")


def _defaults(opts: list[Opt], ns: Args) -> dict[str, tuple[str, str]]:
    """Set defaults on ``ns``; returns option name -> (dest, kind)."""
    table: dict[str, tuple[str, str]] = {}
    for names, kind, default in opts:
        dest = _dest(names)
        setattr(ns, dest, [] if kind == "append" else default)
        for n in names:
            table[n] = (dest, kind)
    return table


def _fast_parse(argv: Sequence[str]) -> Args | None:
    """Parse runc-style argv; None when argparse must handle it (help or an error)."""
    ns = Args(verb=None)
    table = _defaults(_GLOBAL, ns)
    ns.root = os.environ.get("KETCH_RUNTIME_ROOT", "/run/ketch-runtime")
    positionals: list[str] = []
    spec: list[tuple[str, str, Any]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if ns.verb is not None and positionals and spec and spec[-1][1] == "rest" and \
                len(positionals) >= len(spec) - 1:
            positionals.append(arg)  # the rest belongs to the command
            continue
        if arg == "--" and ns.verb is not None:
            positionals.extend(argv[i:])
            break
        if arg.startswith("-") and arg != "-":
            name, eq, value = arg.partition("=")
            if name in ("-h", "--help") or name not in table:
                return None
            dest, kind = table[name]
            if kind == "flag":
                if eq:
                    return None
                setattr(ns, dest, True)
                continue
            if not eq:
                if i >= len(argv):
                    return None
                value = argv[i]
                i += 1
            if kind == "int":
                if not value.lstrip("-").isdigit():
                    return None
                setattr(ns, dest, int(value))
            elif kind == "append":
                getattr(ns, dest).append(value)
            else:
                setattr(ns, dest, value)
            continue
        if ns.verb is None:
            if arg not in _VERBS:
                return None
            ns.verb = arg
            _help, opts, spec = _VERBS[arg]
            table = _defaults(opts, ns)
            continue
        positionals.append(arg)
    if ns.verb is None:
        return ns if ns.version else None
    for pos, (dest, kind, default) in enumerate(spec):
        if kind == "rest":
            setattr(ns, dest, positionals[pos:])
            positionals = positionals[:pos]
            break
        if pos < len(positionals):
            setattr(ns, dest, positionals[pos])
        elif kind == "one":
            return None
        else:
            setattr(ns, dest, default)
    if len(positionals) > len([s for s in spec if s[1] != "rest"]):
        return None
    return ns


def _parser() -> argparse.ArgumentParser:
    """The argparse parser, for --help and for explaining mistakes."""
    import argparse

    p = argparse.ArgumentParser(prog=PROG, description="Run OCI containers (runc-compatible).")

    def add_opts(target: argparse.ArgumentParser, opts: list[Opt]) -> None:
        for names, kind, default in opts:
            if kind == "flag":
                target.add_argument(*names, action="store_true")
            elif kind == "append":
                target.add_argument(*names, action="append", default=[])
            elif kind == "int":
                target.add_argument(*names, default=default, type=int)
            else:
                target.add_argument(*names, default=default)

    add_opts(p, _GLOBAL)
    sub = p.add_subparsers(dest="verb", metavar="COMMAND")
    for name, (help_, opts, positionals) in _VERBS.items():
        sp = sub.add_parser(name, help=help_)
        add_opts(sp, opts)
        for dest, kind, default in positionals:
            nargs = {"one": None, "optional": "?", "rest": argparse.REMAINDER}[kind]
            if nargs is None:
                sp.add_argument(dest)
            else:
                sp.add_argument(dest, nargs=nargs, default=default)
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


def _update_resources(a: Args) -> dict[str, Any]:
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


def _exec_process(rt: Any, a: Args) -> dict[str, Any]:
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


def _forward_signals(pid: int) -> None:
    """Pass the signals a user sends us on to ``pid``, as runc does for run and exec."""
    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
              signal.SIGUSR2):
        signal.signal(s, forward)


def _start_proxy(master: int) -> Any:
    """Copy between our terminal and ``master`` in a thread, until the container's side
    closes; join it so our terminal is restored before we exit."""
    import threading

    from ketch.runtime.console import proxy

    t = threading.Thread(target=proxy, args=(master,), daemon=True)
    t.start()
    return t


def _wait_child(pid: int) -> int:
    """Wait for ``pid`` (an orphan we reap as subreaper), forwarding signals to it."""
    _forward_signals(pid)
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


def _foreground(launch: Any) -> int:
    """Run a container attached to our stdio; returns its exit status."""
    from ketch.sys import prctl

    prctl.set_child_subreaper()
    masters: list[int] = []
    pid = launch(masters.append)
    proxy = _start_proxy(masters[0]) if masters else None
    code = _wait_child(pid)
    if proxy is not None:
        proxy.join(1.0)
    return code


def _cmd(a: Args) -> int:
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
            code = _foreground(launch)
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

        masters: list[int] = []
        handle = rt.spawn_exec(a.id, process, console_socket=a.console_socket,
                               pid_file=a.pid_file, preserve_fds=a.preserve_fds,
                               ignore_paused=a.ignore_paused,
                               foreground_console=not a.console_socket,
                               on_console=masters.append)
        _forward_signals(handle.pid)
        proxy = _start_proxy(masters[0]) if masters else None
        status: int = handle.wait()
        if proxy is not None:
            proxy.join(1.0)
        return 128 - status if status < 0 else status
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


def _print_list(states: list[dict[str, Any]], a: Args) -> None:
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


def _events(rt: Any, a: Args) -> int:
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


def _spec(a: Args) -> None:
    from ketch.runtime.specgen import default_spec

    path = os.path.join(a.bundle, "config.json")
    if os.path.exists(path):
        raise InvalidArgument("File config.json exists. Remove it first.")
    with open(path, "w") as f:
        json.dump(default_spec(rootless=a.rootless), f, indent="\t")
        f.write("\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parsed = _fast_parse(args)
    if parsed is None:  # help, or a mistake: let argparse explain it
        parser = _parser()
        parsed = parser.parse_args(args, namespace=Args())
        if not parsed.verb and not parsed.version:
            parser.print_help()
            return 0
    a = parsed
    if parsed.root is None:
        a.root = os.environ.get("KETCH_RUNTIME_ROOT", "/run/ketch-runtime")
    if a.version:
        from ketch import __version__
        from ketch.oci.runtime_spec import OCI_VERSION

        print(f"ketch-runtime version {__version__}\nspec: {OCI_VERSION}")
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
