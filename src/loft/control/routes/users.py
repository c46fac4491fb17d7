"""``/v1/users`` (admin) and ``/v1/me``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from loft.api import USER_NAME_PATTERN, CreateUser, UpdateUser, User, UserCreated
from loft.control.deps import Admin, Caller, State
from loft.control.errors import Conflict
from loft.control.routes import errors

__all__ = ["router"]

router = APIRouter(tags=["users"], responses=errors(400, 401, 403, 404, 413, 422, 503))
UserPath = Annotated[str, Path(pattern=USER_NAME_PATTERN)]


@router.get("/v1/me")
def me(caller: Caller, state: State) -> User:
    """The caller, with their quotas and what they use."""
    return state.accounts.user(caller.name)


@router.get("/v1/users")
def list_users(_: Admin, state: State) -> list[User]:
    """Every user."""
    return state.accounts.users()


@router.post("/v1/users", status_code=201, responses=errors(409))
def create_user(body: CreateUser, _: Admin, state: State) -> UserCreated:
    """Make a user; the answer holds their first token, shown only this once."""
    return state.accounts.create_user(body.name, body.admin, body.quotas)


@router.get("/v1/users/{user}")
def get_user(user: UserPath, _: Admin, state: State) -> User:
    """One user."""
    return state.accounts.user(user)


@router.patch("/v1/users/{user}", responses=errors(409))
def update_user(user: UserPath, body: UpdateUser, _: Admin, state: State) -> User:
    """Change a user's admin flag or quotas."""
    return state.accounts.update_user(user, body.admin, body.quotas)


@router.delete("/v1/users/{user}", responses=errors(409))
def delete_user(user: UserPath, caller: Admin, state: State) -> User:
    """Delete a user and their tokens (refused while they own workspaces); the answer is
    the user as they were."""
    if user == caller.name:
        raise Conflict("you cannot delete yourself", hint="ask another admin")
    gone = state.accounts.user(user)
    state.accounts.delete_user(user)
    return gone
