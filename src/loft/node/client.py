"""The node API's client: one typed request in, one typed answer out (what the CLI uses),
and for stream operations (exec, shell, forward) the upgraded connection.

It speaks HTTP/1.1 over the services' Unix sockets with the standard library
(``http.client``; the upgrade by hand, a few lines), so a CLI command that reaches the
node imports nothing heavy: the workspace operations' types are found without importing
the disk service's, whose answers carry the blockstore's.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any, TypeVar

from loft.errors import LoftError
from loft.node.frames import UPGRADE
from loft.node.jsoncodec import CodecError, decode, encode
from loft.node.operation import ErrorAnswer, Operation
from loft.node.workspace_api import AGENT_SOCKET, WORKSPACE_API

__all__ = ["DEFAULT_TIMEOUT", "ControlError", "call", "open_stream"]

#: Bounded so a wedged service never hangs the CLI forever; commits can take a while.
DEFAULT_TIMEOUT = 120.0
#: Largest answer read (a listing of every connection fits many times over).
MAX_ANSWER = 4 << 20
#: Largest response head of an upgrade.
_MAX_HEAD = 64 << 10

A = TypeVar("A")


class ControlError(LoftError):
    """A node service refused a request or could not be reached."""


def _operation(req: object) -> Operation:
    op = WORKSPACE_API.find(req)
    if op is None:
        from loft.node import api  # the disk service's operations (heavier types)

        op = api.operation_for(req)
    return op


def _unreachable(op: Operation, path: str, e: BaseException) -> ControlError:
    what, hint = (
        ("the node agent", "is `loft up` running?")
        if op.socket == AGENT_SOCKET
        else ("the disk service", "is `loft disk serve` running? its lease expires if it died")
    )
    return ControlError(
        f"cannot reach {what} at {path}: {getattr(e, 'strerror', None) or e}", hint=hint
    )


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = _connect(self._path, self.timeout)


def _connect(path: str, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def _body(op: Operation, req: object) -> bytes | None:
    fields = {k: v for k, v in encode(req).items() if k not in op.path_params}
    return json.dumps(fields).encode() if op.method == "POST" else None


def _error(status: int, data: bytes, path: str) -> ControlError:
    try:
        err = decode(ErrorAnswer, json.loads(data))
    except (ValueError, CodecError):
        return ControlError(f"the service at {path} answered {status}: {data[:200]!r}")
    return ControlError(err.error, hint=err.hint)


def call(path: str, req: object, answer: type[A], *, timeout: float = DEFAULT_TIMEOUT) -> A:
    """Send ``req`` to the node API at socket ``path``; return its answer, typed."""
    op = _operation(req)
    if op.answer is not answer:
        raise TypeError(f"{op.name} answers {op.answer.__name__}, not {answer.__name__}")
    body = _body(op, req)
    conn = _UnixConnection(path, timeout)
    try:
        headers = {"content-type": "application/json"} if body is not None else {}
        conn.request(op.method, op.url(req), body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read(MAX_ANSWER + 1)
    except (OSError, http.client.HTTPException) as e:
        raise _unreachable(op, path, e) from e
    finally:
        conn.close()
    if len(data) > MAX_ANSWER:
        raise ControlError(f"the service at {path} sent an oversized answer")
    if resp.status != 200:
        raise _error(resp.status, data, path)
    try:
        decoded: Any = json.loads(data)
        return decode(answer, decoded)
    except (ValueError, CodecError) as e:
        raise ControlError(f"the service at {path} sent a malformed answer: {e}") from None


def open_stream(
    path: str, req: object, *, timeout: float = DEFAULT_TIMEOUT
) -> tuple[socket.socket, bytes]:
    """Send a stream operation's request with ``Upgrade: loft-stream/1``; once the
    service switched protocols, the connected socket (blocking, no timeout) and the bytes
    it already sent after its ``101``. ControlError when it answered an error instead."""
    op = _operation(req)
    if not op.stream:
        raise TypeError(f"{op.name} is not a stream operation")
    body = _body(op, req) or b""
    head = (
        f"{op.method} {op.url(req)} HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: upgrade\r\nUpgrade: {UPGRADE}\r\n\r\n"
    ).encode()
    try:
        sock = _connect(path, timeout)
    except OSError as e:
        raise _unreachable(op, path, e) from e
    try:
        sock.sendall(head + body)
        status, headers, rest = _read_head(sock)
        if status == 101:
            sock.settimeout(None)
            return sock, rest
        length = int(headers.get("content-length", "0") or 0)
        while len(rest) < min(length, MAX_ANSWER):
            more = sock.recv(65536)
            if not more:
                break
            rest += more
        raise _error(status, rest[:length], path)
    except OSError as e:
        sock.close()
        raise _unreachable(op, path, e) from e
    except BaseException:
        sock.close()
        raise


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """A response's status, headers (lowercase names) and the bytes after its head."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more or len(data) > _MAX_HEAD:
            raise ControlError("the service closed the connection or sent a malformed answer")
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ControlError(f"malformed status line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, rest
