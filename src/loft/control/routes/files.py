"""``/v1/workspaces/{name}/files?path=``: read, write, delete one file (bounded)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from loft.api import FILE_PATH_PATTERN, MAX_FILE_BYTES, FileDeleted, FileWritten
from loft.control.deps import Caller, OwnerQuery, State, on_node, owned
from loft.control.routes import ERRORS, RAW_ERRORS
from loft.control.routes.workspaces import NamePath

__all__ = ["router"]

router = APIRouter(tags=["files"], responses=ERRORS)
PathQuery = Annotated[
    str, Query(pattern=FILE_PATH_PATTERN, description="an absolute path in the workspace")
]
_BINARY = {"schema": {"type": "string", "format": "binary"}}


@router.get(
    "/v1/workspaces/{name}/files",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": _BINARY}, "description": "The bytes"},
        **RAW_ERRORS,
    },
)
async def read_file(
    name: NamePath, path: PathQuery, caller: Caller, state: State, owner: OwnerQuery = None
) -> Response:
    """A file's bytes (up to 16 MiB)."""
    rec = await owned(state, caller, name, owner)
    data = await on_node(state, state.node.read_file(rec.id, path, MAX_FILE_BYTES))
    return Response(data, media_type="application/octet-stream")


@router.put(
    "/v1/workspaces/{name}/files",
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/octet-stream": _BINARY}}
    },
)
async def write_file(
    name: NamePath,
    path: PathQuery,
    request: Request,
    caller: Caller,
    state: State,
    owner: OwnerQuery = None,
) -> FileWritten:
    """Create or replace a file with the request's body (up to 16 MiB)."""
    rec = await owned(state, caller, name, owner)
    data = await request.body()
    await on_node(state, state.node.write_file(rec.id, path, data))
    return FileWritten(path, len(data))


@router.delete("/v1/workspaces/{name}/files")
async def delete_file(
    name: NamePath, path: PathQuery, caller: Caller, state: State, owner: OwnerQuery = None
) -> FileDeleted:
    """Remove a file."""
    rec = await owned(state, caller, name, owner)
    await on_node(state, state.node.delete_file(rec.id, path))
    return FileDeleted(path)
