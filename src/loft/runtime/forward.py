"""Port forwarding into a workspace whose network is only its own ``lo``.

A host-side listener (a Unix socket, 0600: only root reaches it; or a loopback TCP port,
which every local account can reach) accepts; for each connection a socket is made
*inside* the workspace's network namespace and connected to ``127.0.0.1:PORT`` there, and
bytes are relayed both ways. The inside socket is made by a short thread that enters the
namespace with ``setns(CLONE_NEWNET)`` (a thread's network namespace is its own; a socket
keeps the namespace it was made in) and ends, so the forwarder's process never lives in
the workspace's network. The workspace gains nothing: it is only ever the server end of
connections to its own loopback, and it cannot name another destination.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from loft.runtime.egress import enter_netns, in_own_thread

__all__ = ["Forwarder", "connect_in", "loopback_listener", "unix_listener"]

_BUFFER = 65536


def connect_in(netns_fd: int, port: int, timeout: float = 10.0) -> socket.socket:
    """A TCP connection to ``127.0.0.1:port`` inside the network namespace ``netns_fd``."""

    def inside() -> socket.socket:
        enter_netns(netns_fd)
        return socket.create_connection(("127.0.0.1", port), timeout)

    sock = in_own_thread(inside)
    sock.settimeout(None)
    return sock


def unix_listener(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600 from the start (the socket's mode
    is set before ``bind`` makes the file, so no other account can connect in between)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        os.fchmod(sock.fileno(), 0o600)
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(16)
    except BaseException:
        sock.close()
        raise
    return sock


def loopback_listener(port: int) -> socket.socket:
    """A listening TCP socket on ``127.0.0.1:port`` (0: any free port). Every local
    account can connect to it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(16)
    except BaseException:
        sock.close()
        raise
    return sock


def _pump(src: socket.socket, dst: socket.socket, seen: Callable[[], None]) -> None:
    """Copy ``src`` to ``dst`` until end of file, then pass the end on."""
    with contextlib.suppress(OSError):
        while data := src.recv(_BUFFER):
            seen()
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


class Forwarder:
    """Relays each connection accepted on ``listener`` to a new connection made by
    ``connect`` (:func:`connect_in` bound to a workspace), on threads of its own, until
    :meth:`close`. A connection that cannot be made inside is closed at once.
    ``connections`` (open now) and ``last_used`` (epoch seconds bytes last moved) say
    whether it is in use."""

    def __init__(self, listener: socket.socket, connect: Callable[[], socket.socket]) -> None:
        self.listener = listener
        self._connect = connect
        self.last_used = 0.0
        self._closed = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="loft-forward", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                outside, _ = self.listener.accept()
            except OSError:
                return  # the listener was closed
            try:
                inside = self._connect()
            except OSError:
                outside.close()
                continue
            with self._lock:
                self._conns |= {outside, inside}
            threading.Thread(target=self._serve, args=(outside, inside), daemon=True).start()

    def _seen(self) -> None:
        self.last_used = time.time()

    def _serve(self, outside: socket.socket, inside: socket.socket) -> None:
        self._seen()
        back = threading.Thread(target=_pump, args=(inside, outside, self._seen), daemon=True)
        back.start()
        _pump(outside, inside, self._seen)
        back.join()
        with self._lock:
            self._conns -= {outside, inside}
        self._seen()
        outside.close()
        inside.close()

    @property
    def connections(self) -> int:
        """Connections it relays now."""
        return len(self._conns) // 2

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Stop accepting and cut every relayed connection."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._conns.clear()
        self._thread.join(5)
