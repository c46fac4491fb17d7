"""The control plane's HTTP API, as types: every request and answer of ``/v1``, shared by
the server (:mod:`loft.control`) and its clients (:mod:`loft.client`, the CLI), so a
field renamed on one side is a type error on the other (the node API's habit).

They are plain frozen dataclasses and the package imports nothing but the standard
library: a client decodes answers into them without pydantic; the server validates
requests with pydantic, reading the rules (strict JSON types, bounds) each field carries
(:mod:`loft.api._rules`). The OpenAPI description the server generates from them is
``docs/control-api.json``.
"""

from __future__ import annotations

from loft.api.env import EnvGeneration, EnvRollback, EnvState
from loft.api.errors import ErrorAnswer
from loft.api.execs import MAX_EXEC_STDIN, MAX_EXEC_TIMEOUT, ExecEvent, ExecRequest
from loft.api.files import FILE_PATH_PATTERN, MAX_FILE_BYTES, FileDeleted, FileWritten
from loft.api.health import Health
from loft.api.preview import CreatePreview, PreviewAccess
from loft.api.snapshots import SNAPSHOT_NAME_PATTERN, CreateSnapshot, Snapshot, SnapshotDeleted
from loft.api.tokens import CreateToken, Token, TokenCreated
from loft.api.users import (
    USER_NAME_PATTERN,
    CreateUser,
    Quotas,
    UpdateUser,
    Usage,
    User,
    UserCreated,
)
from loft.api.workspaces import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_SIZE,
    LIMIT_BOUNDS,
    MAX_SIZE,
    MIN_SIZE,
    STATES,
    WORKSPACE_NAME_MAX,
    WORKSPACE_NAME_PATTERN,
    CreateWorkspace,
    EnvSpec,
    ForkWorkspace,
    Limits,
    Restored,
    RestoreWorkspace,
    StopWorkspace,
    UpdateWorkspace,
    Workspace,
    WorkspaceDeleted,
)

#: The version in every path (``/v1/...``).
API_VERSION = "1"

__all__ = [
    "API_VERSION",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_SIZE",
    "FILE_PATH_PATTERN",
    "LIMIT_BOUNDS",
    "MAX_EXEC_STDIN",
    "MAX_EXEC_TIMEOUT",
    "MAX_FILE_BYTES",
    "MAX_SIZE",
    "MIN_SIZE",
    "SNAPSHOT_NAME_PATTERN",
    "STATES",
    "USER_NAME_PATTERN",
    "WORKSPACE_NAME_MAX",
    "WORKSPACE_NAME_PATTERN",
    "CreatePreview",
    "CreateSnapshot",
    "CreateToken",
    "CreateUser",
    "CreateWorkspace",
    "EnvGeneration",
    "EnvRollback",
    "EnvSpec",
    "EnvState",
    "ErrorAnswer",
    "ExecEvent",
    "ExecRequest",
    "FileDeleted",
    "FileWritten",
    "ForkWorkspace",
    "Health",
    "Limits",
    "PreviewAccess",
    "Quotas",
    "RestoreWorkspace",
    "Restored",
    "Snapshot",
    "SnapshotDeleted",
    "StopWorkspace",
    "Token",
    "TokenCreated",
    "UpdateUser",
    "UpdateWorkspace",
    "Usage",
    "User",
    "UserCreated",
    "Workspace",
    "WorkspaceDeleted",
]
