"""The control plane's ASGI app: FastAPI with the routes, the body limit, request
metrics, and one error shape, ``{"error", "hint"}``, for every failure (the framework's
own 404, 405 and validation errors included).

:func:`create_app` builds it over a :class:`~loft.control.state.ControlState`;
:func:`local_admin` wraps it for the root-only local socket.
"""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from loft.api import API_VERSION
from loft.control.bodylimit import BODY_HINT, ASGIApp, BodyLimit, Message, Receive, Scope, Send
from loft.control.deps import LOCAL_ADMIN
from loft.control.errors import status_of
from loft.control.metrics import Metrics
from loft.control.routes import (
    env,
    execs,
    files,
    health,
    logs,
    metrics,
    ports,
    preview,
    snapshots,
    terminal,
    tokens,
    users,
    workspaces,
)
from loft.control.state import ControlState
from loft.errors import LoftError

__all__ = ["RequestMetrics", "create_app", "local_admin"]

log = logging.getLogger("loft.control")

_DESCRIPTION = """\
loft's control plane: users, tokens, and workspaces (with their snapshots, commands,
files and environments). Every operation but `/healthz` needs `Authorization: Bearer
TOKEN`; a user sees only their own workspaces (another user's is a 404), an admin sees
all. Errors are `{"error", "hint"}`.
"""


def create_app(state: ControlState) -> FastAPI:
    """The API over ``state``."""
    app = FastAPI(
        title="loft control plane API",
        version=API_VERSION,
        description=_DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.control = state
    routers = (health, users, tokens, workspaces, snapshots, execs, files, env, logs, preview)
    for module in (*routers, metrics):
        app.include_router(module.router)
    app.include_router(terminal.router)
    app.include_router(ports.router)
    app.add_exception_handler(LoftError, _loft_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal)
    app.add_middleware(BodyLimit)
    app.add_middleware(RequestMetrics, metrics=state.metrics)
    return app


def local_admin(app: ASGIApp) -> ASGIApp:
    """``app`` for the root-only local socket: every request there acts as the first
    admin, without a token (whoever can open the socket is root on the node)."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, LOCAL_ADMIN: True}
        await app(scope, receive, send)

    return wrapped


#: The hint of an error that brought none of its own: every answer says what to do.
_DEFAULT_HINTS = {
    400: "GET /openapi.json describes every request",
    404: "list what there is first (GET the collection)",
    409: "list what there is first (GET the collection)",
    422: "GET /openapi.json describes every request",
    500: "the operator will find it in the service's log",
    503: "retry later; an operator should check the node agent and the catalog",
}


def _answer(status: int, error: str, hint: str | None, **headers: str) -> JSONResponse:
    hint = hint or _DEFAULT_HINTS.get(status)
    return JSONResponse({"error": error, "hint": hint}, status_code=status, headers=headers)


async def _loft_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LoftError)
    status = status_of(exc)
    if status >= 500:
        log.warning("control.error status=%d error=%s", status, exc)
    extra = {"www-authenticate": "Bearer"} if status == 401 else {}
    return _answer(status, exc.message, exc.hint, **extra)


async def _invalid(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    message = f"{where}: {first.get('msg', 'invalid')}" if where else "invalid request"
    more = len(exc.errors()) - 1
    if more > 0:
        message += f" (and {more} more)"
    return _answer(422, message, "GET /openapi.json describes every request")


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    hints = {
        404: "GET /openapi.json lists the endpoints",
        405: "GET /openapi.json lists the methods",
        413: BODY_HINT,
    }
    return _answer(exc.status_code, str(exc.detail), hints.get(exc.status_code))


async def _internal(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("control.internal_error", exc_info=exc)
    return _answer(500, "internal error", None)


class RequestMetrics:
    """Counts and times every request by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def timed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                route = getattr(scope.get("route"), "path", "unmatched")
                self.metrics.request_seconds.labels(scope["method"], route).observe(
                    time.perf_counter() - start
                )
            await send(message)

        try:
            await self.app(scope, receive, timed)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
