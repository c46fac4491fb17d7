"""Workspace records: the control plane's rows of a workspace, in one table.

A record says whose a workspace is and what was asked for; the node keeps its runtime
state. The columns this module relies on (the seam to the node agent's ``workspaces``
table, if the two become one): ``id`` (the key every node call uses), ``owner_id``
(``users.id``), ``name`` (unique per owner), ``spec`` (JSON of :class:`loft.api.EnvSpec`),
``runtime``, ``size``, ``memory``, ``cpus``, ``idle_timeout``, ``metadata`` (JSON object),
``created_at`` and ``preview_public``.

Every lookup a tenant can cause goes through (owner, name) or checks the owner, so
another user's workspace is never found (:class:`NotFound`, the same as none).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Row, Select, delete, insert, select, update

from loft.api import EnvSpec, Limits, Usage
from loft.catalog import Catalog
from loft.catalog import schema as s
from loft.control.accounts import Principal, quotas_of, usage_of
from loft.control.errors import Conflict, NotFound
from loft.control.quotas import check_quotas

__all__ = ["Record", "WorkspaceRecords"]

_W = s.workspace_records


@dataclass(frozen=True, slots=True)
class Record:
    """One workspace record, with its owner's name."""

    id: str
    owner_id: int
    owner: str
    name: str
    env: EnvSpec
    runtime: str
    size: int
    limits: Limits
    idle_timeout: float
    metadata: dict[str, str]
    created_at: float
    preview_public: bool = False


class WorkspaceRecords:
    """The workspace records of one catalog. Thread-safe (the catalog is)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def create(self, owner: Principal, record: Record) -> Record:
        """Insert ``record`` (its id and time are made here) for ``owner``, refusing a
        name they already use and anything over their quotas."""
        with self.catalog.write() as conn:
            # Lock the owner's row: the quota check and the insert are one step per user.
            conn.execute(select(s.users.c.id).where(s.users.c.id == owner.id).with_for_update())
            taken = conn.execute(
                select(_W.c.id).where(_W.c.owner_id == owner.id, _W.c.name == record.name)
            ).first()
            if taken is not None:
                raise Conflict(
                    f"you already have a workspace {record.name}", hint="pick another name"
                )
            usage = usage_of(conn, owner.id)
            after = Usage(
                usage.workspaces + 1,
                usage.memory + record.limits.memory,
                usage.cpus + record.limits.cpus,
                usage.disk + record.size,
            )
            check_quotas(quotas_of(conn, owner.id), usage, after)
            made = replace(
                record,
                id=secrets.token_hex(16),
                owner_id=owner.id,
                owner=owner.name,
                created_at=self.catalog.now(conn),
            )
            conn.execute(
                insert(_W).values(
                    id=made.id,
                    owner_id=made.owner_id,
                    name=made.name,
                    spec=json.dumps({"packages": made.env.packages, "spec": made.env.spec}),
                    runtime=made.runtime,
                    size=made.size,
                    memory=made.limits.memory,
                    cpus=made.limits.cpus,
                    idle_timeout=made.idle_timeout,
                    metadata=json.dumps(made.metadata),
                    created_at=made.created_at,
                    preview_public=made.preview_public,
                )
            )
        return made

    def get(self, owner_id: int, name: str) -> Record:
        """``owner_id``'s workspace ``name``."""
        with self.catalog.read() as conn:
            row = conn.execute(
                _select().where(_W.c.owner_id == owner_id, _W.c.name == name)
            ).first()
        if row is None:
            raise NotFound(f"no workspace {name}", hint="`loft ls` lists yours")
        return _record(row)

    def find(self, id: str, caller: Principal) -> Record | None:
        """The workspace with this id if ``caller`` may touch it (owner or admin), else
        None: what a route keyed by id (the preview proxy's host names) asks."""
        rec = self.by_id(id)
        if rec is None or not (caller.admin or rec.owner_id == caller.id):
            return None
        return rec

    def by_id(self, id: str) -> Record | None:
        """The workspace with this id, whoever owns it (the preview proxy and the idle
        reaper, which decide who may see it themselves)."""
        with self.catalog.read() as conn:
            row = conn.execute(_select().where(_W.c.id == id)).first()
        return None if row is None else _record(row)

    def list(self, owner_id: int | None) -> list[Record]:
        """``owner_id``'s workspaces (None: everyone's), by owner then name."""
        query = _select().order_by(s.users.c.name, _W.c.name)
        if owner_id is not None:
            query = query.where(_W.c.owner_id == owner_id)
        with self.catalog.read() as conn:
            return [_record(row) for row in conn.execute(query)]

    def update(
        self,
        record: Record,
        *,
        limits: Limits | None = None,
        idle_timeout: float | None = None,
        metadata: dict[str, str] | None = None,
        preview_public: bool | None = None,
    ) -> Record:
        """Change a record's limits (within its owner's quotas), idle timeout, metadata
        or preview setting."""
        changed = replace(
            record,
            limits=record.limits if limits is None else limits,
            idle_timeout=record.idle_timeout if idle_timeout is None else idle_timeout,
            metadata=record.metadata if metadata is None else metadata,
            preview_public=record.preview_public if preview_public is None else preview_public,
        )
        with self.catalog.write() as conn:
            conn.execute(
                select(s.users.c.id).where(s.users.c.id == record.owner_id).with_for_update()
            )
            usage = usage_of(conn, record.owner_id)
            after = Usage(
                usage.workspaces,
                usage.memory - record.limits.memory + changed.limits.memory,
                usage.cpus - record.limits.cpus + changed.limits.cpus,
                usage.disk,
            )
            check_quotas(quotas_of(conn, record.owner_id), usage, after)
            done = conn.execute(
                update(_W)
                .where(_W.c.id == record.id)
                .values(
                    memory=changed.limits.memory,
                    cpus=changed.limits.cpus,
                    idle_timeout=changed.idle_timeout,
                    metadata=json.dumps(changed.metadata),
                    preview_public=changed.preview_public,
                )
            ).rowcount
        if not done:
            raise NotFound(f"no workspace {record.name}")
        return changed

    def delete(self, id: str) -> None:
        """Remove a record (its node has deleted the workspace)."""
        with self.catalog.write() as conn:
            conn.execute(delete(_W).where(_W.c.id == id))


def _select() -> Select[Any]:
    return select(_W, s.users.c.name.label("owner")).join(s.users, s.users.c.id == _W.c.owner_id)


def _record(row: Row[Any]) -> Record:
    env = json.loads(row.spec)
    return Record(
        id=row.id,
        owner_id=row.owner_id,
        owner=row.owner,
        name=row.name,
        env=EnvSpec(packages=list(env.get("packages") or []), spec=env.get("spec")),
        runtime=row.runtime,
        size=row.size,
        limits=Limits(memory=row.memory, cpus=row.cpus),
        idle_timeout=row.idle_timeout,
        metadata=json.loads(row.metadata),
        created_at=row.created_at,
        preview_public=bool(row.preview_public),
    )
