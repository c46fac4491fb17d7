"""``/v1/workspaces``: create, list, read, change, delete, start, stop, restore, fork."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated

from fastapi import APIRouter, Path, Query

from loft.api import (
    STATES,
    WORKSPACE_NAME_MAX,
    WORKSPACE_NAME_PATTERN,
    CreateWorkspace,
    EnvSpec,
    ForkWorkspace,
    Restored,
    RestoreWorkspace,
    StopWorkspace,
    UpdateWorkspace,
    Workspace,
    WorkspaceDeleted,
)
from loft.control.deps import Caller, OwnerQuery, State, in_thread, on_node, owned, resolve_owner
from loft.control.errors import ApiError, BadRequest, Conflict, Invalid, NodeUnavailable
from loft.control.nodeclient import NodeWorkspace, RuntimeState
from loft.control.records import Record
from loft.control.routes import ERRORS, errors
from loft.control.state import ControlState
from loft.envstore.runspec import RunSpecError, parse_run

__all__ = ["NamePath", "check_env", "router", "to_workspace"]

router = APIRouter(tags=["workspaces"], responses=ERRORS)
NamePath = Annotated[str, Path(pattern=WORKSPACE_NAME_PATTERN, max_length=WORKSPACE_NAME_MAX)]


def to_workspace(rec: Record, rs: RuntimeState | None) -> Workspace:
    """The API's view of a record and its runtime state (None: the node did not say)."""
    return Workspace(
        id=rec.id,
        name=rec.name,
        owner=rec.owner,
        state=rs.state if rs else "unknown",
        runtime=rec.runtime,
        network=rec.network,
        size=rec.size,
        limits=rec.limits,
        idle_timeout=rec.idle_timeout,
        metadata=rec.metadata,
        env=rec.env,
        created_at=rec.created_at,
        node=rs.node if rs else "",
        env_generation=rs.env_generation if rs else None,
        env_path=rs.env_path if rs else None,
        memory_used=rs.memory_used if rs else None,
        pids_used=rs.pids_used if rs else None,
        preview_public=rec.preview_public,
    )


def check_env(env: EnvSpec) -> None:
    """Refuse an environment that names packages and a whole spec at once, or whose
    spec's ``[run]`` table is malformed (the node would only find out at the next start)."""
    if env.packages and env.spec is not None:
        raise BadRequest("give packages or a spec, not both")
    if env.spec is not None:
        try:
            parse_run(env.spec)
        except RunSpecError as e:
            raise Invalid(f"env.spec: {e.message}", hint=e.hint) from None


def _node_spec(rec: Record, start: bool) -> NodeWorkspace:
    return NodeWorkspace(
        rec.id, rec.owner, rec.name, rec.env, rec.runtime, rec.size, rec.limits, start
    )


async def _make(
    state: ControlState, rec: Record, op: str, call: Awaitable[RuntimeState]
) -> Workspace:
    """Finish a create or fork whose record exists: a node that refused means nothing was
    made, so the record goes; one that did not answer may have made it, so it stays."""
    try:
        with state.metrics.operation(op):
            rs = await on_node(state, call, state.build_timeout)
    except NodeUnavailable as e:
        raise NodeUnavailable(
            e.message,
            hint=f"the record of {rec.name} is kept: start it again later, or delete it",
        ) from None
    except ApiError:
        await in_thread(state.records.delete, rec.id)
        raise
    return to_workspace(rec, rs)


@router.post("/v1/workspaces", status_code=201, responses=errors(400, 409))
async def create_workspace(body: CreateWorkspace, caller: Caller, state: State) -> Workspace:
    """Make a workspace of the caller's (within their quotas), started unless told not to."""
    check_env(body.env)
    draft = Record(
        id="",
        owner=caller.name,
        name=body.name,
        env=body.env,
        runtime=body.runtime,
        network=body.network,
        size=body.size,
        limits=body.limits,
        idle_timeout=body.idle_timeout,
        metadata=body.metadata,
        created_at=0.0,
        preview_public=body.preview_public,
    )
    rec = await in_thread(state.records.create, caller, draft)
    return await _make(state, rec, "create", state.node.create(_node_spec(rec, body.start)))


@router.get("/v1/workspaces")
async def list_workspaces(
    caller: Caller,
    state: State,
    owner: OwnerQuery = None,
    state_: Annotated[
        str | None, Query(alias="state", pattern="^(" + "|".join(STATES) + ")$")
    ] = None,
    label: Annotated[
        list[Annotated[str, Query(pattern=r"^[^=]{1,64}=.{0,512}$")]] | None,
        Query(description="KEY=VALUE: only workspaces with this metadata (repeatable)"),
    ] = None,
) -> list[Workspace]:
    """The caller's workspaces; an admin sees everyone's unless ``owner`` names one."""
    if owner is None and caller.admin:
        records = await in_thread(state.records.list, None)
    else:
        who = await in_thread(resolve_owner, state, caller, owner)
        records = await in_thread(state.records.list, who.name)
    wanted = dict(item.split("=", 1) for item in label or [])
    records = [r for r in records if all(r.metadata.get(k) == v for k, v in wanted.items())]
    states = await on_node(state, state.node.states([r.id for r in records])) if records else {}
    found = [to_workspace(r, states.get(r.id)) for r in records]
    return [w for w in found if state_ is None or w.state == state_]


@router.get("/v1/workspaces/{name}")
async def get_workspace(
    name: NamePath, caller: Caller, state: State, owner: OwnerQuery = None
) -> Workspace:
    """One workspace, with its state on its node."""
    rec = await owned(state, caller, name, owner)
    states = await on_node(state, state.node.states([rec.id]))
    return to_workspace(rec, states.get(rec.id))


@router.patch("/v1/workspaces/{name}")
async def update_workspace(
    name: NamePath, body: UpdateWorkspace, caller: Caller, state: State, owner: OwnerQuery = None
) -> Workspace:
    """Change limits (within quotas, applied by the node), idle timeout, metadata or
    whether previews are public."""
    rec = await owned(state, caller, name, owner)
    if body.limits is not None and body.limits != rec.limits:
        await on_node(state, state.node.set_limits(rec.id, body.limits))
    changed = await in_thread(
        lambda: state.records.update(
            rec,
            limits=body.limits,
            idle_timeout=body.idle_timeout,
            metadata=body.metadata,
            preview_public=body.preview_public,
        )
    )
    states = await on_node(state, state.node.states([rec.id]))
    return to_workspace(changed, states.get(rec.id))


@router.delete("/v1/workspaces/{name}")
async def delete_workspace(
    name: NamePath, caller: Caller, state: State, owner: OwnerQuery = None
) -> WorkspaceDeleted:
    """Delete a workspace with its disk and snapshots."""
    rec = await owned(state, caller, name, owner)
    with state.metrics.operation("delete"):
        await on_node(state, state.node.delete(rec.id))
    await in_thread(state.records.delete, rec.id)
    return WorkspaceDeleted(rec.name)


@router.post("/v1/workspaces/{name}/start", responses=errors(409))
async def start_workspace(
    name: NamePath, caller: Caller, state: State, owner: OwnerQuery = None
) -> Workspace:
    """Start a stopped workspace (one that runs already is a 409: a start that did
    nothing must not read as a restart)."""
    rec = await owned(state, caller, name, owner)
    now = (await on_node(state, state.node.states([rec.id]))).get(rec.id)
    if now is not None and now.state == "running":
        raise Conflict(
            f"workspace {rec.name!r} is running already",
            hint=f"stop it first to start it afresh: loft stop {rec.name}",
        )
    with state.metrics.operation("start"):
        rs = await on_node(state, state.node.start(rec.id))
    return to_workspace(rec, rs)


@router.post("/v1/workspaces/{name}/stop")
async def stop_workspace(
    name: NamePath,
    caller: Caller,
    state: State,
    owner: OwnerQuery = None,
    body: StopWorkspace | None = None,
) -> Workspace:
    """Stop a workspace (its disk is committed first); a VM is suspended, its memory
    kept for the next start, unless ``cold``."""
    rec = await owned(state, caller, name, owner)
    cold = body is not None and body.cold
    with state.metrics.operation("stop"):
        rs = await on_node(state, state.node.stop(rec.id, cold))
    return to_workspace(rec, rs)


@router.post("/v1/workspaces/{name}/restore")
async def restore_workspace(
    name: NamePath, body: RestoreWorkspace, caller: Caller, state: State, owner: OwnerQuery = None
) -> Restored:
    """Point the workspace's disk back at a snapshot; the answer names the automatic
    snapshot that undoes it."""
    rec = await owned(state, caller, name, owner)
    with state.metrics.operation("restore"):
        undo, restarted = await on_node(state, state.node.restore(rec.id, body.snapshot))
    return Restored(rec.name, body.snapshot, undo, restarted)


@router.post("/v1/workspaces/{name}/fork", status_code=201, responses=errors(409))
async def fork_workspace(
    name: NamePath, body: ForkWorkspace, caller: Caller, state: State, owner: OwnerQuery = None
) -> Workspace:
    """A new workspace of the caller's from this one (a snapshot of it, or its state now,
    running or not), within the caller's quotas."""
    src = await owned(state, caller, name, owner)
    if body.new_machine_id and not body.live:
        raise BadRequest(
            "a new machine-id is for a live fork (a booted fork keeps the file)",
            hint=f"add --live: loft fork {src.name} {body.name} --live --new-machine-id",
        )
    if body.live and src.runtime != "vm":
        raise BadRequest(
            f"--live forks a running VM; {src.name!r} is a {src.runtime}",
            hint=f"fork it without --live: loft fork {src.name} {body.name}",
        )
    draft = Record(
        id="",
        owner=caller.name,
        name=body.name,
        env=src.env,
        runtime=src.runtime,
        network=src.network,
        size=src.size,
        limits=src.limits,
        idle_timeout=src.idle_timeout,
        metadata=src.metadata if body.metadata is None else body.metadata,
        created_at=0.0,
    )
    rec = await in_thread(state.records.create, caller, draft)
    call = state.node.fork(
        src.id, body.snapshot, _node_spec(rec, body.start), body.live, body.new_machine_id
    )
    return await _make(state, rec, "fork", call)
