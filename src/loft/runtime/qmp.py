"""QEMU's machine protocol (QMP): a sans-I/O codec and a thin blocking client.

QMP is JSON objects, one a line, on a Unix socket: a greeting, then ``execute`` commands
answered by ``return`` or ``error`` (matched by ``id``), with ``event`` objects in
between. :class:`QmpCodec` turns bytes into those objects and commands into bytes;
:class:`QmpClient` is the socket loop around it, with a timeout on every call.

QEMU runs the tenant's machine, so a line longer than :data:`MAX_LINE` is refused rather
than buffered.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from loft.runtime.errors import WorkspaceError

__all__ = ["MAX_LINE", "QmpClient", "QmpCodec", "QmpError"]

#: The longest QMP line accepted; the largest answers loft asks for (query-migrate,
#: query-status) are well under a kilobyte.
MAX_LINE = 1 << 20


class QmpError(WorkspaceError):
    """QEMU answered a command with an error, or QMP failed."""


class QmpCodec:
    """Pure QMP framing: :meth:`feed` bytes, :meth:`messages` out; :meth:`command` in."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._next_id = 0

    def feed(self, data: bytes) -> None:
        """Add bytes read from QEMU (QmpError once a line exceeds :data:`MAX_LINE`)."""
        self._buf += data
        if b"\n" not in self._buf and len(self._buf) > MAX_LINE:
            raise QmpError(f"QMP line longer than {MAX_LINE} bytes")

    def messages(self) -> list[dict[str, Any]]:
        """Every whole message received so far."""
        out = []
        while (end := self._buf.find(b"\n")) >= 0:
            line = bytes(self._buf[:end]).strip()
            del self._buf[: end + 1]
            if len(line) > MAX_LINE:
                raise QmpError(f"QMP line longer than {MAX_LINE} bytes")
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError as e:
                raise QmpError(f"QMP sent a line that is not JSON: {line[:80]!r}") from e
            if not isinstance(msg, dict):
                raise QmpError(f"QMP sent a non-object: {line[:80]!r}")
            out.append(msg)
        return out

    def command(self, name: str, arguments: dict[str, Any] | None = None) -> tuple[int, bytes]:
        """The id and bytes of command ``name``."""
        self._next_id += 1
        msg: dict[str, Any] = {"execute": name, "id": self._next_id}
        if arguments:
            msg["arguments"] = arguments
        return self._next_id, json.dumps(msg).encode() + b"\n"


class QmpClient:
    """One QMP connection to a QEMU (``connect`` waits for its socket to appear)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._codec = QmpCodec()
        self._pending: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    @classmethod
    def connect(cls, path: Path, timeout: float = 10.0) -> QmpClient:
        """Connect to QEMU's QMP socket at ``path``, read the greeting and leave
        negotiation mode; QmpError when that takes longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                sock.connect(str(path))
                break
            except OSError as e:
                sock.close()
                if time.monotonic() > deadline:
                    raise QmpError(f"QEMU's QMP socket does not answer: {e.strerror}") from e
                time.sleep(0.01)
        client = cls(sock)
        try:
            greeting = client._read(deadline)
            if "QMP" not in greeting:
                raise QmpError(f"QEMU did not greet with QMP: {greeting}")
            client.execute("qmp_capabilities", timeout=max(0.1, deadline - time.monotonic()))
        except BaseException:
            sock.close()
            raise
        return client

    def _read(self, deadline: float) -> dict[str, Any]:
        while not self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpError("QEMU did not answer on QMP in time")
            self._sock.settimeout(left)
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as e:
                raise QmpError(f"QMP connection failed: {e.strerror}") from e
            if not data:
                raise QmpError("QEMU closed its QMP connection (it exited)")
            self._codec.feed(data)
            self._pending.extend(self._codec.messages())
        return self._pending.pop(0)

    def execute(self, name: str, arguments: dict[str, Any] | None = None, *,
                timeout: float = 10.0) -> Any:  # fmt: skip
        """Run command ``name``; its ``return`` value, or QmpError with QEMU's words."""
        ident, data = self._codec.command(name, arguments)
        deadline = time.monotonic() + timeout
        try:
            self._sock.sendall(data)
        except OSError as e:
            raise QmpError(f"QMP connection failed: {e.strerror}") from e
        while True:
            msg = self._read(deadline)
            if "event" in msg:
                self.events.append(msg)
                del self.events[:-64]  # only the latest matter
                continue
            if msg.get("id") != ident:
                continue
            if "error" in msg:
                err = msg["error"]
                raise QmpError(f"QEMU refused {name}: {err.get('desc', err)}")
            return msg.get("return")

    def close(self) -> None:
        """Close the connection (QEMU keeps running)."""
        self._sock.close()
