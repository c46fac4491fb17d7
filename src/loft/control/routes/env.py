"""``/v1/workspaces/{name}/env``: the environment's generations, switch, rollback."""

from __future__ import annotations

from fastapi import APIRouter

from loft.api import EnvRollback, EnvSpec, EnvState
from loft.control.deps import Caller, OwnerQuery, State, in_thread, on_node, owned
from loft.control.routes import ERRORS, errors
from loft.control.routes.workspaces import NamePath, check_env

__all__ = ["router"]

router = APIRouter(tags=["env"], responses=ERRORS)


@router.get("/v1/workspaces/{name}/env")
async def get_env(
    name: NamePath, caller: Caller, state: State, owner: OwnerQuery = None
) -> EnvState:
    """The current generation and the kept ones."""
    rec = await owned(state, caller, name, owner)
    return await on_node(state, state.node.env(rec.id))


@router.post("/v1/workspaces/{name}/env", responses=errors(400))
async def switch_env(
    name: NamePath, body: EnvSpec, caller: Caller, state: State, owner: OwnerQuery = None
) -> EnvState:
    """Build this software and make it the current generation."""
    check_env(body)
    rec = await owned(state, caller, name, owner)
    env = await on_node(state, state.node.env_switch(rec.id, body), state.build_timeout)
    await in_thread(state.records.set_env, rec, body)  # the record is the control plane's
    return env


@router.post("/v1/workspaces/{name}/env/rollback")
async def rollback_env(
    name: NamePath, body: EnvRollback, caller: Caller, state: State, owner: OwnerQuery = None
) -> EnvState:
    """Go back to an earlier generation (by default the one before the current)."""
    rec = await owned(state, caller, name, owner)
    return await on_node(state, state.node.env_rollback(rec.id, body.generation))
