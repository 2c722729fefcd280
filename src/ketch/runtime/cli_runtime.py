"""``CliRuntime``: the ``OCIRuntime`` seam over a runc-compatible command line.

Every call runs ``<binary> [global_args] --root <root> <verb> ...`` with a list
argv (no shell) and waits for it. runc, crun and ``ketch-runtime`` all fit.

Errors: runc-style CLIs have no error codes, only exit status 1 and a message on
stderr, so failures are classified by the message text (see ``classify_error``)
into ``ketch.errors`` classes. The wording differs between runtimes and
versions; the table below covers runc 1.1, crun 1.8 and ketch-runtime, and
anything unrecognised becomes ``Internal`` carrying the runtime's own line.

stdio: for ``create`` and attached ``exec`` the runtime hands its own stdio to the
container's process, so those calls never capture the runtime's stderr (a pipe
would be held open by the container); they ask the runtime for a JSON log file
(``--log``/``--log-format json``) and read the error from it instead.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from typing import Any

from ketch.errors import (
    Conflict,
    FailedPrecondition,
    Internal,
    KetchError,
    NotFound,
    NotImplementedYet,
)
from ketch.runtime.oci_runtime import Stdio

__all__ = ["CliRuntime", "classify_error"]

log = logging.getLogger(__name__)

_STATE_WORDS = re.compile(r"\b(created|running|stopped|paused)\b")
_STATE_VERBS = re.compile(r"\b(not|cannot|can't|already|is|has)\b")
_LOGFMT_MSG = re.compile(r'\bmsg="((?:[^"\\]|\\.)*)"')

# How long a CLI call may take before we give up on the runtime (it is hung).
_TIMEOUT = 60.0


def classify_error(message: str) -> type[KetchError]:
    """The ``ketch.errors`` class for a runtime's error message (case-insensitive).

    In order: ``exec.fifo`` (crun: start of an already started container) →
    FailedPrecondition; "does not exist", "not found", "no such" → NotFound;
    "already exists", "in use" → Conflict; a container state word (created,
    running, stopped, paused) next to not/cannot/already/is/has →
    FailedPrecondition; "unknown command" → NotImplementedYet; else Internal.
    Note "no such file" also covers an exec of a missing binary (NotFound).
    """
    m = message.lower()
    if "exec.fifo" in m:
        return FailedPrecondition
    if "does not exist" in m or "not found" in m or "no such" in m:
        return NotFound
    if "already exists" in m or "in use" in m:
        return Conflict
    if _STATE_WORDS.search(m) and _STATE_VERBS.search(m):
        return FailedPrecondition
    if "unknown command" in m:
        return NotImplementedYet
    return Internal


def _messages(text: str) -> list[str]:
    """Error messages from runtime output: JSON log records, logrus text lines or raw lines."""
    out: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if isinstance(rec, dict):
                if str(rec.get("level", "error")).lower() in ("error", "fatal", "panic"):
                    msg = rec.get("msg", rec.get("message"))
                    if msg:
                        out.append(str(msg))
                continue
        m = _LOGFMT_MSG.search(line)
        if m:
            if "level=error" in line or "level=fatal" in line:
                out.append(m.group(1).replace('\\"', '"'))
            continue
        out.append(line)
    return out


class CliRuntime:
    """An ``OCIRuntime`` that drives a runc-compatible binary.

    ``binary`` is the executable (runc, crun, ketch-runtime or a wrapper script),
    ``root`` its state directory (``--root``), ``name`` defaults to the binary's
    file name, ``global_args`` go before ``--root`` (e.g. crun's
    ``--cgroup-manager=cgroupfs``). Thread-safe: no state beyond the arguments.
    """

    def __init__(self, binary: str, root: str, *, name: str | None = None,
                 global_args: Sequence[str] = ()) -> None:
        self.binary = binary
        self.root = root
        self.name = name or os.path.basename(binary)
        self.global_args = tuple(global_args)

    def __repr__(self) -> str:
        return f"CliRuntime({self.binary!r}, root={self.root!r}, name={self.name!r})"

    # -- plumbing -----------------------------------------------------------------

    def _argv(self, args: Sequence[str], log_file: str | None = None) -> list[str]:
        argv = [self.binary, *self.global_args]
        if log_file is not None:
            argv += [f"--log={log_file}", "--log-format=json"]
        return [*argv, f"--root={self.root}", *args]

    def _error(self, args: Sequence[str], text: str, returncode: int) -> KetchError:
        msgs = _messages(text)
        msg = msgs[-1] if msgs else f"exit status {returncode} and no error message"
        verb = args[0] if args else ""
        log.debug("%s %s failed (%d): %s", self.name, " ".join(args), returncode, text.strip())
        return classify_error(msg)(f"{self.name} {verb}: {msg}")

    def _call(self, args: Sequence[str], *, input: str | None = None) -> str:
        """Run a verb whose stdio is ours alone; return stdout, raise the mapped error."""
        try:
            p = subprocess.run(self._argv(args), input=input, capture_output=True, text=True,
                               stdin=None if input is not None else subprocess.DEVNULL,
                               timeout=_TIMEOUT, check=False)
        except FileNotFoundError:
            raise Internal(f"{self.name}: runtime binary {self.binary} not found") from None
        except subprocess.TimeoutExpired:
            raise Internal(f"{self.name} {args[0]}: no answer in {_TIMEOUT:.0f}s") from None
        if p.returncode != 0:
            raise self._error(args, p.stderr or p.stdout, p.returncode)
        return p.stdout

    def _call_with_stdio(self, args: Sequence[str], stdio: Stdio | None, tmp: str,
                         timeout: float | None = None) -> tuple[int, list[str]]:
        """Run a verb whose stdio belongs to the container process.

        Returns the exit status and the error messages the runtime logged.
        """
        log_file = os.path.join(tmp, "log.json")
        s = stdio or Stdio()
        try:
            p = subprocess.run(self._argv(args, log_file), stdin=s.stdin,
                               stdout=s.stdout, stderr=s.stderr, timeout=timeout,
                               check=False)
        except FileNotFoundError:
            raise Internal(f"{self.name}: runtime binary {self.binary} not found") from None
        except subprocess.TimeoutExpired:
            raise Internal(f"{self.name} {args[0]}: no answer in {timeout:.0f}s") from None
        try:
            with open(log_file) as f:
                errors = _messages(f.read())
        except FileNotFoundError:
            errors = []
        return p.returncode, errors

    # -- OCIRuntime -----------------------------------------------------------------

    def create(self, container_id: str, bundle: str, *, console_socket: str | None = None,
               pid_file: str | None = None, stdio: Stdio | None = None) -> int:
        """``create --bundle``; the container's stdio is ``stdio`` (None: ours).

        Pass real files or descriptors: a ``subprocess.PIPE`` could not be read back.
        """
        args = ["create", "--bundle", os.path.abspath(bundle)]
        if console_socket:
            args += ["--console-socket", console_socket]
        with tempfile.TemporaryDirectory(prefix="ketch-cli-") as tmp:
            # the pid comes back through a pid file (ours, when the caller gave none)
            pid_path = pid_file or os.path.join(tmp, "init.pid")
            args += ["--pid-file", pid_path, container_id]
            rc, errors = self._call_with_stdio(args, stdio, tmp, timeout=_TIMEOUT)
            if rc != 0:
                raise self._error(args, "\n".join(errors), rc)
            with open(pid_path) as f:
                return int(f.read().strip())

    def start(self, container_id: str) -> None:
        """``start``: exec the user process of a ``created`` container."""
        self._call(["start", container_id])

    def state(self, container_id: str) -> dict[str, Any]:
        """``state``: the runtime's state document (OCI fields plus its own extras)."""
        doc: dict[str, Any] = json.loads(self._call(["state", container_id]))
        return doc

    def kill(self, container_id: str, signal: int = 15, *, all_processes: bool = False) -> None:
        """``kill [--all] ID SIGNUM`` (the signal goes as a number)."""
        args = ["kill"]
        if all_processes:
            args.append("--all")
        self._call([*args, container_id, str(int(signal))])

    def delete(self, container_id: str, *, force: bool = False) -> None:
        """``delete [--force]``; FailedPrecondition for a live container without force."""
        self._call(["delete", *(["--force"] if force else []), container_id])

    def list(self) -> list[dict[str, Any]]:
        """``list --format json``; [] when there are none."""
        out = self._call(["list", "--format", "json"]).strip()
        # runc prints "null" when there are no containers
        docs = json.loads(out) if out else None
        return list(docs or [])

    def pause(self, container_id: str) -> None:
        """``pause`` (cgroup freezer)."""
        self._call(["pause", container_id])

    def resume(self, container_id: str) -> None:
        """``resume``."""
        self._call(["resume", container_id])

    # builtins.list: the method named list shadows the type inside the class body
    def ps(self, container_id: str) -> builtins.list[int]:
        """``ps --format json``: host pids; [] for a container without processes."""
        out = self._call(["ps", "--format", "json", container_id]).strip()
        # runc prints "null" for a container without processes
        pids = json.loads(out) if out else None
        return [int(p) for p in pids or []]

    def update(self, container_id: str, resources: dict[str, Any]) -> None:
        """``update -r -`` with ``resources`` (OCI ``linux.resources``) on stdin."""
        self._call(["update", "--resources", "-", container_id], input=json.dumps(resources))

    def exec(self, container_id: str, process: dict[str, Any], *, detach: bool = False,
             console_socket: str | None = None, pid_file: str | None = None,
             stdio: Stdio | None = None) -> int:
        """``exec --process``; the exit status (attached) or host pid (``detach``).

        Attached, a non-zero status with no error in the runtime's log is the
        process's own status (128+N when killed by signal N); a logged error is
        raised instead.
        """
        with tempfile.TemporaryDirectory(prefix="ketch-cli-") as tmp:
            proc_file = os.path.join(tmp, "process.json")
            with open(proc_file, "w") as f:
                json.dump(process, f)
            args = ["exec", "--process", proc_file]
            if detach:
                args.append("--detach")
                # the pid comes back through the pid file; make one if the caller did not
                pid_file = pid_file or os.path.join(tmp, "pid")
            if console_socket:
                args += ["--console-socket", console_socket]
            if pid_file:
                args += ["--pid-file", pid_file]
            args.append(container_id)
            rc, errors = self._call_with_stdio(args, stdio, tmp)
            if errors or (detach and rc != 0):
                raise self._error(args, "\n".join(errors), rc)
            if not detach:
                return rc
            assert pid_file is not None
            try:
                with open(pid_file) as f:
                    return int(f.read().strip())
            except (OSError, ValueError) as e:
                raise Internal(f"{self.name} exec: no pid in {pid_file}: {e}") from None

    def stats(self, container_id: str) -> dict[str, Any]:
        """``events --stats``: the ``data`` member (NotImplementedYet if the CLI lacks it)."""
        out = self._call(["events", "--stats", container_id])
        for line in out.splitlines():
            line = line.strip()
            if line:
                event = json.loads(line)
                if event.get("type") == "stats":
                    data: dict[str, Any] = event.get("data") or {}
                    return data
        raise Internal(f"{self.name} events --stats: no stats event in {out[:200]!r}")

