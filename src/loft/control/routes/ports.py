"""``/v1/workspaces/{name}/ports/{port}``: a WebSocket carrying one TCP connection to
``port`` on the workspace's own loopback (what ``loft forward`` opens for each local
connection it accepts).

Binary messages are the connection's bytes, both ways (at most 1 MiB each); a client
that closes the WebSocket ends the connection, and the workspace's end closing it closes
the WebSocket (1000). Text messages are refused (close 1003). The connection is made
before the upgrade, so every refusal is an HTTP answer ``{"error", "hint"}``: no token
401, another user's workspace 404, a stopped one 409, nothing listening on the port 409
(as the preview proxy's 502 says), a bad port 422. A tunnel open is use of the workspace
however quiet, as an exec running is (the idle reaper leaves it alone).
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from loft.control.deps import on_node
from loft.control.errors import ApiError, Invalid
from loft.control.routes.terminal import authorize, deny
from loft.control.state import ControlState

__all__ = ["MAX_MESSAGE", "router"]

router = APIRouter()
#: The largest message either way, in bytes.
MAX_MESSAGE = 1 << 20


@router.websocket("/v1/workspaces/{name}/ports/{port}")
async def port_tunnel(ws: WebSocket, name: str, port: str) -> None:
    """Authorize, connect to the port, and carry the connection until either end closes."""
    state: ControlState = ws.app.state.control
    try:
        _, rec = await run_in_threadpool(authorize, ws, state, name, ws.query_params.get("owner"))
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise Invalid(f"bad port {port[:8]!r}", hint="a TCP port, 1 to 65535")
        reader, writer = await on_node(state, state.node.connect(rec.id, int(port)))
    except ApiError as e:
        await deny(ws, e)
        return
    await ws.accept()
    with state.activity.busy(rec.id):
        inward = asyncio.ensure_future(_inward(ws, writer))
        outward = asyncio.ensure_future(_outward(reader, ws))
        try:
            await asyncio.wait({inward, outward}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (inward, outward):
                task.cancel()
            await asyncio.gather(inward, outward, return_exceptions=True)
            writer.close()
            with contextlib.suppress(RuntimeError, OSError):
                await ws.close(1000)


async def _inward(ws: WebSocket, writer: asyncio.StreamWriter) -> None:
    """The client's messages to the workspace's port, until the client closes."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                await ws.close(1003, "binary messages only: they are the connection's bytes")
                return
            if len(data) > MAX_MESSAGE:
                await ws.close(1009, f"messages are at most {MAX_MESSAGE} bytes")
                return
            writer.write(data)
            await writer.drain()


async def _outward(reader: asyncio.StreamReader, ws: WebSocket) -> None:
    """What the workspace's end sends, until it closes."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        while data := await reader.read(MAX_MESSAGE):
            await ws.send_bytes(data)
