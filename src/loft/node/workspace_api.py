"""The node agent's operations (``agent.sock``): workspaces, their snapshots and
environments, exec/shell/forward sessions, and the node's capacity.

Workspaces are named in paths by their id: the control plane writes their records
(names are per owner, and its business) and calls the node with the id; the node keeps
only their runtime state. Sizes and memory are bytes; CPUs a number.
Operations flagged ``needs_running`` are refused with 409 unless the workspace runs;
``stream`` ones answer ``101 Switching Protocols`` and then speak frames
(:mod:`loft.node.frames`): exec and shell carry standard streams, resizes and the exit
status; forward keeps its listener open for as long as the connection lasts; connect
carries one TCP connection into the workspace, its bytes as they are (no frames).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loft.node.operation import Operation, Table, Upgraded
from loft.telemetry import MeterReport

__all__ = [
    "AGENT_SOCKET",
    "SHELL",
    "SUSPENDED",
    "WORKSPACE_API",
    "ActivityAnswer",
    "ActivityRequest",
    "CommitLagsAnswer",
    "CommitLagsRequest",
    "ConnectRequest",
    "CreateWorkspaceRequest",
    "DiskStatsAnswer",
    "DiskStatsRequest",
    "DrainAnswer",
    "DrainRequest",
    "EnvAnswer",
    "ExecWorkspaceRequest",
    "ForkWorkspaceRequest",
    "ForwardRequest",
    "GetWorkspaceRequest",
    "ListSnapshotsRequest",
    "ListWorkspacesRequest",
    "LogsRequest",
    "NodeAnswer",
    "NodeRequest",
    "RemoveSnapshotRequest",
    "RemoveWorkspaceRequest",
    "RemovedAnswer",
    "RestoreWorkspaceAnswer",
    "RestoreWorkspaceRequest",
    "RollbackEnvRequest",
    "SnapAnswer",
    "SnapWorkspaceRequest",
    "SnapshotRemovedAnswer",
    "SnapshotsAnswer",
    "StartWorkspaceRequest",
    "StopWorkspaceRequest",
    "SwitchEnvRequest",
    "VolumeLag",
    "WorkspaceActivity",
    "WorkspaceInfo",
    "WorkspaceSnapshot",
    "WorkspacesAnswer",
]

#: The agent's socket, beside the disk service's sockets in the data dir's ``run/``.
AGENT_SOCKET = "agent.sock"
#: The phase a stopped VM shows while it has a suspend image (here or in the chunk
#: store): not running, and its next start resumes it.
SUSPENDED = "suspended"
#: What a shell session runs (``loft shell``, the API's terminal): a login bash where
#: the environment has one, else sh.
SHELL = ("/bin/sh", "-c", "if command -v bash >/dev/null; then exec bash -l; fi; exec sh -l")


# --- answers --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkspaceInfo:
    """A workspace: its record, its runtime state, and its live use while it runs."""

    id: str
    name: str
    owner: str
    #: the catalog's phase, or ``suspended`` for a stopped VM that keeps its memory
    phase: str
    desired: str
    node: str | None
    runtime: str
    network: str
    size: int
    memory: int
    cpus: float
    pids: int
    volume: str
    ids_base: int
    spec_source: str
    env_path: str | None
    env_generation: int | None
    created_at: float
    #: the host pid of its init (0 when it does not run)
    pid: int = 0
    #: bytes of memory and tasks in use now (None when it does not run)
    memory_used: int | None = None
    pids_used: int | None = None


@dataclass(frozen=True, slots=True)
class WorkspacesAnswer:
    """Every workspace, by name."""

    workspaces: list[WorkspaceInfo] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RemovedAnswer:
    """The workspace removed, with its volume, snapshots and environment profile."""

    removed: str


@dataclass(frozen=True, slots=True)
class SnapAnswer:
    """The snapshot taken; for a running workspace, how long its writers were held
    (``pause_ms``: filesystem frozen) and how long the whole snapshot took."""

    snapshot: str
    version: int
    running: bool
    pause_ms: float
    total_ms: float


@dataclass(frozen=True, slots=True)
class WorkspaceSnapshot:
    """One snapshot of a workspace's volume, and the environment it was taken with."""

    name: str
    version: int
    created_at: float
    auto: bool
    env_path: str | None = None


@dataclass(frozen=True, slots=True)
class SnapshotsAnswer:
    """A workspace's snapshots, oldest first."""

    snapshots: list[WorkspaceSnapshot] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SnapshotRemovedAnswer:
    """The snapshot removed, with its memory image (a VM's)."""

    snapshot: str


@dataclass(frozen=True, slots=True)
class RestoreWorkspaceAnswer:
    """The restore done; ``undo_snapshot`` holds the state it replaced (restore it to undo)."""

    snapshot: str
    undo_snapshot: str
    version: int
    restarted: bool


@dataclass(frozen=True, slots=True)
class EnvAnswer:
    """The workspace's environment generation now current (used from its next start)."""

    generation: int
    env_path: str
    running: bool


@dataclass(frozen=True, slots=True)
class NodeAnswer:
    """This node: what it commits to workspaces and has committed, its data disk, and
    whether its disk service answers."""

    node: str
    memory_capacity: int
    memory_committed: int
    cpus_capacity: float
    cpus_committed: float
    workspaces: int
    running: int
    disk_free: int
    disk_reserve: int
    disk_service: bool


@dataclass(frozen=True, slots=True)
class WorkspaceActivity:
    """When (epoch seconds) a workspace last had a session of the node's own in use:
    now, while one is open (an exec, a shell, a forwarded connection, a connect)."""

    id: str
    at: float


@dataclass(frozen=True, slots=True)
class ActivityAnswer:
    """Every workspace of the node used since the agent started."""

    workspaces: list[WorkspaceActivity] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class VolumeLag:
    """Seconds a running workspace's volume's oldest flushed write has waited for its
    commit to the chunk store (0 when everything flushed is committed)."""

    volume: str
    seconds: float


@dataclass(frozen=True, slots=True)
class CommitLagsAnswer:
    """The commit lag of every running workspace's volume on this node."""

    volumes: list[VolumeLag] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DrainAnswer:
    """The workspaces stopped (they start again when the node next starts)."""

    stopped: list[str] = field(default_factory=list)


# --- requests -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListWorkspacesRequest:
    """List the workspaces."""


@dataclass(frozen=True, slots=True)
class CreateWorkspaceRequest:
    """Make the workspace whose record (written by the control plane) has id
    ``workspace``: a fork of the template volume of its size, an environment built from
    its spec, and start it unless ``start`` is false. All or nothing."""

    workspace: str
    start: bool = True


@dataclass(frozen=True, slots=True)
class GetWorkspaceRequest:
    """Describe a workspace."""

    workspace: str


@dataclass(frozen=True, slots=True)
class StartWorkspaceRequest:
    """Start a stopped workspace (its environment's current generation)."""

    workspace: str


@dataclass(frozen=True, slots=True)
class StopWorkspaceRequest:
    """Stop a workspace: its processes (TERM, then KILL), its filesystem unmounted and
    its volume committed. A VM is suspended (its memory kept, a start resumes it)
    unless ``cold``: then it shuts down, and a suspended one loses its memory."""

    workspace: str
    cold: bool = False


@dataclass(frozen=True, slots=True)
class RemoveWorkspaceRequest:
    """Remove a workspace (stopped first): its volume, snapshots and profile."""

    workspace: str


@dataclass(frozen=True, slots=True)
class SnapWorkspaceRequest:
    """Snapshot a workspace; a running one is frozen (FIFREEZE) only while the volume
    is committed and recorded. ``snapshot`` defaults to a time stamp. A running VM's
    snapshot holds its memory too, unless not ``memory``."""

    workspace: str
    snapshot: str = ""
    memory: bool = True


@dataclass(frozen=True, slots=True)
class ListSnapshotsRequest:
    """List a workspace's snapshots."""

    workspace: str


@dataclass(frozen=True, slots=True)
class RemoveSnapshotRequest:
    """Delete one snapshot of a workspace: its memory image (a VM's; 409 while another
    image or a VM maps it), the volume's snapshot (forks made from it keep their data)
    and its record, so the environment it was taken with is no GC root through it."""

    workspace: str
    snapshot: str


@dataclass(frozen=True, slots=True)
class RestoreWorkspaceRequest:
    """Point a workspace back at one of its snapshots, with the environment it was taken
    with (a running workspace is stopped and started again). Undoable."""

    workspace: str
    snapshot: str


@dataclass(frozen=True, slots=True)
class ForkWorkspaceRequest:
    """Make the workspace whose record has id ``new`` (written by the control plane) an
    independent copy of a snapshot of this one (taken now, on the fly, unless
    ``snapshot`` names one)."""

    workspace: str
    new: str
    snapshot: str = ""
    start: bool = True
    #: a running VM's copy from its memory (or from ``snapshot``'s memory)
    live: bool = False
    #: with ``live``: a new ``/etc/machine-id`` in the copy
    new_machine_id: bool = False


@dataclass(frozen=True, slots=True)
class SwitchEnvRequest:
    """Lock and build a new environment for the workspace from ``packages`` or ``spec``
    (a loft.toml or loft.lock text) and make it its profile's new generation."""

    workspace: str
    packages: list[str] = field(default_factory=list)
    spec: str = ""
    spec_source: str = ""


@dataclass(frozen=True, slots=True)
class RollbackEnvRequest:
    """Make the previous generation (or ``generation``) of the workspace's environment
    current again."""

    workspace: str
    generation: int | None = None


@dataclass(frozen=True, slots=True)
class ExecWorkspaceRequest:
    """Run ``argv`` in a running workspace as ``user`` (a uid inside; default runner),
    in ``cwd``, with ``env`` (NAME=VALUE) added; ``tty`` on a new terminal of ``rows``
    by ``cols`` (a shell). Frames follow."""

    workspace: str
    argv: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str | None = None
    user: int = 1000
    tty: bool = False
    rows: int = 24
    cols: int = 80


@dataclass(frozen=True, slots=True)
class ForwardRequest:
    """Expose ``port`` of the workspace's loopback on the host for as long as this
    connection lasts: as a 0600 Unix socket (root only), or with ``local_port`` as a
    TCP port on 127.0.0.1 (reachable by every local account). A READY frame says where."""

    workspace: str
    port: int
    local_port: int | None = None


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """One TCP connection to ``port`` on the workspace's own loopback, carried by this
    connection after the switch (502 when nothing listens there)."""

    workspace: str
    port: int


@dataclass(frozen=True, slots=True)
class LogsRequest:
    """The output of the workspace's ``[run] command`` (kept across starts, bounded):
    the last ``tail`` bytes as STDOUT frames, then, with ``follow``, what it writes as it
    comes, until the client closes. READY marks the end of what was kept."""

    workspace: str
    tail: int = 65536
    follow: bool = False


@dataclass(frozen=True, slots=True)
class ActivityRequest:
    """When each workspace last had a session of the node's own in use."""


@dataclass(frozen=True, slots=True)
class CommitLagsRequest:
    """The commit lag of every running workspace's volume."""


@dataclass(frozen=True, slots=True)
class DiskStatsAnswer:
    """The disk service's totals since it started: NBD requests and chunk store
    operations (latency by operation, bytes by direction)."""

    nbd: MeterReport
    chunk_store: MeterReport


@dataclass(frozen=True, slots=True)
class DiskStatsRequest:
    """What this node's disk service counted of its NBD requests and chunk store
    operations (the disk service's own answer, relayed)."""


@dataclass(frozen=True, slots=True)
class NodeRequest:
    """Describe this node's capacity and commitments."""


@dataclass(frozen=True, slots=True)
class DrainRequest:
    """Stop every workspace cleanly, remembering which ran (they start again when the
    agent next starts): what ``loft up`` asks before it stops."""


# --- operations -------------------------------------------------------------------------

_W = "/v1/workspaces/{workspace}"


def _op(name: str, method: str, path: str, request: type, answer: type, **flags: bool) -> Operation:
    return Operation(name, method, path, request, answer, socket=AGENT_SOCKET, **flags)


WORKSPACE_API = Table(
    _op("workspaces", "GET", "/v1/workspaces", ListWorkspacesRequest, WorkspacesAnswer),
    _op("new", "POST", "/v1/workspaces", CreateWorkspaceRequest, WorkspaceInfo),
    _op("workspace", "GET", _W, GetWorkspaceRequest, WorkspaceInfo),
    _op("start", "POST", f"{_W}/start", StartWorkspaceRequest, WorkspaceInfo),
    _op("stop", "POST", f"{_W}/stop", StopWorkspaceRequest, WorkspaceInfo),
    _op("rm", "DELETE", _W, RemoveWorkspaceRequest, RemovedAnswer),
    _op("snap", "POST", f"{_W}/snapshots", SnapWorkspaceRequest, SnapAnswer),
    _op("snaps", "GET", f"{_W}/snapshots", ListSnapshotsRequest, SnapshotsAnswer),
    _op(
        "snap_rm",
        "DELETE",
        f"{_W}/snapshots/{{snapshot}}",
        RemoveSnapshotRequest,
        SnapshotRemovedAnswer,
    ),
    _op("restore", "POST", f"{_W}/restore", RestoreWorkspaceRequest, RestoreWorkspaceAnswer),
    _op("fork", "POST", f"{_W}/fork", ForkWorkspaceRequest, WorkspaceInfo),
    _op("env_switch", "POST", f"{_W}/env", SwitchEnvRequest, EnvAnswer),
    _op("env_rollback", "POST", f"{_W}/env/rollback", RollbackEnvRequest, EnvAnswer),
    _op(
        "exec",
        "POST",
        f"{_W}/exec",
        ExecWorkspaceRequest,
        Upgraded,
        needs_running=True,
        stream=True,
    ),
    _op(
        "forward",
        "POST",
        f"{_W}/forward",
        ForwardRequest,
        Upgraded,
        needs_running=True,
        stream=True,
    ),
    _op(
        "connect",
        "POST",
        f"{_W}/connect",
        ConnectRequest,
        Upgraded,
        needs_running=True,
        stream=True,
    ),
    _op("logs", "POST", f"{_W}/logs", LogsRequest, Upgraded, stream=True),
    _op("activity", "GET", "/v1/node/activity", ActivityRequest, ActivityAnswer),
    _op("commit_lags", "GET", "/v1/node/commit-lags", CommitLagsRequest, CommitLagsAnswer),
    _op("disk_stats", "GET", "/v1/node/disk-stats", DiskStatsRequest, DiskStatsAnswer),
    _op("node", "GET", "/v1/node", NodeRequest, NodeAnswer),
    _op("drain", "POST", "/v1/node/drain", DrainRequest, DrainAnswer),
)
