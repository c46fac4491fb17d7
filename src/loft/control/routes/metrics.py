"""``GET /metrics``: the Prometheus text format, for admins only (a token of an admin,
or the local socket): counts of workspaces and operations are the whole platform's."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from loft.api import STATES
from loft.control.deps import Admin, State, in_thread, on_node
from loft.control.routes import raw_errors
from loft.errors import LoftError

__all__ = ["router"]

router = APIRouter(tags=["metrics"], responses=raw_errors(400, 401, 403, 503))


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(_: Admin, state: State) -> Response:
    """Every metric; the workspace gauge is counted now from the records and the node."""
    records = await in_thread(state.records.list, None)
    try:
        states = await on_node(state, state.node.states([r.id for r in records]))
    except LoftError:
        states = {}  # the node's silence must not hide the API's own metrics
    counts = Counter(states[r.id].state if r.id in states else "unknown" for r in records)
    for s in STATES:
        state.metrics.workspaces.labels(s).set(counts.get(s, 0))
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
