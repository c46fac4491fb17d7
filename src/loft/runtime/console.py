"""Terminals: a process on a new pty in a workspace, and its window size.

runc offers two ways. With ``--console-socket`` it hands the new pty's master over a Unix
socket, but only when it detaches (``-d``): the process then belongs to the container's
init, which reaps it, and its exit status is lost. Without, runc allocates the pty itself
and relays between it and its own standard streams, which must be a terminal: that is
what is done here. loft opens a pty pair, gives runc the slave as stdin, stdout and
stderr, and keeps the master; runc stays until the process exits and exits with its
status. A resize sets the outer terminal's size and tells runc (SIGWINCH), which copies
it to the inner one, so the process gets its SIGWINCH as on any terminal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import subprocess
import termios
from collections.abc import Callable
from dataclasses import dataclass

from loft.runtime.spec import WindowSize

__all__ = ["PtySession", "on_new_pty", "set_window_size"]


def set_window_size(fd: int, size: WindowSize) -> None:
    """Set the window size of the terminal ``fd``."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.rows, size.cols, 0, 0))


@dataclass
class PtySession:
    """A process on a terminal in a workspace: read and write ``master`` (the outer
    terminal, which runc relays); :meth:`wait` for the process's exit status."""

    master: int
    process: subprocess.Popen[bytes]

    def resize(self, size: WindowSize) -> None:
        """Change the terminal's window size."""
        set_window_size(self.master, size)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGWINCH)

    def wait(self, timeout: float | None = None) -> int:
        """The process's exit status once it has exited (128 + N if killed by signal N)."""
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


def on_new_pty(size: WindowSize, spawn: Callable[[int], subprocess.Popen[bytes]]) -> PtySession:
    """A new pty pair of ``size``, with the process ``spawn`` starts on its slave (given
    as stdin, stdout and stderr); the caller gets the master. The slave is closed here
    either way, the master too when ``spawn`` fails."""
    master, slave = os.openpty()
    try:
        set_window_size(slave, size)
        process = spawn(slave)
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    return PtySession(master, process)
