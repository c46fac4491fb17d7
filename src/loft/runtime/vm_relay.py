"""The process that stands for a command running in a VM (``python -m loft.runtime.vm_relay
[--tty] FD``).

:meth:`loft.runtime.vm.VmRuntime.exec` returns a ``subprocess.Popen`` like the sandbox's
``runc exec``: this program is that process. It copies its standard input to the
command (``STDIN`` frames on socket ``FD``, whose other end is the VM's
:class:`~loft.runtime.vm_agent.AgentLink`), the command's output to its own standard
output and error, and exits with the command's status (127 with the agent's message when
the command could not start). Killing it kills the command in the guest.

With ``--kept`` it stands for the agent's kept command (``exec_kept``,
``attach_kept``), which outlives the connection: when the connection goes (the VM saved
with its memory, or gone) it says nothing and ends by SIGUSR1
(:data:`loft.runtime.interface.DETACHED`), never with a status the command could have.

With ``--tty`` its standard streams are the slave of a host terminal (the master is the
caller's :class:`~loft.runtime.console.PtySession`): it puts that terminal in raw mode,
so bytes pass as typed to the guest's own terminal, and on SIGWINCH sends the host
terminal's new size (``RESIZE``), as runc's relay does for a sandbox.

It imports only the protocol module, so it starts in tens of milliseconds.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
import sys
import termios
import threading
import tty

from loft.runtime.vm_protocol import (
    MAX_REPLY,
    Decoder,
    Frame,
    Type,
    encode,
    parse_error,
    parse_u32,
    window_payload,
)

__all__ = ["main"]

_CHUNK = 32 << 10


def _pump_stdin(sock: socket.socket) -> None:
    try:
        while data := os.read(0, _CHUNK):
            sock.sendall(encode(Frame(Type.STDIN, 0, data)))
        sock.sendall(encode(Frame(Type.STDIN, 0)))
    except OSError:
        pass  # the command ended, or no standard input: nothing more to send


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _window(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    return rows, cols


def main(argv: list[str]) -> int:
    """Relay the command on socket ``argv[-1]`` (a file descriptor), on a terminal with
    ``--tty``; its exit status."""
    sock = socket.socket(fileno=int(argv[-1]))
    if "--tty" in argv[:-1]:
        tty.setraw(0)

        def resized(_sig: int, _frame: object) -> None:
            sock.sendall(encode(Frame(Type.RESIZE, 0, window_payload(*_window(0)))))

        signal.signal(signal.SIGWINCH, resized)
    threading.Thread(target=_pump_stdin, args=(sock,), daemon=True).start()
    decoder = Decoder(limit=MAX_REPLY)
    while data := sock.recv(1 << 16):
        decoder.feed(data)
        for frame in decoder.frames():
            if frame.type is Type.STDOUT:
                _write_all(1, frame.payload)
            elif frame.type is Type.STDERR:
                _write_all(2, frame.payload)
            elif frame.type is Type.EXIT:
                return parse_u32(frame) & 0xFF
            elif frame.type is Type.ERROR:
                _, message = parse_error(frame)
                _write_all(2, f"loft: {message}\n".encode())
                return 127
    if "--kept" in argv[:-1]:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGUSR1)
    _write_all(2, b"loft: the VM's agent connection was lost\n")
    return 255


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
