"""What a node API operation is, and a table of them (Firecracker's ``VmmAction`` habit:
one typed request and one typed answer per operation, and flags the server checks
before the operation runs).

Two services answer the node API, each on its own root-only Unix socket: the disk
service (``control.sock``: volumes, :mod:`loft.node.api`) and the node agent
(``agent.sock``: workspaces, :mod:`loft.node.workspace_api`). One OpenAPI document
describes both (``x-socket`` names each operation's). Only the standard library and the
JSON codec are imported here, so the CLI's path to the agent stays light.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from loft.node.jsoncodec import schema

__all__ = ["ErrorAnswer", "Operation", "Table", "Upgraded", "describe"]


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """Why a request failed, and what to do about it."""

    error: str
    hint: str | None = None


@dataclass(frozen=True, slots=True)
class Upgraded:
    """101 Switching Protocols (Upgrade: loft-stream/1): frames follow on the connection
    (loft.node.frames)."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation: its HTTP method and path (``{name}`` is a path parameter), its
    request and answer types, the socket that serves it, and what it needs:
    ``needs_served``, the volume it names served by this disk service;
    ``needs_running``, the workspace it names running; ``stream``, it answers ``101``
    and speaks frames (its answer type is :class:`Upgraded`)."""

    name: str
    method: str
    path: str
    request: type
    answer: type
    needs_served: bool = False
    socket: str = "control.sock"
    needs_running: bool = False
    stream: bool = False

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)

    def url(self, req: object) -> str:
        """The request path with its parameters filled in from ``req``."""
        return re.sub(
            r"\{(\w+)\}", lambda m: quote(str(getattr(req, m.group(1))), safe=""), self.path
        )


class Table:
    """The operations one socket serves: matched by method and path, found by their
    request's type."""

    def __init__(self, *operations: Operation) -> None:
        self.operations = operations
        self._by_request = {op.request: op for op in operations}
        self._patterns = [
            (
                op,
                re.compile(
                    "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(op.path)) + "$"
                ),
            )
            for op in operations
        ]

    def __add__(self, other: Table) -> Table:
        return Table(*self.operations, *other.operations)

    def find(self, req: object) -> Operation | None:
        """The operation a request object belongs to, if it is one of this table's."""
        return self._by_request.get(type(req))

    def match(self, method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
        """The operation at ``method path`` and its (still quoted) path parameters, or
        None (the caller tells 404 from 405 with :meth:`path_exists`)."""
        for op, pattern in self._patterns:
            m = pattern.match(path)
            if m and op.method == method:
                return op, m.groupdict()
        return None

    def path_exists(self, path: str) -> bool:
        """True when some operation has this path (with any method)."""
        return any(pattern.match(path) for _, pattern in self._patterns)


def describe(table: Table, title: str, version: str, description: str) -> dict[str, Any]:
    """The OpenAPI 3 document of every operation in ``table``."""
    defs: dict[str, Any] = {}
    error = {
        "description": "refused or failed",
        "content": {"application/json": {"schema": schema(ErrorAnswer, defs)}},
    }
    paths: dict[str, Any] = {}
    for op in table.operations:
        params = op.path_params
        schema(op.request, defs)
        if op.stream:
            ok: dict[str, Any] = {"101": {"description": (Upgraded.__doc__ or "").strip()}}
        else:
            ok = {
                "200": {
                    "description": (op.answer.__doc__ or "").strip(),
                    "content": {"application/json": {"schema": schema(op.answer, defs)}},
                }
            }
        entry: dict[str, Any] = {
            "operationId": op.name,
            "summary": (op.request.__doc__ or "").strip(),
            "parameters": [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in params
            ],
            "responses": {**ok, "400": error, "404": error, "409": error, "500": error},
            "x-socket": op.socket,
            "x-needs-served": op.needs_served,
            "x-needs-running": op.needs_running,
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
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {"schemas": defs},
    }
