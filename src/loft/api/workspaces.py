"""Workspaces (``/v1/workspaces``): create, list, read, change, delete, start, stop,
restore and fork. Sizes and memory are bytes; times are seconds since the epoch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal

from loft.api._rules import FORBID_EXTRA, Bool, Float, Int, Rule, Str

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_SIZE",
    "LIMIT_BOUNDS",
    "MAX_SIZE",
    "MAX_SPEC",
    "MIN_SIZE",
    "PACKAGE_PATTERN",
    "STATES",
    "WORKSPACE_NAME_MAX",
    "WORKSPACE_NAME_PATTERN",
    "CreateWorkspace",
    "EnvSpec",
    "ForkWorkspace",
    "Limits",
    "Metadata",
    "Network",
    "RestoreWorkspace",
    "Restored",
    "Runtime",
    "StopWorkspace",
    "UpdateWorkspace",
    "Workspace",
    "WorkspaceDeleted",
    "WorkspaceName",
]

#: A workspace name, unique per user: 1-40 lowercase letters, digits and single ``-``,
#: starting with a letter, not ending with ``-`` (DNS-safe: it may become part of a host
#: name; ``--`` separates a preview host's port from the workspace).
WORKSPACE_NAME_PATTERN = r"^[a-z](?:-?[a-z0-9])*$"
#: The longest workspace name.
WORKSPACE_NAME_MAX = 40
WorkspaceName = Annotated[str, Rule(pattern=WORKSPACE_NAME_PATTERN, max_length=WORKSPACE_NAME_MAX)]
#: A Debian package name (Debian policy 5.6.1), optionally ``=VERSION``.
PACKAGE_PATTERN = r"^[a-z0-9][a-z0-9+.-]{1,127}(=[A-Za-z0-9.+~:-]{1,128})?$"
#: What a node reports a workspace's runtime to be in (``suspended``: a VM stopped with
#: its memory kept, which its next start resumes; ``recovering``: its storage broke and
#: it is being restarted from its last flush; ``unknown``: no node answered).
STATES = (
    "creating",
    "starting",
    "running",
    "stopping",
    "stopped",
    "suspended",
    "recovering",
    "error",
    "unknown",
)
#: The largest spec text: a loft.lock of a large environment (~130 artefacts is 110 KiB)
#: with room to spare, within a JSON request's 1 MiB.
MAX_SPEC = 768 << 10
#: A new workspace's disk, unless told (the volume is thin: this is only its ceiling).
DEFAULT_SIZE = 16 << 30
#: Seconds a workspace may go unused before it sleeps, unless told (0 is never).
DEFAULT_IDLE_TIMEOUT = 900.0

#: A workspace's disk: at least 64 MiB (a filesystem with room for a home), at most 1 PiB.
MIN_SIZE, MAX_SIZE = 64 << 20, 1 << 50
#: Each limit's (least, most), the node's own bounds: memory in bytes (16 MiB runs a
#: shell; the kernel's cgroup accounting is not meaningful below), CPUs, tasks.
LIMIT_BOUNDS: dict[str, tuple[float, float]] = {
    "memory": (16 << 20, 1 << 42),
    "cpus": (0.01, 1024),
    "pids": (16, 1 << 22),
}

Runtime = Literal["sandbox", "vm"]
#: ``none``: loopback only; ``nat``: outbound through a userspace stack, behind the
#: node's egress policy.
Network = Literal["none", "nat"]
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
    """A workspace's resource limits: memory in bytes, CPUs as a share of cores, and
    tasks (processes and threads)."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    memory: Annotated[int, Rule(ge=LIMIT_BOUNDS["memory"][0], le=LIMIT_BOUNDS["memory"][1])] = (
        1 << 30
    )
    cpus: Annotated[float, Rule(ge=LIMIT_BOUNDS["cpus"][0], le=LIMIT_BOUNDS["cpus"][1])] = 1.0
    pids: Annotated[int, Rule(ge=LIMIT_BOUNDS["pids"][0], le=LIMIT_BOUNDS["pids"][1])] = 1024


@dataclass(frozen=True, slots=True)
class EnvSpec:
    """A workspace's software: Debian packages, or a whole ``loft.toml`` (its text),
    not both. Neither means the base environment."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    packages: Annotated[
        list[Annotated[str, Rule(pattern=PACKAGE_PATTERN)]], Rule(max_length=512)
    ] = field(default_factory=list)
    spec: Annotated[str, Rule(max_length=MAX_SPEC)] | None = None


@dataclass(frozen=True, slots=True)
class CreateWorkspace:
    """A new workspace owned by the caller (its quotas apply)."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    name: WorkspaceName
    env: EnvSpec = field(default_factory=EnvSpec)
    size: Annotated[int, Rule(ge=MIN_SIZE, le=MAX_SIZE)] = DEFAULT_SIZE
    limits: Limits = field(default_factory=Limits)
    runtime: Runtime = "sandbox"
    network: Network = "none"
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
    network: Str
    size: Int
    limits: Limits
    idle_timeout: Float
    metadata: dict[Str, Str]
    env: EnvSpec
    created_at: Float
    #: the node it runs on ("" when the node did not say)
    node: Str = ""
    #: its environment's current generation, as its node reports it
    env_generation: Int | None = None
    #: the store path of that generation (mounted at /usr from the next start)
    env_path: Str | None = None
    #: bytes of memory and tasks in use now (a single workspace's read, while it runs)
    memory_used: Int | None = None
    pids_used: Int | None = None
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
    #: a VM only: the new workspace runs on from the source's memory (from the named
    #: snapshot's, or from a snapshot of the running VM taken now), same processes
    live: Annotated[bool, Rule()] = False
    #: with ``live``: a new ``/etc/machine-id`` in the copy (software keyed on it sees a
    #: new machine)
    new_machine_id: Annotated[bool, Rule()] = False


@dataclass(frozen=True, slots=True)
class StopWorkspace:
    """How to stop a workspace: a VM is suspended (its memory kept, the next start
    resumes it where it was) unless ``cold``, which shuts it down (and drops the memory
    of one suspended already). A sandbox's stop is always cold."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    cold: Annotated[bool, Rule()] = False


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
    #: it ran, so it was stopped and started again around the restore
    restarted: Bool = False


@dataclass(frozen=True, slots=True)
class WorkspaceDeleted:
    """The workspace deleted, with its disk and snapshots."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    deleted: Str
