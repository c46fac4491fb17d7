"""``/v1/tokens``: the caller's own tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from loft.api import CreateToken, Token, TokenCreated
from loft.control.deps import Caller, State
from loft.control.routes import errors

__all__ = ["router"]

router = APIRouter(tags=["tokens"], responses=errors(400, 401, 404, 413, 422, 503))


@router.get("/v1/tokens")
def list_tokens(caller: Caller, state: State) -> list[Token]:
    """The caller's tokens (never their secrets)."""
    return state.accounts.tokens(caller)


@router.post("/v1/tokens", status_code=201)
def create_token(body: CreateToken, caller: Caller, state: State) -> TokenCreated:
    """A new token for the caller, shown only this once."""
    return state.accounts.create_token(caller, body.name)


@router.delete("/v1/tokens/{token_id}")
def revoke_token(
    token_id: Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")], caller: Caller, state: State
) -> Token:
    """Revoke one of the caller's tokens; it stops working at once. The answer is the
    token as it was."""
    return state.accounts.revoke_token(caller, token_id)
