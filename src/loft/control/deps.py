"""What routes depend on: who calls (bearer token, or the local socket), the shared
state, the caller's workspace by name, and node calls bounded by a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from loft.api import USER_NAME_PATTERN
from loft.control.accounts import FIRST_ADMIN, Principal
from loft.control.errors import Forbidden, NodeUnavailable, NotFound, Unauthorized
from loft.control.records import Record
from loft.control.state import ControlState

__all__ = [
    "LOCAL_ADMIN",
    "Admin",
    "Caller",
    "OwnerQuery",
    "State",
    "in_thread",
    "on_node",
    "owned",
    "resolve_owner",
]

T = TypeVar("T")

#: Set in the ASGI scope of requests that came over the root-only local socket.
LOCAL_ADMIN = "loft.local_admin"
#: What every 401 says to do.
_AUTH_HINT = "send Authorization: Bearer TOKEN (`loft login URL --token TOKEN`)"

_bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="loft_<id>_<secret>",
    description="A token from `loft user add` or `loft token create`.",
)


def _state(request: Request) -> ControlState:
    state: ControlState = request.app.state.control
    return state


State = Annotated[ControlState, Depends(_state)]


def _caller(
    request: Request,
    state: State,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The principal of a request: root over the local socket is the first admin;
    anyone else must bring a live bearer token."""
    if request.scope.get(LOCAL_ADMIN):
        return state.accounts.principal(FIRST_ADMIN)
    if creds is None:
        raise Unauthorized("no bearer token", hint=_AUTH_HINT)
    principal = state.accounts.authenticate(creds.credentials)
    if principal is None:
        raise Unauthorized("token unknown or revoked", hint=_AUTH_HINT)
    return principal


Caller = Annotated[Principal, Depends(_caller)]


def _admin(caller: Caller) -> Principal:
    if not caller.admin:
        raise Forbidden("only an admin may do this")
    return caller


Admin = Annotated[Principal, Depends(_admin)]

#: Whose workspace a route means: the caller's unless an admin names another user.
OwnerQuery = Annotated[
    str | None,
    Query(
        pattern=USER_NAME_PATTERN,
        description="the workspace's owner (an admin may name anyone; others only themselves)",
    ),
]


async def in_thread(fn: Callable[..., T], *args: object) -> T:
    """Run a blocking (catalog) call off the event loop."""
    return await run_in_threadpool(fn, *args)


async def on_node(state: ControlState, call: Awaitable[T], timeout: float | None = None) -> T:
    """Await a node call within the node deadline (or ``timeout``); past it, 503 (the
    call is cancelled)."""
    limit = state.node_timeout if timeout is None else timeout
    try:
        return await asyncio.wait_for(call, limit)
    except TimeoutError:
        state.metrics.node_timeouts.inc()
        raise NodeUnavailable(
            f"the node agent did not answer within {limit:g} s",
            hint="retry later; an operator should check the node agent",
        ) from None


def resolve_owner(state: ControlState, caller: Principal, owner: str | None) -> Principal:
    """Whose workspaces ``owner`` means for this caller (see :data:`OwnerQuery`)."""
    if owner is None or owner == caller.name:
        return caller
    if not caller.admin:
        # never say whether that user exists
        raise NotFound(f"no user {owner}")
    return state.accounts.principal(owner)


def _owned(state: ControlState, caller: Principal, name: str, owner: str | None) -> Record:
    return state.records.get(resolve_owner(state, caller, owner).name, name)


async def owned(state: ControlState, caller: Principal, name: str, owner: str | None) -> Record:
    """The workspace ``name`` of the caller (or, for an admin, of ``owner``): another
    user's is :class:`NotFound`, exactly as a missing one is."""
    return await in_thread(_owned, state, caller, name, owner)
