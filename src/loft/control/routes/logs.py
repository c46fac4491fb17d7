"""``GET /v1/workspaces/{name}/logs``: what the workspace's ``[run] command`` wrote
(kept by its node across starts, the newest bytes), and with ``follow`` what it writes
next, until the client hangs up. Reading logs is not use: it keeps nothing awake."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from loft.control.deps import Caller, OwnerQuery, State, on_node, owned
from loft.control.routes import RAW_ERRORS
from loft.control.routes.workspaces import NamePath

__all__ = ["MAX_TAIL", "LogResponse", "router"]

router = APIRouter(tags=["logs"], responses=RAW_ERRORS)
#: The most bytes of kept output one request asks for.
MAX_TAIL = 1 << 20


class LogResponse(StreamingResponse):
    """Raw output, as the command wrote it (not necessarily UTF-8)."""

    media_type = "text/plain"


@router.get(
    "/v1/workspaces/{name}/logs",
    response_class=LogResponse,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "The output, then (follow) more as it comes",
        }
    },
)
async def logs(
    name: NamePath,
    caller: Caller,
    state: State,
    owner: OwnerQuery = None,
    tail: Annotated[int, Query(ge=0, le=MAX_TAIL, description="bytes of kept output")] = 65536,
    follow: Annotated[bool, Query(description="go on with new output")] = False,
) -> LogResponse:
    """The ``[run] command``'s output."""
    rec = await owned(state, caller, name, owner)
    chunks = await on_node(state, state.node.logs(rec.id, tail, follow))
    return LogResponse(chunks)
