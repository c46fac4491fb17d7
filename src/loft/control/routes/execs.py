"""``POST /v1/workspaces/{name}/exec``: run a command, stream its output and exit code
(``application/x-ndjson``, one :class:`loft.api.ExecEvent` a line)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from loft.api import ExecEvent, ExecRequest
from loft.control.deps import Caller, OwnerQuery, State, on_node, owned
from loft.control.errors import status_of
from loft.control.nodeclient import Exited, Output
from loft.control.routes import RAW_ERRORS, raw_errors
from loft.control.routes.workspaces import NamePath
from loft.errors import LoftError

__all__ = ["EXEC_GRACE", "NDJSONResponse", "router"]

router = APIRouter(tags=["exec"], responses=RAW_ERRORS)
#: Seconds past a command's own timeout the node has to report its end.
EXEC_GRACE = 10.0


class NDJSONResponse(StreamingResponse):
    """A stream of JSON values, one a line."""

    media_type = "application/x-ndjson"


def _line(event: ExecEvent) -> bytes:
    fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    return (
        json.dumps({k: v for k, v in fields.items() if v is not None and v != ""}).encode() + b"\n"
    )


@router.post(
    "/v1/workspaces/{name}/exec",
    response_class=NDJSONResponse,
    responses={
        200: {"model": ExecEvent, "description": "The command's events, one JSON value a line"},
        **raw_errors(409),
    },
)
async def exec_command(
    name: NamePath, body: ExecRequest, caller: Caller, state: State, owner: OwnerQuery = None
) -> NDJSONResponse:
    """Run a command in a running workspace; its output streams as it comes, and the
    last line is its exit code (or the error that cut it off)."""
    rec = await owned(state, caller, name, owner)
    start = time.perf_counter()
    state.activity.touch(rec.id)
    with state.metrics.operation("exec"):
        events = await on_node(state, state.node.exec(rec.id, body))
    deadline = start + body.timeout + EXEC_GRACE

    async def stream() -> AsyncIterator[bytes]:
        with state.activity.busy(rec.id):  # a command running is use, however quiet
            async for line in _lines():
                yield line

    async def _lines() -> AsyncIterator[bytes]:
        try:
            while True:
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise TimeoutError
                event = await asyncio.wait_for(anext(events), left)
                if isinstance(event, Exited):
                    yield _line(ExecEvent("exit", code=event.code))
                    return
                if isinstance(event, Output):
                    yield _line(ExecEvent(event.stream, base64.b64encode(event.data).decode()))
        except StopAsyncIteration:
            yield _line(ExecEvent("error", error="the node ended the command without an exit code"))
        except TimeoutError:
            state.metrics.node_timeouts.inc()
            yield _line(
                ExecEvent(
                    "error",
                    error=f"the node did not report the command's end within {body.timeout:g} s "
                    f"and {EXEC_GRACE:g} s of grace",
                    hint="an operator should check the node agent",
                )
            )
        except LoftError as e:
            yield _line(ExecEvent("error", error=e.message, hint=e.hint, code=status_of(e)))

    return NDJSONResponse(stream())
