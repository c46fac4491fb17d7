"""``GET /healthz``: unauthenticated, for load balancers and ``loft up``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from loft.api import Health
from loft.control.deps import State
from loft.errors import LoftError

__all__ = ["router"]

router = APIRouter(tags=["health"])
#: How long the health check waits for the node (it must answer quickly itself).
_PING_TIMEOUT = 2.0


@router.get("/healthz")
async def healthz(state: State) -> Health:
    """The API answers; ``node`` says whether its node agent does too."""
    try:
        await asyncio.wait_for(state.node.ping(), min(_PING_TIMEOUT, state.node_timeout))
    except (TimeoutError, LoftError):
        return Health("ok", "unavailable")
    return Health("ok", "ok")
