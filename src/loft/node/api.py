"""The node API: every operation, with its request and answer types (Firecracker's
``VmmAction`` habit). One table, shared by the servers (the disk service and the node
agent) and their client (the CLI), so a field renamed on one side is a type error on the
other.

The API is HTTP+JSON on root-only Unix sockets (``curl --unix-socket`` works, as with
Docker's and Firecracker's): the disk service's ``control.sock`` serves the volume
operations below, the node agent's ``agent.sock`` the workspace operations
(:mod:`loft.node.workspace_api`); ``GET /openapi.json`` on either describes both. Errors
are ``{"error", "hint"}`` with a 4xx status for what the caller can fix, 5xx otherwise.

Each volume operation says whether the volume it names must be served by this disk
service (``needs_served``): those are answered ``404`` for a volume the service does not
serve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loft.blockstore.api import VolumeInfo
from loft.node.operation import ErrorAnswer, Operation, Table, describe
from loft.node.workspace_api import WORKSPACE_API
from loft.telemetry import MeterReport

__all__ = [
    "API_VERSION",
    "DISK_API",
    "NODE_API",
    "OPERATIONS",
    "CommitAnswer",
    "CommitRequest",
    "ConnectionInfo",
    "ConnectionsAnswer",
    "ConnectionsRequest",
    "ErrorAnswer",
    "ImportAnswer",
    "ImportRequest",
    "InfoAnswer",
    "InfoRequest",
    "Operation",
    "PingAnswer",
    "PingRequest",
    "ReleaseAnswer",
    "ReleaseRequest",
    "RemoveAnswer",
    "RemoveRequest",
    "RestoreAnswer",
    "RestoreRequest",
    "SnapshotAnswer",
    "SnapshotRequest",
    "StatsAnswer",
    "StatsRequest",
    "match",
    "openapi",
    "operation_for",
    "path_exists",
]

API_VERSION = "1"


# --- requests and answers ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PingRequest:
    """Is the disk service alive, and which volumes has it opened?"""


@dataclass(frozen=True, slots=True)
class PingAnswer:
    """The volumes this service holds open (their leases are its)."""

    served: list[str]


@dataclass(frozen=True, slots=True)
class StatsRequest:
    """What this disk service counted of its work since it started."""


@dataclass(frozen=True, slots=True)
class StatsAnswer:
    """NBD requests (latency by command; bytes read and written) and chunk store
    operations (latency by operation; bytes up and down), totals since the service
    started (buckets: :data:`loft.telemetry.BUCKETS`)."""

    nbd: MeterReport
    chunk_store: MeterReport


@dataclass(frozen=True, slots=True)
class InfoRequest:
    """Describe a served volume, with its live working-copy counters."""

    volume: str


@dataclass(frozen=True)
class InfoAnswer(VolumeInfo):
    """A volume as the catalog has it, plus what the serving node holds of it."""

    served_by: str = field(kw_only=True)  # after VolumeInfo's fields with defaults


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """Commit what was written to a served volume so far and record it as a snapshot."""

    volume: str
    name: str


@dataclass(frozen=True, slots=True)
class SnapshotAnswer:
    """The snapshot recorded, and the head version it holds."""

    snapshot: str
    version: int


@dataclass(frozen=True, slots=True)
class CommitRequest:
    """Commit what was written to a served volume so far."""

    volume: str


@dataclass(frozen=True, slots=True)
class CommitAnswer:
    """The head version that now holds every write acknowledged before the request."""

    version: int


@dataclass(frozen=True, slots=True)
class ImportRequest:
    """Write a raw image file (a path on this node) into a served volume and commit."""

    volume: str
    path: str


@dataclass(frozen=True, slots=True)
class ImportAnswer:
    """What the import wrote and the head version that holds it."""

    bytes: int
    seconds: float
    version: int


@dataclass(frozen=True, slots=True)
class ReleaseRequest:
    """Commit a served volume and give up its lease (it is opened again on next use)."""

    volume: str


@dataclass(frozen=True, slots=True)
class ReleaseAnswer:
    """The volume released."""

    released: str


@dataclass(frozen=True, slots=True)
class RestoreRequest:
    """Point a served volume no client is using back at one of its snapshots (undoable:
    the replaced state is kept as an automatic snapshot)."""

    volume: str
    snapshot: str


@dataclass(frozen=True, slots=True)
class RestoreAnswer:
    """The new head version, and the automatic snapshot that undoes the restore."""

    version: int
    undo_snapshot: str


@dataclass(frozen=True, slots=True)
class RemoveRequest:
    """Delete a served volume no client is using (of it or of its snapshots)."""

    volume: str


@dataclass(frozen=True, slots=True)
class RemoveAnswer:
    """The volume removed."""

    removed: str


@dataclass(frozen=True, slots=True)
class ConnectionsRequest:
    """Who is connected to which export."""


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """One NBD client connection."""

    peer: str
    identity: str | None
    export: str | None
    tls: bool
    requests: int
    inflight: int
    #: when the client connected (seconds since the epoch)
    since: float


@dataclass(frozen=True, slots=True)
class ConnectionsAnswer:
    """Every live NBD connection."""

    connections: list[ConnectionInfo] = field(default_factory=list)


# --- operations ---------------------------------------------------------------------------

DISK_API = Table(
    Operation("ping", "GET", "/v1/ping", PingRequest, PingAnswer),
    Operation("connections", "GET", "/v1/connections", ConnectionsRequest, ConnectionsAnswer),
    Operation("stats", "GET", "/v1/stats", StatsRequest, StatsAnswer),
    Operation("info", "GET", "/v1/volumes/{volume}", InfoRequest, InfoAnswer, True),
    Operation(
        "snapshot", "POST", "/v1/volumes/{volume}/snapshots", SnapshotRequest, SnapshotAnswer, True
    ),
    Operation("commit", "POST", "/v1/volumes/{volume}/commit", CommitRequest, CommitAnswer, True),
    Operation("import", "POST", "/v1/volumes/{volume}/import", ImportRequest, ImportAnswer, True),
    Operation(
        "release", "POST", "/v1/volumes/{volume}/release", ReleaseRequest, ReleaseAnswer, True
    ),
    Operation(
        "restore", "POST", "/v1/volumes/{volume}/restore", RestoreRequest, RestoreAnswer, True
    ),
    Operation("remove", "DELETE", "/v1/volumes/{volume}", RemoveRequest, RemoveAnswer, True),
)
#: The whole node API: the disk service's operations and the node agent's.
NODE_API = DISK_API + WORKSPACE_API
OPERATIONS: tuple[Operation, ...] = NODE_API.operations


def operation_for(req: object) -> Operation:
    """The operation a request object belongs to."""
    op = NODE_API.find(req)
    if op is None:
        raise TypeError(f"{type(req).__name__} is not a node API request")
    return op


def match(method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
    """The disk service's operation at ``method path`` (see :meth:`Table.match`)."""
    return DISK_API.match(method, path)


def path_exists(path: str) -> bool:
    """True when some disk service operation has this path (with any method)."""
    return DISK_API.path_exists(path)


def openapi() -> dict[str, Any]:
    """The OpenAPI 3 description of the node API (served at ``GET /openapi.json``)."""
    return describe(
        NODE_API,
        "loft node API",
        API_VERSION,
        __doc__.split("\n\n")[1].replace("\n", " ") if __doc__ else "",
    )
