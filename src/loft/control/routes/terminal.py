"""``/v1/workspaces/{name}/terminal``: a WebSocket to a shell on a PTY in the workspace.

The protocol (docs/control-plane.md, "Terminal protocol"):

- query: ``rows`` and ``cols`` (the first window size, default 24 by 80), ``user``
  (``runner``, the default, ``root`` or a uid inside the workspace), ``owner`` (an
  admin's), ``session`` (to re-attach to a session within its grace period);
- client → server: **binary** messages are input (at most 64 KiB each); **text**
  messages are JSON, ``{"type": "resize", "rows": R, "cols": C}`` (1..1000);
- server → client: **binary** messages are output; **text** messages are JSON:
  ``{"type": "session", "id", "grace"}`` first (the id re-attaches within ``grace``
  seconds), ``{"type": "idle", "stop_in"}`` before an idle stop,
  ``{"type": "error", "error", "hint"}`` for a message it cannot use, and
  ``{"type": "exit", "code"}`` last, before a normal close (1000).

Authorization happens before the upgrade, as for every route: no token is a 401,
another user's workspace (or session) a 404, a stopped workspace a 409, each as an HTTP
answer ``{"error", "hint"}`` instead of the switch.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from loft.api import WORKSPACE_NAME_PATTERN
from loft.control.accounts import FIRST_ADMIN, Principal
from loft.control.deps import LOCAL_ADMIN, on_node, resolve_owner
from loft.control.errors import ApiError, Invalid, NotFound, Unauthorized
from loft.control.nodeclient import RUNNER
from loft.control.records import Record
from loft.control.state import ControlState
from loft.control.terminals import Attachment, TerminalSession

__all__ = ["MAX_INPUT", "MAX_WINDOW", "authorize", "deny", "router"]

router = APIRouter()
#: The largest input message, in bytes (a paste; more is closed with 1009).
MAX_INPUT = 64 * 1024
#: The largest window side, in rows or columns.
MAX_WINDOW = 1000
_MAX_CONTROL = 1024


def authorize(
    ws: WebSocket, state: ControlState, name: str, owner: str | None
) -> tuple[Principal, Record]:
    """The caller of a WebSocket route and the workspace it names (as every route
    authorizes: a token, or root over the local socket; another user's is a 404)."""
    if ws.scope.get(LOCAL_ADMIN):
        caller: Principal | None = state.accounts.principal(FIRST_ADMIN)
    else:
        scheme, _, token = ws.headers.get("authorization", "").partition(" ")
        caller = state.accounts.authenticate(token) if scheme.lower() == "bearer" else None
    if caller is None:
        raise Unauthorized("no bearer token, or not a live one")
    if not re.match(WORKSPACE_NAME_PATTERN, name):
        raise NotFound(f"no workspace named {name!r}")
    return caller, state.records.get(resolve_owner(state, caller, owner).name, name)


def _window(ws: WebSocket) -> tuple[int, int]:
    try:
        rows = int(ws.query_params.get("rows", "24"))
        cols = int(ws.query_params.get("cols", "80"))
    except ValueError:
        raise Invalid("rows and cols are whole numbers", hint="e.g. ?rows=24&cols=80") from None
    if not (1 <= rows <= MAX_WINDOW and 1 <= cols <= MAX_WINDOW):
        raise Invalid(f"rows and cols are 1 to {MAX_WINDOW}", hint="e.g. ?rows=24&cols=80")
    return rows, cols


def _user(value: str) -> int:
    users = {"runner": RUNNER, "root": 0}
    if value in users:
        return users[value]
    if value.isdigit() and int(value) < 65536:
        return int(value)
    raise Invalid(f"bad user {value[:16]!r}", hint="runner, root or a uid below 65536")


async def deny(ws: WebSocket, e: ApiError) -> None:
    """Refuse a WebSocket before the upgrade with ``e`` as an HTTP answer (or, on a
    server that cannot answer before accepting, a close whose code is 4000 + status)."""
    answer = {"error": e.message, "hint": e.hint}
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(JSONResponse(answer, status_code=e.status))
    else:
        await ws.close(code=4000 + e.status, reason=json.dumps(answer)[:120])


async def _open(ws: WebSocket, state: ControlState, name: str) -> TerminalSession:
    owner = ws.query_params.get("owner")
    caller, rec = await run_in_threadpool(authorize, ws, state, name, owner)
    rows, cols = _window(ws)
    user = _user(ws.query_params.get("user", "runner"))
    wanted = ws.query_params.get("session")
    if wanted is not None:
        sess = state.terminals.find(wanted, rec.id, caller.id)
        if sess is None:
            raise NotFound(
                f"no terminal session {wanted[:40]} of {name}",
                hint="it ended, or its grace period passed: open a new one",
            )
        return sess
    term = await on_node(state, state.node.terminal(rec.id, rows, cols, user))
    return state.terminals.open(rec.id, caller.id, term)


@router.websocket("/v1/workspaces/{name}/terminal")
async def terminal(ws: WebSocket, name: str) -> None:
    """Authorize, open (or re-attach to) a shell, and carry it until either side ends."""
    state: ControlState = ws.app.state.control
    try:
        sess = await _open(ws, state, name)
    except ApiError as e:
        await deny(ws, e)
        return
    await ws.accept()

    async def close(code: int, reason: str) -> None:
        await ws.close(code, reason)

    client = Attachment(ws.send_bytes, ws.send_json, close)
    await state.terminals.attach(sess, client)
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            data, text = message.get("bytes"), message.get("text")
            if data is not None:
                if len(data) > MAX_INPUT:
                    await ws.close(1009, f"input messages are at most {MAX_INPUT} bytes")
                    break
                await state.terminals.input(sess, data)
            elif text is not None:
                error = await _control(sess, text)
                if error is not None:
                    await ws.send_json({"type": "error", **error})
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # the client went away (or the session closed the socket): detach below
    finally:
        state.terminals.detach(sess, client)


async def _control(sess: TerminalSession, text: str) -> dict[str, Any] | None:
    """Apply a control message; an error answer when it is not one."""
    hint = 'send {"type": "resize", "rows": R, "cols": C}'
    if len(text) > _MAX_CONTROL:
        return {"error": f"control messages are at most {_MAX_CONTROL} bytes", "hint": hint}
    try:
        msg = json.loads(text)
    except ValueError:
        return {"error": "a text message must be JSON", "hint": hint}
    if not isinstance(msg, dict) or msg.get("type") != "resize":
        return {"error": "unknown control message", "hint": hint}
    rows, cols = msg.get("rows"), msg.get("cols")
    if not (
        type(rows) is int
        and type(cols) is int
        and 1 <= rows <= MAX_WINDOW
        and 1 <= cols <= MAX_WINDOW
    ):
        return {"error": f"rows and cols are whole numbers 1 to {MAX_WINDOW}", "hint": hint}
    await sess.term.resize(rows, cols)
    return None
