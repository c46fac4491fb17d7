"""A small blocking WebSocket client for tests (wsproto over a socket): enough to drive
the terminal and the preview proxy's WebSocket relay."""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

__all__ = ["Closed", "Rejected", "WebSocket"]


@dataclass
class Closed:
    """The server closed the connection with this code."""

    code: int
    reason: str


class Rejected(Exception):
    """The server answered the upgrade with an HTTP status."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"rejected with {status}: {body[:200]!r}")
        self.status = status
        self.body = body


class WebSocket:
    """One client connection."""

    def __init__(
        self,
        port: int,
        path: str,
        *,
        host: str = "127.0.0.1",
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        #: JSON messages :meth:`read_until` passed over
        self.messages: list[dict[str, Any]] = []
        self._out = b""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self._pending: list[Event] = []
        extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        self.sock.sendall(self.ws.send(Request(host=host, target=path, extra_headers=extra)))
        status, body = 0, b""
        while True:
            event = self._event(timeout)
            if isinstance(event, AcceptConnection):
                return
            if isinstance(event, RejectConnection):
                status = event.status_code
                if not event.has_body:
                    break
            elif isinstance(event, RejectData):
                body += event.data
                if event.body_finished:
                    break
        self.sock.close()
        raise Rejected(status, body)

    def _event(self, timeout: float) -> Event:
        deadline = time.monotonic() + timeout
        while not self._pending:
            self._pending.extend(self.ws.events())
            if self._pending:
                break
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)
        return self._pending.pop(0)

    def send_bytes(self, data: bytes) -> None:
        """A binary message."""
        self.sock.sendall(self.ws.send(BytesMessage(data=data)))

    def send_json(self, obj: Any) -> None:
        """A text message of JSON."""
        self.sock.sendall(self.ws.send(TextMessage(data=json.dumps(obj))))

    def recv(self, timeout: float = 10.0) -> bytes | dict[str, Any] | Closed:
        """The next message: bytes, a JSON object, or how the connection closed."""
        buf_b, buf_t = b"", ""
        while True:
            event = self._event(timeout)
            if isinstance(event, BytesMessage):
                buf_b += event.data
                if event.message_finished:
                    return buf_b
            elif isinstance(event, TextMessage):
                buf_t += event.data
                if event.message_finished:
                    value: dict[str, Any] = json.loads(buf_t)
                    return value
            elif isinstance(event, CloseConnection):
                return Closed(event.code, event.reason or "")

    def read_until(self, needle: bytes | re.Pattern[bytes], timeout: float = 10.0) -> bytes:
        """Output bytes up to and including ``needle`` (or the first match of a pattern);
        the rest is kept for the next call (JSON messages in between go to
        :attr:`messages`)."""
        deadline = time.monotonic() + timeout
        pattern = needle if isinstance(needle, re.Pattern) else re.compile(re.escape(needle))
        while (m := pattern.search(self._out)) is None:
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} not seen in {self._out[-500:]!r}"
            msg = self.recv(left)
            if isinstance(msg, bytes):
                self._out += msg
            elif isinstance(msg, Closed):
                raise AssertionError(f"closed ({msg}) before {needle!r}: {self._out[-500:]!r}")
            else:
                self.messages.append(msg)
        out, self._out = self._out[: m.end()], self._out[m.end() :]
        return out

    def close(self) -> None:
        """Drop the connection without a closing handshake (a client that went away)."""
        self.sock.close()
