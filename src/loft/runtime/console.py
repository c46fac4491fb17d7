"""Terminals: the master side of a pty that runc makes for a process, handed over a
Unix socket (``runc exec --console-socket``), and the process's window size.

The socket lives in the workspace's bundle directory (0700, root's), so no other local
account can connect to it first and hand runc's process a terminal of its own choosing,
or take the master; it accepts one connection and is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import select
import socket
import struct
import subprocess
import termios
from dataclasses import dataclass
from pathlib import Path

from loft.runtime import RuncError
from loft.runtime.spec import WindowSize

__all__ = ["ConsoleSocket", "PtySession", "set_window_size"]

_ACCEPT_TIMEOUT = 10.0  # seconds: runc connects within milliseconds of starting


def set_window_size(fd: int, size: WindowSize) -> None:
    """Set the window size of the terminal ``fd`` (the process gets SIGWINCH)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.rows, size.cols, 0, 0))


class ConsoleSocket:
    """A listening Unix socket, 0600, in ``directory``, for one pty master."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / f"console-{secrets.token_hex(8)}.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
            self._sock.listen(1)
        except BaseException:
            self.close()
            raise

    def receive(self, process: subprocess.Popen[bytes]) -> int:
        """The pty master runc sends, as a file descriptor (close-on-exec); fails when
        ``process`` (runc) exits first or nothing comes in time."""
        waited = 0.0
        while not select.select([self._sock], [], [], 0.05)[0]:
            waited += 0.05
            if process.poll() is not None or waited > _ACCEPT_TIMEOUT:
                raise RuncError("runc exec did not hand over a terminal "
                                f"(exit status {process.poll()})")  # fmt: skip
        conn, _ = self._sock.accept()
        with conn:
            _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise RuncError("runc sent no terminal over the console socket")
        os.set_inheritable(fds[0], False)
        return fds[0]

    def close(self) -> None:
        """Stop listening and remove the socket."""
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


@dataclass
class PtySession:
    """A process on a terminal in a workspace: read and write ``master``; ``wait`` for
    its exit status (runc's, which is the process's)."""

    master: int
    process: subprocess.Popen[bytes]

    def resize(self, size: WindowSize) -> None:
        """Change the terminal's window size."""
        set_window_size(self.master, size)

    def wait(self, timeout: float | None = None) -> int:
        """The process's exit status once it has exited."""
        return self.process.wait(timeout)

    def close(self) -> None:
        """Close the master (the process gets SIGHUP) and reap runc."""
        with contextlib.suppress(OSError):
            os.close(self.master)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
