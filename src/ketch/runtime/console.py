"""Terminals: the console socket protocol and the foreground pty proxy.

A container with ``process.terminal`` gets a fresh pseudo-terminal inside its
own devpts. The runtime sends the master side to the caller over the unix
socket named by ``--console-socket``, as one SCM_RIGHTS message (runc's
protocol, which containerd and podman speak). For a foreground ``run -t``
without a console socket the runtime receives the master itself and copies
between its own stdio and the master until the container exits.
"""

from __future__ import annotations

import _socket as socket  # see ketch.runtime.init: the same socket objects, lighter
import array
import fcntl
import os
import struct
import termios

__all__ = ["open_pty", "proxy", "recv_fd", "send_fd", "set_winsize"]


def send_fd(sock: socket.socket, fd: int, name: str = "/dev/ptmx") -> None:
    """Send ``fd`` with one SCM_RIGHTS message; the payload is the terminal's name."""
    sock.sendmsg([name.encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                    array.array("i", [fd]).tobytes())])


def recv_fd(sock: socket.socket) -> int:
    """Receive one fd sent with :func:`send_fd`."""
    fds = array.array("i")
    _msg, anc, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
            return fds[0]
    raise OSError("console socket: no file descriptor received")


def set_winsize(fd: int, height: int, width: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def open_pty() -> tuple[int, int, str]:
    """Open a pty in the current /dev/pts: (master, slave, slave path)."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    # unlockpt + ptsname through the ioctls: TIOCSPTLCK(0) and TIOCGPTN
    fcntl.ioctl(master, 0x40045431, struct.pack("i", 0))
    n = struct.unpack("I", fcntl.ioctl(master, 0x80045430, b"\0\0\0\0"))[0]
    path = f"/dev/pts/{n}"
    slave = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    return master, slave, path


def proxy(master: int) -> None:
    """Copy stdin → master and master → stdout until the master hangs up."""
    import select
    import tty

    stdin_tty = os.isatty(0)
    saved = termios.tcgetattr(0) if stdin_tty else None
    if stdin_tty:
        tty.setraw(0)
        try:
            rows, cols = os.get_terminal_size(0)
            set_winsize(master, rows, cols)
        except OSError:
            pass
    fds = [master, 0]
    try:
        while True:
            r, _, _ = select.select(fds, [], [])
            if master in r:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the last slave fd closed
                    break
                if not data:
                    break
                os.write(1, data)
            if 0 in r:
                data = os.read(0, 65536)
                if not data:
                    fds.remove(0)
                else:
                    os.write(master, data)
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
