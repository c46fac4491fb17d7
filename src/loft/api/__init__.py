"""The control plane's HTTP API, as types: every request and answer of ``/v1``, shared by
the server (:mod:`loft.control`) and its clients (:mod:`loft.client`, the CLI), so a
field renamed on one side is a type error on the other (the node API's habit).

They are plain frozen dataclasses and the package imports nothing but the standard
library: a client decodes answers into them without pydantic; the server validates
requests with pydantic, reading the rules (strict JSON types, bounds) each field carries
(:mod:`loft.api._rules`). The OpenAPI description the server generates from them is
``docs/control-api.json``. Each name is imported from its module on first use
(:data:`_HOME`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: Each module of the API and the names it gives this package. A name is imported from
#: its module when first asked for, so a client pays only for the types it uses: the
#: CLI's ``loft snap`` builds 3 dataclasses, not all of them (most of what importing
#: the whole API costs is making its frozen dataclasses).
_HOME: dict[str, tuple[str, ...]] = {
    "env": ("EnvGeneration", "EnvRollback", "EnvState"),
    "errors": ("ErrorAnswer",),
    "execs": ("MAX_EXEC_STDIN", "MAX_EXEC_TIMEOUT", "ExecEvent", "ExecRequest"),
    "files": ("FILE_PATH_PATTERN", "MAX_FILE_BYTES", "FileDeleted", "FileWritten"),
    "health": ("Health",),
    "preview": ("CreatePreview", "PreviewAccess"),
    "snapshots": ("SNAPSHOT_NAME_PATTERN", "CreateSnapshot", "Snapshot", "SnapshotDeleted"),
    "tokens": ("CreateToken", "Token", "TokenCreated"),
    "users": (
        "USER_NAME_PATTERN",
        "CreateUser",
        "Quotas",
        "UpdateUser",
        "Usage",
        "User",
        "UserCreated",
    ),
    "workspaces": (
        "DEFAULT_IDLE_TIMEOUT",
        "DEFAULT_SIZE",
        "LIMIT_BOUNDS",
        "MAX_SIZE",
        "MIN_SIZE",
        "STATES",
        "WORKSPACE_NAME_MAX",
        "WORKSPACE_NAME_PATTERN",
        "CreateWorkspace",
        "EnvSpec",
        "ForkWorkspace",
        "Limits",
        "Restored",
        "RestoreWorkspace",
        "StopWorkspace",
        "UpdateWorkspace",
        "Workspace",
        "WorkspaceDeleted",
    ),
}
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}

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


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
