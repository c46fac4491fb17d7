"""``GET /metrics``: the Prometheus text format, for admins only (a token of an admin,
or the local socket): counts of workspaces and operations are the whole platform's. Or,
without a token, on a separate loopback listen address (:func:`metrics_app`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from fastapi import APIRouter, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST

from loft.api import STATES
from loft.control.deps import Admin, State, in_thread, on_node
from loft.control.nodeclient import RuntimeState
from loft.control.routes import raw_errors
from loft.control.state import ControlState
from loft.errors import LoftError

__all__ = ["metrics_app", "render", "router"]

router = APIRouter(tags=["metrics"], responses=raw_errors(400, 401, 403, 503))


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(_: Admin, state: State) -> Response:
    """Every metric; the workspace gauge is counted now from the records and the node."""
    return await render(state)


async def render(state: ControlState) -> Response:
    """The metrics, with what the node reports read now: workspaces by state, and the
    commit lag of each volume."""
    records = await in_thread(state.records.list, None)
    states: Mapping[str, RuntimeState] = {}
    lags: Mapping[str, float] = {}
    try:  # the node's silence (or a report it lacks) must not hide the API's own metrics
        states = await on_node(state, state.node.states([r.id for r in records]))
        lags = await on_node(state, state.node.commit_lags())
    except LoftError:
        pass
    counts = Counter(states[r.id].state if r.id in states else "unknown" for r in records)
    for s in STATES:
        state.metrics.workspaces.labels(s).set(counts.get(s, 0))
    state.metrics.commit_lag.clear()  # volumes that went away go from the page too
    for volume, lag in lags.items():
        state.metrics.commit_lag.labels(volume).set(lag)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def metrics_app(state: ControlState) -> FastAPI:
    """``GET /metrics`` alone, without a token: for a separate, loopback-only listen
    address a Prometheus on the node scrapes."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/metrics")
    async def scrape() -> Response:
        return await render(state)

    return app
