"""Workspaces (``/v1/workspaces``): create, list, read, change, delete, start, stop,
restore and fork. Sizes and memory are bytes; times are seconds since the epoch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal

from loft.api._rules import FORBID_EXTRA, Bool, Float, Int, Rule, Str

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_SIZE",
    "PACKAGE_PATTERN",
    "STATES",
    "WORKSPACE_NAME_PATTERN",
    "CreateWorkspace",
    "EnvSpec",
    "ForkWorkspace",
    "Limits",
    "Metadata",
    "RestoreWorkspace",
    "Restored",
    "Runtime",
    "UpdateWorkspace",
    "Workspace",
    "WorkspaceDeleted",
    "WorkspaceName",
]

#: A workspace name: a DNS label (it becomes part of preview host names), unique per user.
WORKSPACE_NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
WorkspaceName = Annotated[str, Rule(pattern=WORKSPACE_NAME_PATTERN)]
#: A Debian package name (Debian policy 5.6.1), optionally ``=VERSION``.
PACKAGE_PATTERN = r"^[a-z0-9][a-z0-9+.-]{1,127}(=[A-Za-z0-9.+~:-]{1,128})?$"
#: What a node reports a workspace's runtime to be in (``unknown``: no node answered).
STATES = ("creating", "running", "stopped", "error", "unknown")
#: A new workspace's disk, unless told (the volume is thin: this is only its ceiling).
DEFAULT_SIZE = 16 << 30
#: Seconds a workspace may go unused before it sleeps, unless told (0 is never).
DEFAULT_IDLE_TIMEOUT = 900.0

Runtime = Literal["sandbox", "vm"]
#: Free-form labels: at most 32, keys up to 64 and values up to 512 characters.
Metadata = Annotated[
    dict[
        Annotated[str, Rule(min_length=1, max_length=64)],
        Annotated[str, Rule(max_length=512)],
    ],
    Rule(max_length=32),
]


@dataclass(frozen=True, slots=True)
class Limits:
    """A workspace's resource limits: memory in bytes, CPUs as a share of cores."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    memory: Annotated[int, Rule(ge=64 << 20, le=1 << 42)] = 1 << 30
    cpus: Annotated[float, Rule(ge=0.05, le=256)] = 1.0


@dataclass(frozen=True, slots=True)
class EnvSpec:
    """A workspace's software: Debian packages, or a whole ``loft.toml`` (its text),
    not both. Neither means the base environment."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    packages: Annotated[
        list[Annotated[str, Rule(pattern=PACKAGE_PATTERN)]], Rule(max_length=512)
    ] = field(default_factory=list)
    spec: Annotated[str, Rule(max_length=64 * 1024)] | None = None


@dataclass(frozen=True, slots=True)
class CreateWorkspace:
    """A new workspace owned by the caller (its quotas apply)."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    name: WorkspaceName
    env: EnvSpec = field(default_factory=EnvSpec)
    size: Annotated[int, Rule(ge=64 << 20, le=1 << 50)] = DEFAULT_SIZE
    limits: Limits = field(default_factory=Limits)
    runtime: Runtime = "sandbox"
    #: seconds without a terminal, exec, forwarded connection or proxied request before
    #: it is snapshotted and stopped (0: never)
    idle_timeout: Annotated[float, Rule(ge=0, le=30 * 86400)] = DEFAULT_IDLE_TIMEOUT
    metadata: Metadata = field(default_factory=dict)
    #: start it once created
    start: Annotated[bool, Rule()] = True
    #: anyone may open its previews (otherwise only its owner, and admins)
    preview_public: Annotated[bool, Rule()] = False


@dataclass(frozen=True, slots=True)
class Workspace:
    """A workspace: its record (kept by the control plane) and its runtime state (as
    its node reports it)."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    id: Str
    name: Str
    owner: Str
    state: Str
    runtime: Str
    size: Int
    limits: Limits
    idle_timeout: Float
    metadata: dict[Str, Str]
    env: EnvSpec
    created_at: Float
    #: the node it runs on ("" when the node did not say)
    node: Str = ""
    #: anyone may open its previews
    preview_public: Bool = False


@dataclass(frozen=True, slots=True)
class UpdateWorkspace:
    """Change a workspace's limits, idle timeout, metadata or preview setting; a field
    left out is kept."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    limits: Limits | None = None
    idle_timeout: Annotated[float, Rule(ge=0, le=30 * 86400)] | None = None
    metadata: Metadata | None = None
    preview_public: Annotated[bool, Rule()] | None = None


@dataclass(frozen=True, slots=True)
class ForkWorkspace:
    """A new workspace of the caller's from this one: from a snapshot, or (no snapshot
    named) from its state now, running or not."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    name: WorkspaceName
    snapshot: Annotated[str, Rule(min_length=1, max_length=128)] | None = None
    start: Annotated[bool, Rule()] = True
    metadata: Metadata | None = None


@dataclass(frozen=True, slots=True)
class RestoreWorkspace:
    """Point a workspace's disk back at one of its snapshots (undoable)."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    snapshot: Annotated[str, Rule(min_length=1, max_length=128)]


@dataclass(frozen=True, slots=True)
class Restored:
    """The restore done, and the automatic snapshot that undoes it."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    workspace: Str
    snapshot: Str
    undo_snapshot: Str


@dataclass(frozen=True, slots=True)
class WorkspaceDeleted:
    """The workspace deleted, with its disk and snapshots."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    deleted: Str
