"""``/v1/workspaces/{name}/terminal``: a WebSocket to a PTY in the workspace.

The protocol (docs/control.md, "Terminal"): binary frames carry input (client to
server) and output (server to client); text frames carry JSON control messages,
``{"type": "resize", "cols", "rows"}`` from the client and ``{"type": "exit", "code"}``
from the server before it closes.

Authorization happens before the upgrade, as for every route: no token is a 401,
another user's workspace a 404. The PTY itself comes with the node agent's terminals, so
an authorized request is answered 501 until then.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from loft.api import WORKSPACE_NAME_PATTERN
from loft.control.accounts import FIRST_ADMIN, Principal
from loft.control.deps import LOCAL_ADMIN, resolve_owner
from loft.control.errors import ApiError, NotFound, Unauthorized, Unimplemented
from loft.control.state import ControlState

__all__ = ["router"]

router = APIRouter()


def _authorize(ws: WebSocket, state: ControlState, name: str, owner: str | None) -> None:
    import re

    if ws.scope.get(LOCAL_ADMIN):
        caller: Principal | None = state.accounts.principal(FIRST_ADMIN)
    else:
        scheme, _, token = ws.headers.get("authorization", "").partition(" ")
        caller = state.accounts.authenticate(token) if scheme.lower() == "bearer" else None
    if caller is None:
        raise Unauthorized("no bearer token, or not a live one")
    if not re.match(WORKSPACE_NAME_PATTERN, name):
        raise NotFound(f"no workspace {name}")
    state.records.get(resolve_owner(state, caller, owner).name, name)


@router.websocket("/v1/workspaces/{name}/terminal")
async def terminal(ws: WebSocket, name: str, owner: str | None = None) -> None:
    """Authorize, then (until the node's PTYs land) refuse with 501."""
    state: ControlState = ws.app.state.control
    try:
        await run_in_threadpool(_authorize, ws, state, name, owner)
        raise Unimplemented("terminals are not served by this version", hint="use exec meanwhile")
    except ApiError as e:
        answer = {"error": e.message, "hint": e.hint}
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            await ws.send_denial_response(JSONResponse(answer, status_code=e.status))
        else:  # a server without denial responses: close before accepting
            await ws.close(code=4000 + e.status, reason=json.dumps(answer)[:120])
