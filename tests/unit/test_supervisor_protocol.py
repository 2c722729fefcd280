"""The supervisor's wire shapes: framing, detach keys, requests, errors, reports (no root)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ketch.engine.supervisor import SupervisorClient
from ketch.engine.supervisor.handover import holder_path
from ketch.engine.supervisor.protocol import (
    DEFAULT_DETACH_KEYS,
    DetachScanner,
    ExecRequest,
    FrameDecoder,
    SpawnRequest,
    error_from_wire,
    error_to_wire,
    exec_socket_path,
    exit_code_of,
    frame,
    parse_detach_keys,
    read_report,
    validate_request,
)
from ketch.errors import (
    Conflict,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    KetchError,
    NotFound,
    Unavailable,
)

# ---- framing ------------------------------------------------------------------------------


def test_frame_header_is_dockers_stdcopy_format() -> None:
    assert frame(1, b"hi\n") == b"\x01\x00\x00\x00\x00\x00\x00\x03hi\n"
    big = frame(2, b"x" * 70000)
    assert big[:8] == b"\x02\x00\x00\x00" + struct.pack(">I", 70000) and len(big) == 70008
    assert frame(1, b"") == b"\x01" + b"\x00" * 7


def test_decoder_reassembles_frames_split_anywhere() -> None:
    stream = frame(1, b"out\n") + frame(2, b"err\n") + frame(1, b"") + frame(1, b"x" * 300)
    for step in (1, 3, 7, 8, 9, len(stream)):
        dec = FrameDecoder()
        got = []
        for i in range(0, len(stream), step):
            got += dec.feed(stream[i:i + step])
        assert got == [(1, b"out\n"), (2, b"err\n"), (1, b""), (1, b"x" * 300)]
        assert dec.pending == 0


def test_decoder_holds_an_incomplete_frame() -> None:
    dec = FrameDecoder()
    assert dec.feed(frame(1, b"abc")[:-1]) == []
    assert dec.pending == 10
    assert dec.feed(b"c") == [(1, b"abc")]


# ---- detach keys ---------------------------------------------------------------------------


def test_parse_detach_keys_docker_syntax() -> None:
    assert parse_detach_keys("ctrl-p,ctrl-q") == DEFAULT_DETACH_KEYS == [16, 17]
    assert parse_detach_keys("ctrl-a,X,ctrl-@,ctrl-[,ctrl-_") == [1, 88, 0, 27, 31]
    assert parse_detach_keys("CTRL-P") == [16]
    assert parse_detach_keys("") == []
    for bad in ("ctrl-", "ctrl-1", "ab", "ctrl-p,,ctrl-q", "ctrl-pp", "é"):
        with pytest.raises(InvalidArgument, match="Invalid detach keys"):
            parse_detach_keys(bad)


def test_scanner_passes_plain_input_through() -> None:
    s = DetachScanner([16, 17])
    assert s.feed(b"hello\n") == (b"hello\n", False)
    assert DetachScanner([]).feed(b"\x10\x11") == (b"\x10\x11", False)


def test_scanner_detaches_and_swallows_the_sequence_and_the_rest() -> None:
    assert DetachScanner([16, 17]).feed(b"ab\x10\x11cd") == (b"ab", True)
    assert DetachScanner([16]).feed(b"a\x10b") == (b"a", True)


def test_scanner_holds_a_partial_match_across_chunks() -> None:
    s = DetachScanner([16, 17])
    assert s.feed(b"ab\x10") == (b"ab", False)  # held back until the next chunk
    assert s.feed(b"\x11") == (b"", True)


def test_scanner_forwards_a_broken_off_match() -> None:
    s = DetachScanner([16, 17])
    assert s.feed(b"a\x10") == (b"a", False)
    assert s.feed(b"x") == (b"\x10x", False)
    assert s.feed(b"\x10\x10\x11") == (b"\x10", True)  # restart on the second ctrl-p


def test_scanner_finds_an_overlapping_sequence() -> None:
    s = DetachScanner(b"aab")
    assert s.feed(b"aa") == (b"", False)
    assert s.feed(b"ab") == (b"a", True)  # "aa" + "ab": the sequence starts at the 2nd a


# ---- requests ------------------------------------------------------------------------------


def test_validate_request_fills_defaults() -> None:
    assert validate_request({"op": "attach", "stdout": True}) == {
        "op": "attach", "stdin": False, "stdout": True, "stderr": False, "detach_keys": []}
    assert validate_request({"op": "start"}) == {"op": "start"}
    assert validate_request({"op": "resize", "height": 24, "width": 80}) == {
        "op": "resize", "height": 24, "width": 80}
    assert validate_request({"op": "resize", "height": 1, "width": 2, "exec_id": "e1"})[
        "exec_id"] == "e1"
    exec_req = validate_request({"op": "exec", "exec_id": "abc", "process": {"args": ["sh"]},
                                 "stdin": True, "detach_keys": [16, 17]})
    assert exec_req["process"] == {"args": ["sh"]} and exec_req["detach_keys"] == [16, 17]
    assert validate_request({"op": "exec-state", "exec_id": "abc"}) == {
        "op": "exec-state", "exec_id": "abc"}


@pytest.mark.parametrize("req, field", [
    ([], "JSON object"),
    ({"op": "frobnicate"}, "unknown op"),
    ({}, "unknown op"),
    ({"op": "attach", "stdin": 1}, "stdin"),
    ({"op": "attach", "detach_keys": [300]}, "detach_keys"),
    ({"op": "attach", "detach_keys": "ctrl-p"}, "detach_keys"),
    ({"op": "resize", "height": 24}, "width"),
    ({"op": "resize", "height": True, "width": 80}, "height"),
    ({"op": "resize", "height": -1, "width": 80}, "height"),
    ({"op": "exec", "process": {"args": ["sh"]}}, "exec_id"),
    ({"op": "exec", "exec_id": "../x", "process": {"args": ["sh"]}}, "exec_id"),
    ({"op": "exec", "exec_id": "a", "process": {"args": []}}, "args"),
    ({"op": "exec", "exec_id": "a", "process": {"args": [1]}}, "args"),
    ({"op": "exec", "exec_id": "a"}, "process"),
    ({"op": "exec-state"}, "exec_id"),
])
def test_validate_request_names_the_bad_field(req: object, field: str) -> None:
    with pytest.raises(InvalidArgument, match=field):
        validate_request(req)


# ---- spawn requests --------------------------------------------------------------------------


def _spawn(**kw: object) -> SpawnRequest:
    base: dict[str, object] = {"id": "c1", "bundle": "/b", "state_dir": "/run/ketch/c1",
                               "runtime": {"name": "ketch", "root": "/run/ketch/rt"}}
    base.update(kw)
    return SpawnRequest(**base)  # type: ignore[arg-type]


def test_spawn_request_round_trips_through_json() -> None:
    req = _spawn(open_stdin=True, stdin_once=True,
                 log={"driver": "json-file", "path": "/l.log", "opts": {"max-size": "1m"}},
                 runtime={"name": "runc", "path": "/usr/sbin/runc", "root": "/run/runc"})
    assert SpawnRequest.from_json(req.to_json()) == req
    assert _spawn().log == {"driver": "none"}


@pytest.mark.parametrize("kw, msg", [
    ({"id": "a/b"}, "invalid container id"),
    ({"bundle": "relative"}, "bundle"),
    ({"state_dir": "/" + "d" * 120}, "too long"),
    ({"runtime": {"name": "ketch"}}, "runtime"),
    ({"runtime": {"name": "runc", "root": "/r"}}, "path"),
    ({"open_stdin": "yes"}, "boolean"),
    ({"log": {"driver": "syslog"}}, "log driver"),
    ({"log": {"driver": "json-file"}}, "absolute path"),
    ({"log": {"driver": "json-file", "path": "/l", "opts": {"max-file": "0"}}}, "max-file"),
])
def test_spawn_request_rejects(kw: dict[str, object], msg: str) -> None:
    with pytest.raises(InvalidArgument, match=msg):
        _spawn(**kw)


def test_spawn_request_from_bad_json() -> None:
    for data, msg in ((b"{", "bad JSON"), (b"[]", "JSON object"),
                      (b'{"id": "x", "surprise": 1}', "unknown fields"),
                      (b'{"id": "x"}', "spawn")):
        with pytest.raises(InvalidArgument, match=msg):
            SpawnRequest.from_json(data)


# ---- errors and statuses ------------------------------------------------------------------------


def test_errors_keep_their_class_across_the_wire() -> None:
    for cls in (NotFound, Conflict, FailedPrecondition, InvalidArgument, Unavailable):
        wire = json.loads(json.dumps(error_to_wire(cls("No such container: x"))))
        back = error_from_wire(wire)
        assert type(back) is cls and str(back) == "No such container: x"


def test_unknown_errors_become_internal() -> None:
    class Weird(NotFound):
        pass

    assert error_to_wire(Weird("w")) == {"error": "w", "kind": "NotFound"}
    assert error_to_wire(ValueError("v"))["kind"] == "Internal"
    oserr = error_to_wire(FileNotFoundError(2, "No such file or directory", "/x"))
    assert oserr == {"error": "No such file or directory: /x", "kind": "Internal"}
    assert type(error_from_wire({"error": "x", "kind": "KeyError"})) is Internal
    assert type(error_from_wire({"error": "x", "kind": "KetchError"})) is KetchError
    assert type(error_from_wire({})) is Internal


def test_exit_code_of_wait_statuses() -> None:
    assert exit_code_of(3 << 8) == 3
    assert exit_code_of(0) == 0
    assert exit_code_of(signal.SIGKILL) == 137
    assert exit_code_of(signal.SIGTERM) == 143


# ---- reports --------------------------------------------------------------------------------


def test_read_report_merges_pid_lines_and_stops_at_the_final_one() -> None:
    r, w = os.pipe()
    try:
        os.write(w, b'{"supervisor_pid": %d}\n{"supervisor_pid": %d, "init_pid": 7}\n'
                 % (os.getpid(), os.getpid()))
        assert read_report(r, 5) == {"supervisor_pid": os.getpid(), "init_pid": 7}
    finally:
        os.close(r)
        os.close(w)


def test_read_report_returns_errors() -> None:
    r, w = os.pipe()
    try:
        os.write(w, json.dumps({"error": "boom", "kind": "Conflict"}).encode() + b"\n")
        assert read_report(r, 5) == {"error": "boom", "kind": "Conflict"}
    finally:
        os.close(r)
        os.close(w)


def test_read_report_notices_a_writer_that_died_silently() -> None:
    # the write end stays open here (as in a created container's init): only the
    # writer's exit can tell that no report will come
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        t = time.monotonic()
        with pytest.raises(Internal, match="exited before reporting"):
            read_report(r, 30, pid=pid)
        assert time.monotonic() - t < 10
    finally:
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)


def test_read_report_times_out() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(Unavailable, match="no report"):
            read_report(r, 0.05)
    finally:
        os.close(r)
        os.close(w)


# ---- client without a supervisor ------------------------------------------------------------


def test_client_without_supervisor(tmp_path: Path) -> None:
    client = SupervisorClient(str(tmp_path))
    with pytest.raises(NotFound, match="no supervisor"):
        client.state()
    assert client.read_exit() is None
    exited = {"exit_code": 3, "finished_at": "2026-01-01T00:00:00Z", "oom_killed": False,
              "error": None}
    (tmp_path / "exit.json").write_text(json.dumps(exited))
    (tmp_path / "init.pid").write_text("42")
    assert client.state() == {"status": "exited", "pid": 42, "exit": exited}
    assert client.wait() == exited
    with pytest.raises(Unavailable, match="exited"):
        client.start()
    with pytest.raises(NotFound, match="No such exec instance: e1"):
        client.exec_state("e1")
    (tmp_path / "execs").mkdir()
    (tmp_path / "execs" / "e1.json").write_text('{"pid": 7, "running": false, "exit_code": 3}')
    assert client.exec_state("e1") == {"running": False, "pid": 7, "exit_code": 3}


# ---- exec requests, the holder's location ---------------------------------------------------


def test_exec_socket_path_is_short_and_distinct() -> None:
    state_dir = "/" + "d" * 70
    a = exec_socket_path(state_dir, "health-0123456789ab-1")
    b = exec_socket_path(state_dir, "health-0123456789ab-2")
    assert a != b and a.startswith(state_dir + "/x-") and a.endswith(".sock")
    assert len(exec_socket_path(state_dir, "f" * 128).encode()) < 100
    req = ExecRequest(id="c1", state_dir=state_dir, runtime={"name": "ketch", "root": "/r"},
                      exec_id="e1", process={"args": ["true"]}, stdout=True)
    assert json.loads(req.to_json())["exec"]["exec_id"] == "e1"
    bad: list[dict[str, object]] = [{"exec_id": "a b"}, {"process": {"args": []}},
                                    {"state_dir": "rel"}, {"state_dir": "/" + "d" * 100},
                                    {"stdin": 1}]
    for kw in bad:
        args = {"id": "c1", "state_dir": state_dir, "runtime": {"name": "ketch"},
                "exec_id": "e1", "process": {"args": ["true"]}, **kw}
        with pytest.raises(InvalidArgument):
            ExecRequest(**args)  # type: ignore[arg-type]


def test_holder_path_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KETCH_HOLDER", "none")
    assert holder_path() is None
    monkeypatch.setenv("KETCH_HOLDER", str(tmp_path / "missing"))
    assert holder_path() is None  # not built: the Python supervisor carries on
    exe = tmp_path / "ketch-holder"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("KETCH_HOLDER", str(exe))
    assert holder_path() == str(exe)


def test_scanner_state_for_the_handover() -> None:
    s = DetachScanner([16, 17])
    assert s.feed(b"ab\x10") == (b"ab", False)
    assert (s.keys, s.held) == (b"\x10\x11", 1)


# ---- the C holder, without a container (no root) --------------------------------------------

HOLDER_C = Path(__file__).resolve().parents[2] / "src/ketch/engine/supervisor/holder.c"


@pytest.fixture(scope="module")
def holder_bin(tmp_path_factory: pytest.TempPathFactory) -> str:
    built = Path(sys.prefix, "libexec", "ketch-holder")
    if built.exists() and built.stat().st_mtime >= HOLDER_C.stat().st_mtime:
        return str(built)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no ketch-holder built and no C compiler to build one")
    out = tmp_path_factory.mktemp("holder") / "ketch-holder"
    subprocess.run([cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out),
                    str(HOLDER_C)], check=True)
    return str(out)


def _start_holder(holder: str, d: Path, script: str) -> int:
    """Fork a process that starts ``sh -c script`` (stdout into a pipe) and execs the
    holder with a handover document for it, as a supervisor would."""
    pid = os.fork()
    if pid == 0:
        try:
            lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            lst.bind(str(d / "sup.sock"))
            lst.listen(8)
            r, w = os.pipe()
            child = os.fork()
            if child == 0:
                os.dup2(w, 1)
                os.execv("/bin/sh", ["sh", "-c", script])
            os.close(w)
            os.set_blocking(r, False)
            lst.setblocking(False)
            doc = {"id": "c1", "state_dir": str(d), "name": "ksup-c1", "init_pid": child,
                   "tty": False, "stdin_once": False, "listener": lst.fileno(), "master": -1,
                   "sources": [{"fd": r, "stream": "stdout"}], "sink": None, "conns": [],
                   "log": {"path": str(d / "c.log"), "max_size": -1, "max_file": 1,
                           "compress": False, "pending": []}, "oom": None}
            mfd = os.memfd_create("doc", 0)
            os.write(mfd, json.dumps(doc).encode())
            for fd in (lst.fileno(), r):
                os.set_inheritable(fd, True)
            os.execv(holder, [holder, str(mfd)])
        finally:
            os._exit(127)
    return pid


def _ask(path: Path, line: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(line + b"\n")
        return s.makefile("rb").readline()


def test_holder_requests_match_the_python_supervisor(holder_bin: str, tmp_path: Path) -> None:
    pid = _start_holder(holder_bin, tmp_path, "echo hello; exec sleep 100")
    try:
        sock = tmp_path / "sup.sock"
        deadline = time.monotonic() + 10
        while b"hello" not in (tmp_path / "c.log").read_bytes() if (tmp_path / "c.log").exists() \
                else True:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        bad: list[object] = [
            [], {}, {"op": "nope"}, {"op": "attach", "stdin": 1},
            {"op": "attach", "detach_keys": [300]}, {"op": "attach", "detach_keys": "x"},
            {"op": "resize", "height": 1}, {"op": "resize", "height": 70000, "width": 1},
            {"op": "resize", "height": 1.5, "width": 1},
            {"op": "resize", "exec_id": "a b", "height": 1, "width": 1},
            {"op": "resize", "exec_id": 3, "height": 1, "width": 1}]
        for req in bad:
            try:
                validate_request(req)
                raise AssertionError(f"{req} is valid")
            except InvalidArgument as e:
                want = json.dumps(error_to_wire(e)).encode() + b"\n"
            assert _ask(sock, json.dumps(req).encode()) == want, req
        assert _ask(sock, b"not json") == \
            b'{"error": "request is not JSON", "kind": "InvalidArgument"}\n'
        exec_req = {"op": "exec", "exec_id": "x", "process": {"args": ["a"]}}
        assert json.loads(_ask(sock, json.dumps(exec_req).encode())) == {
            "error": "unknown op 'exec'", "kind": "InvalidArgument"}
        assert json.loads(_ask(sock, b'{"op": "start"}')) == {
            "error": "container c1 is already started", "kind": "FailedPrecondition"}
        assert json.loads(_ask(sock, b'{"op": "resize", "height": 1, "width": 2}')) == {
            "error": "container c1 has no terminal", "kind": "FailedPrecondition"}
        state = json.loads(_ask(sock, b'{"op": "state"}'))
        assert state["status"] == "running" and state["exit"] is None and state["pid"] > 0
        assert os.readlink(f"/proc/{pid}/exe") == os.path.realpath(holder_bin)
        os.kill(state["pid"], signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    exited = json.loads((tmp_path / "exit.json").read_text())
    assert exited["exit_code"] == 137 and exited["oom_killed"] is False
    assert not sock.exists()
    line = (tmp_path / "c.log").read_bytes()
    assert line.startswith(b'{"log":"hello\\n","stream":"stdout","time":"')
