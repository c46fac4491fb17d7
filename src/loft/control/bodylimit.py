"""Request body limits, enforced before a route runs (a pure ASGI middleware).

A body announced larger than its limit (``Content-Length``) is refused at once with 413,
without reading it; a body that grows past its limit as it streams (chunked, or a lying
length) is refused with 413 the moment it does. Uploads of files may be larger than
JSON requests; nothing else is.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

from loft.api import MAX_FILE_BYTES

__all__ = [
    "BODY_HINT",
    "MAX_JSON_BODY",
    "ASGIApp",
    "BodyLimit",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "TooLarge",
    "limit_for",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The largest JSON request but an exec's (a loft.toml is well under it).
MAX_JSON_BODY = 1 << 20
#: What a refused body's answer suggests.
BODY_HINT = "send less: files and an exec's input up to 16 MiB, other requests up to 1 MiB"


def limit_for(path: str) -> int:
    """The largest body a request to ``path`` may send: a file's, or an exec's with its
    standard input (what ``loft exec`` pipes in), up to :data:`MAX_FILE_BYTES`."""
    return MAX_FILE_BYTES if path.endswith(("/files", "/exec")) else MAX_JSON_BODY


class TooLarge(HTTPException):
    """Raised from the request's ``receive`` when its body passes its limit; an
    ``HTTPException``, so the framework answers it (as 413) wherever the body is read."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _message(limit))
        self.limit = limit


def _message(limit: int) -> str:
    return f"request body over its limit of {limit} bytes"


class BodyLimit:
    """Wraps an ASGI app; answers 413 for a body over :func:`limit_for` its path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = limit_for(scope["path"])
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    announced = int(value)
                except ValueError:
                    announced = -1
                if announced > limit:
                    await _refuse(send, limit)
                    return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise TooLarge(limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except TooLarge:  # read outside a route (the framework answers it inside)
            if started:  # the route answered before reading all of it; nothing to add
                return
            await _refuse(send, limit)


async def _refuse(send: Send, limit: int) -> None:
    body = json.dumps(
        {
            "error": _message(limit),
            "hint": BODY_HINT,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
