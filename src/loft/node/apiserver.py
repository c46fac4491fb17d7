"""Serving the node API: HTTP/1.1 (h11, sans-I/O) on a Unix socket, one request per
connection. It only translates (Firecracker's API server habit): it matches the method
and path to an :class:`~loft.node.operation.Operation` of the socket's table, decodes the
typed request from the path and the JSON body, hands it to the implementation, and
encodes the typed answer or the error. It never touches a volume or a workspace itself.

A ``stream`` operation (exec, shell, forward) is an HTTP/1.1 Upgrade: the request carries
``Upgrade: loft-stream/1``; the implementation answers a :data:`Session` (or raises, and
the error is an ordinary JSON answer), the server sends ``101 Switching Protocols`` and
hands the connection, with any bytes the client sent after its request, to the session,
which speaks frames (:mod:`loft.node.frames`) until it ends.

Limits, because even a root-only socket's peer may be a buggy script: a request's head
and body are bounded (:data:`MAX_HEAD`, :data:`MAX_BODY`) and must arrive within
:data:`READ_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

import h11

from loft.errors import LoftError
from loft.node import api
from loft.node.frames import UPGRADE
from loft.node.jsoncodec import CodecError, decode, encode
from loft.node.operation import ErrorAnswer, Operation, Table

__all__ = ["MAX_BODY", "MAX_HEAD", "READ_TIMEOUT", "ApiServer", "Handler", "Session"]

log = logging.getLogger("loft.node.api")

#: Largest request line plus headers.
MAX_HEAD = 16 * 1024
#: Largest request body (a request of the disk service's API is a few fields; the agent's
#: may carry a loft.lock, and allows more: ``max_body``).
MAX_BODY = 64 * 1024
#: Seconds a client has to send its whole request.
READ_TIMEOUT = 10.0

#: Runs one decoded request; returns the answer object (any thread-safety is its own),
#: or for a stream operation the :data:`Session` that serves the upgraded connection.
Handler = Callable[[Operation, object], Awaitable[object]]
#: An upgraded connection's life: its reader and writer, and the bytes already received
#: after the request.
Session = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]
#: The HTTP status of an error the implementation raised (4xx: the caller can fix it).
StatusOf = Callable[[LoftError], int]


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.hint = hint


class ApiServer:
    """The node API on a Unix socket: ``table``'s operations (default: the disk
    service's), implemented by ``handler``."""

    def __init__(
        self,
        handler: Handler,
        status_of: StatusOf,
        table: Table = api.DISK_API,
        *,
        max_body: int = MAX_BODY,
    ) -> None:
        self._handler = handler
        self._status_of = status_of
        self._table = table
        self._max_body = max_body
        self._openapi = json.dumps(api.openapi(), indent=2).encode()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection (an ``asyncio.start_unix_server`` callback)."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            try:
                request, body = await asyncio.wait_for(
                    _receive(conn, reader, self._max_body), READ_TIMEOUT
                )
                status, payload = await self._answer(request, body)
                if isinstance(payload, _Upgrade):
                    await _switch(conn, writer, payload.session, reader)
                    return
            except _HTTPError as e:
                status, payload = e.status, _error_body(e.message, e.hint)
            except (TimeoutError, h11.RemoteProtocolError) as e:
                status, payload = 400, _error_body(f"bad HTTP request: {e or 'timed out'}")
            await _send(conn, writer, status, payload)
        except (ConnectionError, OSError, h11.LocalProtocolError):
            pass  # the client went away; nothing to answer
        finally:
            writer.close()

    async def _answer(self, request: h11.Request, body: bytes) -> tuple[int, bytes | _Upgrade]:
        method = request.method.decode()
        target = request.target.decode("ascii", "replace")
        path = target.split("?", 1)[0]
        if path == "/openapi.json" and method == "GET":
            return 200, self._openapi
        found = self._table.match(method, path)
        if found is None:
            if self._table.path_exists(path):
                raise _HTTPError(405, f"{method} is not allowed on {path}")
            elsewhere = api.NODE_API.match(method, path)
            if elsewhere is not None:
                hint = f"{elsewhere[0].socket} serves it"
                raise _HTTPError(404, f"{path} is not served on this socket", hint=hint)
            raise _HTTPError(404, f"no such endpoint {path}", hint="GET /openapi.json lists them")
        op, params = found
        upgrade = dict(request.headers).get(b"upgrade", b"").decode("ascii", "replace")
        if op.stream and upgrade.lower() != UPGRADE:
            raise _HTTPError(400, f"{op.name} needs the header 'Upgrade: {UPGRADE}'")
        try:
            fields = json.loads(body) if body.strip() else {}
            if not isinstance(fields, dict):
                raise CodecError("body: expected a JSON object")
            for name, value in params.items():
                if name in fields:
                    raise CodecError(f"{name}: given in the path and the body")
                fields[name] = unquote(value)
            req: object = decode(op.request, fields)
        except (ValueError, CodecError) as e:
            raise _HTTPError(400, f"bad {op.name} request: {e}") from None
        try:
            answer = await self._handler(op, req)
        except LoftError as e:
            return self._status_of(e), _error_body(e.message, e.hint)
        except Exception as e:  # never let one request kill the service
            log.exception("node.api.error op=%s", op.name)
            return 500, _error_body(f"internal error: {e}")
        if op.stream:
            return 101, _Upgrade(answer)  # type: ignore[arg-type]
        return 200, json.dumps(encode(answer)).encode()


class _Upgrade:
    """A stream operation's answer: the session to hand the connection to."""

    def __init__(self, session: Session) -> None:
        self.session = session


async def _switch(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    session: Session,
    reader: asyncio.StreamReader,
) -> None:
    """Send 101 Switching Protocols and run ``session`` on the connection."""
    headers = [("upgrade", UPGRADE), ("connection", "upgrade")]
    writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=headers)))
    await writer.drain()
    trailing, _closed = conn.trailing_data
    try:
        await session(reader, writer, bytes(trailing))
    except (ConnectionError, asyncio.CancelledError):
        raise
    except Exception:  # a session's failure ends that connection only; say why
        log.exception("node.api.session_failed")


async def _receive(
    conn: h11.Connection, reader: asyncio.StreamReader, max_body: int
) -> tuple[h11.Request, bytes]:
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body:
                raise _HTTPError(413, f"request body over {max_body} bytes")
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, bytes(body)
        else:  # ConnectionClosed before a whole request
            raise _HTTPError(400, "connection closed before a whole request")


async def _send(
    conn: h11.Connection, writer: asyncio.StreamWriter, status: int, body: bytes
) -> None:
    headers: list[tuple[str, str]] = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("connection", "close"),
    ]
    writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
    writer.write(conn.send(h11.Data(data=body)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()


def _error_body(message: str, hint: str | None = None) -> bytes:
    return json.dumps(encode(ErrorAnswer(message, hint))).encode()
