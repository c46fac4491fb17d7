"""The node API's client: one typed request in, one typed answer out (what the CLI uses).

It speaks HTTP/1.1 over the service's Unix socket with the standard library's
``http.client``, so a CLI command that reaches the service imports nothing heavy.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any, TypeVar

from loft.errors import LoftError
from loft.node import api
from loft.node.jsoncodec import CodecError, decode, encode

__all__ = ["DEFAULT_TIMEOUT", "ControlError", "call"]

#: Bounded so a wedged service never hangs the CLI forever; commits can take a while.
DEFAULT_TIMEOUT = 120.0
#: Largest answer read (a listing of every connection fits many times over).
MAX_ANSWER = 4 << 20

A = TypeVar("A")


class ControlError(LoftError):
    """The disk service refused a request or could not be reached."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def call(path: str, req: object, answer: type[A], *, timeout: float = DEFAULT_TIMEOUT) -> A:
    """Send ``req`` to the node API at socket ``path``; return its answer, typed."""
    op = api.operation_for(req)
    if op.answer is not answer:
        raise TypeError(f"{op.name} answers {op.answer.__name__}, not {answer.__name__}")
    fields = {k: v for k, v in encode(req).items() if k not in op.path_params}
    body = json.dumps(fields).encode() if op.method == "POST" else None
    conn = _UnixConnection(path, timeout)
    try:
        headers = {"content-type": "application/json"} if body is not None else {}
        conn.request(op.method, op.url(req), body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read(MAX_ANSWER + 1)
    except (OSError, http.client.HTTPException) as e:
        raise ControlError(
            f"cannot reach the disk service at {path}: {getattr(e, 'strerror', None) or e}",
            hint="is `loft disk serve` running? its lease expires if it died",
        ) from e
    finally:
        conn.close()
    if len(data) > MAX_ANSWER:
        raise ControlError("the disk service sent an oversized answer")
    try:
        decoded: Any = json.loads(data)
        if resp.status != 200:
            err = decode(api.ErrorAnswer, decoded)
            raise ControlError(err.error, hint=err.hint)
        return decode(answer, decoded)
    except (ValueError, CodecError) as e:
        raise ControlError(f"the disk service at {path} sent a malformed answer: {e}") from None
