"""A blocking WebSocket client for the API's WebSocket routes (a workspace's terminal, a
tunnel to one of its ports): wsproto's sans-I/O state machine over a plain socket (a
Unix socket, TCP, or TLS for ``https``), so the CLI needs no event loop.

Sending is safe from several threads (a shell sends input from one and resizes from a
signal handler); receiving is one thread's. A refusal before the upgrade is the API's
``{"error", "hint"}`` answer, raised as the client's error for its status.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Mapping
from urllib.parse import quote, urlencode

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from loft.client._errors import TransportError, error_for
from loft.client._transport import parse_url

__all__ = ["WebSocket"]

_READ = 1 << 16
#: The largest message accepted from the API (a tunnel's messages are at most 1 MiB).
MAX_MESSAGE = 2 << 20
#: The largest refusal read before the upgrade.
_MAX_REFUSAL = 64 << 10


class WebSocket:
    """One WebSocket to the API. :meth:`recv` returns bytes (a binary message), str (a
    text message) or None once the connection closed; :attr:`close_code` then says how."""

    def __init__(self, sock: socket.socket, conn: WSConnection) -> None:
        self._sock = sock
        self._conn = conn
        self._sending = threading.Lock()
        self._parts: list[bytes | str] = []
        self._size = 0
        self._pending: list[bytes | str | None] = []
        self.close_code: int | None = None
        self.close_reason = ""

    @classmethod
    def open(
        cls,
        url: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        token: str | None = None,
        ca: str | None = None,
        timeout: float = 60.0,
    ) -> WebSocket:
        """Connect to ``path`` of the API at ``url`` and switch to WebSocket."""
        target = parse_url(url)
        try:
            if target.scheme == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(target.socket_path)
            else:
                sock = socket.create_connection((target.host, target.port), timeout)
                if target.scheme == "https":
                    context = ssl.create_default_context(cafile=ca)
                    sock = context.wrap_socket(sock, server_hostname=target.host)
        except OSError as e:
            raise TransportError(
                f"cannot reach the loft API at {url}: {e.strerror or e}",
                hint="is the control plane running? `loft login URL --token T` sets where it is",
            ) from e
        query = urlencode({k: v for k, v in (params or {}).items() if v}, quote_via=quote)
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        conn = WSConnection(ConnectionType.CLIENT)
        ws = cls(sock, conn)
        try:
            request = Request(
                host=target.host,
                target=f"{path}?{query}" if query else path,
                extra_headers=headers,
            )
            sock.sendall(conn.send(request))
            ws._handshake()
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)  # a quiet shell or tunnel is no error
        return ws

    def _handshake(self) -> None:
        status, body = 0, b""
        while True:
            for event in self._events():
                if isinstance(event, AcceptConnection):
                    return
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise error_for(status, f"the API refused the WebSocket ({status})", None)
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished or len(body) > _MAX_REFUSAL:
                        try:
                            answer = json.loads(body)
                            error, hint = str(answer["error"]), answer.get("hint")
                        except (ValueError, KeyError, TypeError):
                            error, hint = f"the API refused the WebSocket ({status})", None
                        raise error_for(status, error, hint if isinstance(hint, str) else None)

    def _events(self) -> list[Event]:
        """What the next bytes from the API make (at least one event, or an error)."""
        while True:
            try:
                data = self._sock.recv(_READ)
            except OSError as e:
                raise TransportError(f"the API broke off the WebSocket: {e}") from e
            self._conn.receive_data(data or None)
            events = list(self._conn.events())
            if events:
                return events
            if not data:
                raise TransportError("the API closed the connection")

    def _send(self, event: Event) -> None:
        with self._sending:
            try:
                self._sock.sendall(self._conn.send(event))
            except (OSError, ValueError) as e:  # closed (ValueError: wsproto's state)
                raise TransportError(f"the WebSocket is closed: {e}") from e

    def send_bytes(self, data: bytes) -> None:
        """Send a binary message."""
        self._send(BytesMessage(data))

    def send_json(self, obj: object) -> None:
        """Send a text message holding ``obj`` as JSON."""
        self._send(TextMessage(json.dumps(obj)))

    def recv(self) -> bytes | str | None:
        """The next message (bytes or str), or None once closed."""
        while not self._pending:
            if self.close_code is not None:
                return None
            try:
                events = self._events()
            except TransportError:
                self.close_code = self.close_code or 1006
                return None
            for event in events:
                self._handle(event)
        return self._pending.pop(0)

    def _handle(self, event: Event) -> None:
        if isinstance(event, Message):
            self._parts.append(event.data)
            self._size += len(event.data)
            if self._size > MAX_MESSAGE:
                self.close(1009)
                self._pending.append(None)
                return
            if event.message_finished:
                whole: bytes | str
                if isinstance(event, BytesMessage):
                    whole = b"".join(p for p in self._parts if isinstance(p, bytes))
                else:
                    whole = "".join(p for p in self._parts if isinstance(p, str))
                self._parts, self._size = [], 0
                self._pending.append(whole)
        elif isinstance(event, Ping):
            self._send(event.response())
        elif isinstance(event, CloseConnection):
            self.close_code, self.close_reason = event.code, event.reason or ""
            try:
                self._send(event.response())
            except TransportError:
                pass
            self._pending.append(None)

    def close(self, code: int = 1000) -> None:
        """Close (politely when still open) and release the socket."""
        if self.close_code is None:
            self.close_code = code
            try:
                self._send(CloseConnection(code=code))
            except TransportError:
                pass
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def shutdown_reading(self) -> None:
        """Wake a thread blocked in :meth:`recv` (it returns None)."""
        try:
            self._sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass
