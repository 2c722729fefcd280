"""Reading and writing cgroup control files.

Control files are tiny and live on kernfs, so these helpers use ``os.open`` /
``os.read`` / ``os.write`` directly (no buffered ``open()``): one syscall each way.
Every failure is an ``OSError`` that carries the errno and the file's path, and
for writes the value that the kernel refused.
"""

from __future__ import annotations

import os

__all__ = [
    "Writes",
    "read_flat_keyed",
    "read_int",
    "read_lines",
    "read_nested_keyed",
    "read_text",
    "write_text",
]

_RD = os.O_RDONLY | os.O_CLOEXEC
# O_TRUNC matters only for the plain files unit tests use in place of cgroupfs;
# kernfs ignores it, as it does for a shell's "echo x > file".
_WR = os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC


def read_text(path: str) -> str:
    """The whole file, without surrounding whitespace."""
    fd = os.open(path, _RD)
    try:
        chunks = []
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None
    finally:
        os.close(fd)
    return b"".join(chunks).decode().strip()


def read_int(path: str) -> int:
    """A file holding one integer; ``max`` reads as -1."""
    text = read_text(path)
    if text == "max":
        return -1
    try:
        return int(text)
    except ValueError:
        raise OSError(0, f"not an integer: {text!r}", path) from None


def read_lines(path: str) -> list[str]:
    """The non-empty lines of the file."""
    return [line for line in read_text(path).splitlines() if line]


def read_flat_keyed(path: str) -> dict[str, int]:
    """A ``key value`` per line file (cpu.stat, memory.stat, memory.events, ...).

    Values that are not integers (``max``) read as -1.
    """
    out: dict[str, int] = {}
    for line in read_text(path).splitlines():
        key, _, value = line.partition(" ")
        if not key:
            continue
        value = value.strip()
        try:
            out[key] = int(value)
        except ValueError:
            out[key] = -1
    return out


def read_nested_keyed(path: str) -> dict[str, dict[str, int]]:
    """A ``key sub=value sub=value`` per line file (io.stat, io.max, ...)."""
    out: dict[str, dict[str, int]] = {}
    for line in read_text(path).splitlines():
        key, *pairs = line.split()
        sub: dict[str, int] = {}
        for pair in pairs:
            name, _, value = pair.partition("=")
            try:
                sub[name] = int(value)
            except ValueError:
                sub[name] = -1
        out[key] = sub
    return out


def write_text(path: str, value: str) -> None:
    """Write ``value`` in one ``write(2)``, as the kernel parses one write at a time."""
    data = value.encode()
    fd = os.open(path, _WR)
    try:
        os.write(fd, data)
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror} (writing {value!r})", path) from None
    finally:
        os.close(fd)


class Writes:
    """Several control-file writes that keep each file open for the next write to it:
    the kernel parses every write(2) on its own, so a dozen ``devices.allow`` rules
    cost one open instead of a dozen (opening a cgroup file is the dear part).
    A context manager; the files close at its end. Errors as :func:`write_text`."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def write(self, path: str, value: str) -> None:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, _WR)
        try:
            os.write(fd, value.encode())
        except OSError as e:
            raise OSError(e.errno, f"{e.strerror} (writing {value!r})", path) from None

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __enter__(self) -> Writes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
