"""``/v1/workspaces/{name}/snapshots``: list, take, delete."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Path

from loft.api import SNAPSHOT_NAME_PATTERN, CreateSnapshot, Snapshot, SnapshotDeleted
from loft.control.deps import Caller, OwnerQuery, State, on_node, owned
from loft.control.routes import ERRORS, errors
from loft.control.routes.workspaces import NamePath

__all__ = ["router"]

router = APIRouter(tags=["snapshots"], responses=ERRORS)


@router.get("/v1/workspaces/{name}/snapshots")
async def list_snapshots(
    name: NamePath, caller: Caller, state: State, owner: OwnerQuery = None
) -> list[Snapshot]:
    """The workspace's snapshots, oldest first."""
    rec = await owned(state, caller, name, owner)
    return await on_node(state, state.node.snapshots(rec.id))


@router.post("/v1/workspaces/{name}/snapshots", status_code=201, responses=errors(409))
async def create_snapshot(
    name: NamePath, body: CreateSnapshot, caller: Caller, state: State, owner: OwnerQuery = None
) -> Snapshot:
    """Snapshot the workspace now, running or not (a name is made up if none is given)."""
    rec = await owned(state, caller, name, owner)
    snap = body.name or time.strftime("snap-%Y%m%d-%H%M%S", time.gmtime())
    with state.metrics.operation("snapshot"):
        return await on_node(state, state.node.snapshot(rec.id, snap))


@router.delete("/v1/workspaces/{name}/snapshots/{snapshot}", responses=errors(409))
async def delete_snapshot(
    name: NamePath,
    snapshot: Annotated[str, Path(pattern=SNAPSHOT_NAME_PATTERN)],
    caller: Caller,
    state: State,
    owner: OwnerQuery = None,
) -> SnapshotDeleted:
    """Delete one snapshot, and a VM's memory image with it (409 while a VM or another
    image maps that image). Forks made from it keep their data."""
    rec = await owned(state, caller, name, owner)
    await on_node(state, state.node.delete_snapshot(rec.id, snapshot))
    return SnapshotDeleted(snapshot)
