"""The node API: every operation, with its request and answer types (Firecracker's
``VmmAction`` habit). One table, shared by the server (the disk service) and its client
(the CLI), so a field renamed on one side is a type error on the other.

The API is HTTP+JSON on a root-only Unix socket (``curl --unix-socket`` works, as with
Docker's and Firecracker's); ``GET /openapi.json`` describes it. Errors are
``{"error", "hint"}`` with a 4xx status for what the caller can fix, 5xx otherwise.

Each operation says whether the volume it names must be served by this disk service
(``needs_served``): those are answered ``404`` for a volume the service does not serve.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from loft.blockstore.api import VolumeInfo
from loft.node.jsoncodec import schema

__all__ = [
    "API_VERSION",
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


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """Why a request failed, and what to do about it."""

    error: str
    hint: str | None = None


# --- operations ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation: its HTTP method and path (``{volume}`` is a path parameter), its
    request and answer types, and whether the volume must be served here."""

    name: str
    method: str
    path: str
    request: type
    answer: type
    needs_served: bool

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)

    def url(self, req: object) -> str:
        """The request path with its parameters filled in from ``req``."""
        from urllib.parse import quote

        return re.sub(
            r"\{(\w+)\}", lambda m: quote(str(getattr(req, m.group(1))), safe=""), self.path
        )


OPERATIONS: tuple[Operation, ...] = (
    Operation("ping", "GET", "/v1/ping", PingRequest, PingAnswer, False),
    Operation(
        "connections", "GET", "/v1/connections", ConnectionsRequest, ConnectionsAnswer, False
    ),
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

_BY_REQUEST = {op.request: op for op in OPERATIONS}
_PATTERNS = [
    (op, re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(op.path)) + "$"))
    for op in OPERATIONS
]


def operation_for(req: object) -> Operation:
    """The operation a request object belongs to."""
    return _BY_REQUEST[type(req)]


def match(method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
    """The operation at ``method path`` and its (still quoted) path parameters, or None
    (the caller tells 404 from 405 with :func:`path_exists`)."""
    for op, pattern in _PATTERNS:
        m = pattern.match(path)
        if m and op.method == method:
            return op, m.groupdict()
    return None


def path_exists(path: str) -> bool:
    """True when some operation has this path (with any method)."""
    return any(pattern.match(path) for _, pattern in _PATTERNS)


def openapi() -> dict[str, Any]:
    """The OpenAPI 3 description of the node API (served at ``GET /openapi.json``)."""
    defs: dict[str, Any] = {}
    error = {
        "description": "refused or failed",
        "content": {"application/json": {"schema": schema(ErrorAnswer, defs)}},
    }
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        params = op.path_params
        schema(op.request, defs)
        entry: dict[str, Any] = {
            "operationId": op.name,
            "summary": (op.request.__doc__ or "").strip(),
            "parameters": [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in params
            ],
            "responses": {
                "200": {
                    "description": (op.answer.__doc__ or "").strip(),
                    "content": {"application/json": {"schema": schema(op.answer, defs)}},
                },
                "400": error,
                "404": error,
                "500": error,
            },
            "x-needs-served": op.needs_served,
        }
        request = defs.pop(op.request.__name__)  # path parameters and body, described apart
        body = {k: v for k, v in request["properties"].items() if k not in params}
        if body:
            body_schema = {
                **request,
                "properties": body,
                "required": [k for k in request["required"] if k in body],
            }
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body_schema}},
            }
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "loft node API",
            "version": API_VERSION,
            "description": __doc__.split("\n\n")[1].replace("\n", " ") if __doc__ else "",
        },
        "paths": paths,
        "components": {"schemas": defs},
    }
