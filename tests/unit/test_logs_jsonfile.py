"""The json-file log driver: dockerd's exact line format, rotation, and the reader."""

from __future__ import annotations

import gzip
import json
import threading
import time
from pathlib import Path

import pytest

from ketch.engine.logs import LogDriver, LogReader
from ketch.engine.logs.jsonfile import (
    MAX_ENTRY,
    JSONFileLogDriver,
    JSONFileOptions,
    JSONFileReader,
    format_time,
    parse_size,
    parse_time,
    read_logs,
)
from ketch.errors import InvalidArgument

T0 = 1795336856123456789  # 2026-11-22T08:40:56.123456789Z


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        self.now += 1000
        return self.now


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "c-json.log"


def driver(path: Path, **opts: str) -> JSONFileLogDriver:
    return JSONFileLogDriver(path, JSONFileOptions.from_log_opts(opts), clock=Clock())


def lines(path: Path | str) -> list[bytes]:
    if str(path).endswith(".gz"):
        with gzip.open(path, "rb") as f:
            return f.read().splitlines()
    return Path(path).read_bytes().splitlines()


def logs_of(path: Path | str) -> list[str]:
    return [json.loads(x)["log"] for x in lines(path)]


def test_protocols(log: Path) -> None:
    d: LogDriver = JSONFileLogDriver(log)
    r: LogReader = JSONFileReader(log)
    d.close()
    assert list(r.read()) == []


def test_golden_lines(log: Path) -> None:
    d = JSONFileLogDriver(log, clock=Clock())
    d.write("stdout", b"hello\n", ts=T0)
    d.write("stderr", b'a "q" <b>&\\ \t\r\n', ts=T0 + 1000)
    d.write("stdout", b"x\n", ts=T0 - 123456789)
    d.write("stdout", b"\xe2\x80\xa8\n", ts=T0 - 23456789)
    d.close()
    assert log.read_bytes() == (
        b'{"log":"hello\\n","stream":"stdout","time":"2026-11-22T08:40:56.123456789Z"}\n'
        b'{"log":"a \\"q\\" \\u003cb\\u003e\\u0026\\\\ \\u0009\\r\\n","stream":"stderr",'
        b'"time":"2026-11-22T08:40:56.123457789Z"}\n'
        b'{"log":"x\\n","stream":"stdout","time":"2026-11-22T08:40:56Z"}\n'
        b'{"log":"\\u2028\\n","stream":"stdout","time":"2026-11-22T08:40:56.1Z"}\n'
    )
    got = list(read_logs(log))
    assert [(e.stream, e.ts) for e in got] == [
        ("stdout", T0),
        ("stderr", T0 + 1000),
        ("stdout", T0 - 123456789),
        ("stdout", T0 - 23456789),
    ]
    assert got[1].data == b'a "q" <b>&\\ \t\r\n'
    assert got[3].data == "\u2028\n".encode()


def test_attrs_and_timestamps(log: Path) -> None:
    d = JSONFileLogDriver(log, attrs={"tag": "web"})
    d.write("stdout", b"a\n", ts=T0)
    d.close()
    assert log.read_bytes() == (
        b'{"log":"a\\n","stream":"stdout","attrs":{"tag":"web"},'
        b'"time":"2026-11-22T08:40:56.123456789Z"}\n'
    )
    (e,) = read_logs(log, timestamps=True)
    assert e.data == b"2026-11-22T08:40:56.123456789Z a\n"


def test_time_format_and_parse() -> None:
    assert format_time(T0 - 123456789 + 120_000_000) == "2026-11-22T08:40:56.12Z"
    assert parse_time("2026-11-22T08:40:56.123456789Z") == T0
    assert parse_time("2026-11-22T09:40:56.123456789+01:00") == T0
    with pytest.raises(InvalidArgument):
        parse_time("yesterday")


def test_partial_lines_are_buffered(log: Path) -> None:
    d = JSONFileLogDriver(log, clock=Clock())
    d.write("stdout", b"hel", ts=T0)
    d.write("stderr", b"err", ts=T0 + 5)
    assert log.read_bytes() == b""
    d.write("stdout", b"lo\nwor", ts=T0 + 9)
    d.write("stdout", b"ld\nnext\n", ts=T0 + 10)
    d.write("stderr", b"tail")
    d.close()  # unterminated stderr is flushed as a partial entry
    got = list(read_logs(log))
    assert got[0] == ("stdout", T0, b"hello\n")  # stamped when its first byte came
    assert got[1] == ("stdout", T0 + 9, b"world\n")
    assert got[2] == ("stdout", T0 + 10, b"next\n")
    assert got[3] == ("stderr", T0 + 5, b"errtail")


def test_long_lines_split_at_16k(log: Path) -> None:
    d = JSONFileLogDriver(log)
    d.write("stdout", b"a" * 20000 + b"\n")
    d.write("stdout", b"b" * (MAX_ENTRY - 1) + b"\n")  # fits exactly
    d.write("stdout", b"c" * 10000)
    d.write("stdout", b"c" * 10000)  # 16K reached without a newline: flushed
    assert [len(x) for x in logs_of(log)] == [MAX_ENTRY, 20001 - MAX_ENTRY, MAX_ENTRY, MAX_ENTRY]
    d.write("stdout", b"\n")
    d.close()
    got = logs_of(log)
    assert got[-1] == "c" * (20000 - MAX_ENTRY) + "\n"
    assert b"".join(e.data for e in read_logs(log)) == (
        b"a" * 20000 + b"\n" + b"b" * (MAX_ENTRY - 1) + b"\n" + b"c" * 20000 + b"\n"
    )


def test_invalid_utf8_becomes_replacement_escapes(log: Path) -> None:
    d = JSONFileLogDriver(log)
    d.write("stdout", b"ok \xff\xfe \xe2\x82 \xed\xa0\x80 \xef\xbf\xbd\n")
    d.close()
    raw = log.read_bytes()
    assert b'"log":"ok \\ufffd\\ufffd \\ufffd\\ufffd \\ufffd\\ufffd\\ufffd \xef\xbf\xbd\\n"' in raw
    (e,) = read_logs(log)
    assert e.data == "ok \ufffd\ufffd \ufffd\ufffd \ufffd\ufffd\ufffd \ufffd\n".encode()


def test_options() -> None:
    assert parse_size("1k") == 1024
    assert parse_size("10m") == 10 << 20
    assert parse_size("10MB") == 10 << 20
    assert parse_size("123") == 123
    assert parse_size("-1") == -1
    o = JSONFileOptions.from_log_opts({"max-size": "1k", "max-file": "3", "compress": "true"})
    assert (o.max_size, o.max_file, o.compress) == (1024, 3, True)
    for bad in ({"max-file": "0"}, {"max-size": "ten"}, {"compress": "maybe"}, {"nope": "1"}):
        with pytest.raises(InvalidArgument):
            JSONFileOptions.from_log_opts(bad)


def test_rotation_max_size_max_file_3(log: Path) -> None:
    d = JSONFileLogDriver(log, JSONFileOptions(max_size=200, max_file=3), clock=lambda: T0)
    for i in range(10):
        d.write("stdout", f"line {i:03d}\n".encode())
    d.close()
    names = sorted(p.name for p in log.parent.iterdir())
    assert names == ["c-json.log", "c-json.log.1", "c-json.log.2"]
    for p in log.parent.iterdir():
        assert p.stat().st_size <= 200
    # 2 entries of ~82 bytes per file: lines 0-5 rotated away, oldest dropped
    assert logs_of(str(log) + ".2") == ["line 004\n", "line 005\n"]
    assert logs_of(str(log) + ".1") == ["line 006\n", "line 007\n"]
    assert logs_of(log) == ["line 008\n", "line 009\n"]
    got = [e.data for e in read_logs(log, max_files=3)]
    assert got == [f"line {i:03d}\n".encode() for i in range(4, 10)]


def test_rotation_max_file_1_truncates(log: Path) -> None:
    d = JSONFileLogDriver(log, JSONFileOptions(max_size=100, max_file=1))
    for i in range(5):
        d.write("stdout", f"line {i}\n".encode())
    d.close()
    assert [p.name for p in log.parent.iterdir()] == ["c-json.log"]
    assert logs_of(log) == ["line 4\n"]


def test_rotation_compressed(log: Path) -> None:
    d = JSONFileLogDriver(log, JSONFileOptions(max_size=200, max_file=3, compress=True))
    for i in range(10):
        d.write("stdout", f"line {i:03d}\n".encode())
    d.close()
    names = sorted(p.name for p in log.parent.iterdir())
    assert names == ["c-json.log", "c-json.log.1.gz", "c-json.log.2.gz"]
    assert logs_of(str(log) + ".2.gz") == ["line 004\n", "line 005\n"]
    assert logs_of(str(log) + ".1.gz") == ["line 006\n", "line 007\n"]
    got = [e.data for e in read_logs(log, max_files=3)]
    assert got == [f"line {i:03d}\n".encode() for i in range(4, 10)]
    assert [e.data for e in read_logs(log, max_files=3, tail=3)] == [
        b"line 007\n",
        b"line 008\n",
        b"line 009\n",
    ]


@pytest.mark.parametrize("compress", [False, True])
def test_tail_across_rotated_files(log: Path, compress: bool) -> None:
    d = JSONFileLogDriver(log, JSONFileOptions(max_size=200, max_file=3, compress=compress))
    for i in range(10):
        d.write("stdout", f"line {i:03d}\n".encode())
    d.write("stdout", b"unterminated")  # buffered: not in the file, not in the tail
    assert len(logs_of(log)) == 2

    def tail(n: int | str | None) -> list[bytes]:
        return [e.data for e in read_logs(log, max_files=3, tail=n)]  # type: ignore[arg-type]

    assert tail(5) == [f"line {i:03d}\n".encode() for i in range(5, 10)]
    assert tail(1) == [b"line 009\n"]
    assert tail(0) == []
    assert tail(100) == tail("all") == tail(None) == tail(-1)
    assert len(tail("all")) == 6


def test_tail_reads_backwards_in_blocks(log: Path) -> None:
    d = JSONFileLogDriver(log)
    for i in range(20000):
        d.write("stdout", f"{i}\n".encode())
    d.close()
    assert [e.data for e in read_logs(log, tail=3)] == [b"19997\n", b"19998\n", b"19999\n"]
    # a torn last line (a writer mid-append elsewhere) is not an entry yet
    with open(log, "ab") as f:
        f.write(b'{"log":"half')
    assert [e.data for e in read_logs(log, tail=1)] == [b"19999\n"]


def test_since_until_and_stream_filter(log: Path) -> None:
    d = JSONFileLogDriver(log)
    for i in range(10):
        d.write("stdout" if i % 2 == 0 else "stderr", f"{i}\n".encode(), ts=T0 + i * 1000)
    d.close()
    got = [e.data for e in read_logs(log, since=T0 + 3000, until=T0 + 6000)]
    assert got == [b"3\n", b"4\n", b"5\n", b"6\n"]
    assert [e.data for e in read_logs(log, stderr=False)] == [
        b"0\n",
        b"2\n",
        b"4\n",
        b"6\n",
        b"8\n",
    ]
    assert [e.stream for e in read_logs(log, stdout=False)] == ["stderr"] * 5
    assert list(read_logs(log, stdout=False, stderr=False)) == []
    # tail counts every stream before filtering, as dockerd does
    assert [e.data for e in read_logs(log, tail=3, stdout=False)] == [b"7\n", b"9\n"]


@pytest.mark.parametrize("compress", [False, True])
def test_follow_across_rotations(log: Path, compress: bool) -> None:
    d = JSONFileLogDriver(log, JSONFileOptions(max_size=400, max_file=4, compress=compress))
    d.write("stdout", b"before\n")
    total = 300
    stop = threading.Event()
    started = threading.Event()

    def writer() -> None:
        started.wait(5)
        for i in range(total):
            d.write("stdout" if i % 3 else "stderr", f"msg {i}\n".encode())
            if i % 2 == 0:
                time.sleep(0.001)  # a follower falling max-file rotations behind loses data
        d.close()

    t = threading.Thread(target=writer)
    t.start()
    got: list[bytes] = []
    deadline = time.monotonic() + 20
    it = read_logs(log, follow=True, max_files=4, stop=stop, poll_interval=0.001)
    try:
        for e in it:
            got.append(e.data)
            started.set()
            if len(got) == total + 1 or time.monotonic() > deadline:
                break
    finally:
        stop.set()
        it.close()  # type: ignore[attr-defined]
        t.join()
    assert got == [b"before\n"] + [f"msg {i}\n".encode() for i in range(total)]
    assert len(list(log.parent.iterdir())) == 4  # it did rotate, many times


def test_follow_stops_on_event(log: Path) -> None:
    d = JSONFileLogDriver(log)
    d.write("stdout", b"one\n")
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    t = time.monotonic()
    assert [e.data for e in read_logs(log, follow=True, stop=stop)] == [b"one\n"]
    assert time.monotonic() - t < 5
    d.close()


def test_follow_stops_after_until(log: Path) -> None:
    d = JSONFileLogDriver(log)
    d.write("stdout", b"a\n", ts=T0)

    def later() -> None:
        time.sleep(0.1)
        d.write("stdout", b"b\n", ts=T0 + 1)
        d.write("stdout", b"c\n", ts=T0 + 10)

    threading.Thread(target=later).start()
    got = [e.data for e in read_logs(log, follow=True, until=T0 + 5)]
    assert got == [b"a\n", b"b\n"]
    d.close()


def _throughput(path: Path, n: int = 200_000) -> tuple[float, float, float]:
    d = JSONFileLogDriver(path, JSONFileOptions(max_size=8 << 20, max_file=5))
    t = time.perf_counter()
    for i in range(n):
        d.write("stdout", b"a short log line %d\n" % i)
    d.close()
    w = n / (time.perf_counter() - t)
    t = time.perf_counter()
    count = sum(1 for _ in read_logs(path, max_files=5))
    r = n / (time.perf_counter() - t)
    assert count == n
    t = time.perf_counter()
    assert len(list(read_logs(path, max_files=5, tail=100))) == 100
    return w, r, time.perf_counter() - t


def test_throughput(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Figures only (no timed assertions); run with -s to see them."""
    w, r, tail_s = _throughput(log)
    with capsys.disabled():
        print(f"\njson-file: write {w:,.0f} lines/s, read {r:,.0f} lines/s, tail 100 {tail_s:.4f}s")
