"""Workspace records: the control plane's rows of a workspace (``workspaces``, the table
the workspaces work made; :mod:`loft.node.records` reads it on the node).

A record says whose a workspace is and what was asked for — owner (the user's name),
name (unique per owner), environment spec, limits, size, network, runtime, its host id
range and volume (allocated in the inserting transaction), idle timeout, metadata. The
control plane writes these rows and only these; the node writes the runtime state
(``workspace_runtime``) and snapshot environments, and never a record.

The spec column holds what the node builds: a ``loft.toml``'s text (generated for a
package list, whose ``spec_source`` then reads ``--packages a,b``) or a ``loft.lock``;
:func:`env_of` turns it back into the API's :class:`~loft.api.EnvSpec`.

Every lookup a tenant can cause goes through (owner, name) or checks the owner, so
another user's workspace is never found (:class:`NotFound`, the same as none).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, RowMapping, select, update

from loft.api import EnvSpec, Limits, Usage
from loft.catalog import Catalog
from loft.catalog import schema as s
from loft.control.accounts import Principal, quotas_of, usage_of
from loft.control.errors import BadRequest, Conflict, NotFound
from loft.control.quotas import check_quotas
from loft.errors import LoftError
from loft.node.environments import SpecInput, spec_input
from loft.node.records import NameTaken, Records
from loft.node.workspace_request import NewWorkspace

__all__ = ["Record", "WorkspaceRecords", "env_of"]

_W = s.workspaces
_PACKAGES = "--packages "


@dataclass(frozen=True, slots=True)
class Record:
    """One workspace record."""

    id: str
    owner: str
    name: str
    env: EnvSpec
    runtime: str
    network: str
    size: int
    limits: Limits
    idle_timeout: float
    metadata: dict[str, str]
    created_at: float
    volume: str = ""
    #: anyone may open its previews (the owner said so)
    preview_public: bool = False


def env_of(spec: str, source: str) -> EnvSpec:
    """The API's view of a record's spec column."""
    if source.startswith(_PACKAGES):
        return EnvSpec(packages=[p for p in source[len(_PACKAGES) :].split(",") if p])
    return EnvSpec(spec=spec)


def _spec(env: EnvSpec) -> SpecInput:
    try:
        return spec_input(list(env.packages), env.spec or "", "the spec")
    except LoftError as e:
        raise BadRequest(e.message, hint=e.hint or "give packages or a spec") from None


class WorkspaceRecords:
    """The workspace records of one catalog. Thread-safe (the catalog is)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._rows = Records(catalog)

    def create(self, owner: Principal, draft: Record) -> Record:
        """Insert ``draft`` for ``owner`` (its id, id range, volume and time are made
        here), refusing a name they already use, values no node accepts, and anything
        over their quotas."""
        spec = _spec(draft.env)
        try:
            checked = NewWorkspace.checked(
                draft.name,
                spec,
                draft.size,
                draft.limits.memory,
                draft.limits.cpus,
                draft.limits.pids,
                draft.network,
            )
        except LoftError as e:
            raise BadRequest(e.message, hint=e.hint) from None

        def guard(conn: Connection) -> None:
            # Lock the owner's row: the quota check and the insert are one step per user.
            conn.execute(select(s.users.c.id).where(s.users.c.id == owner.id).with_for_update())
            usage = usage_of(conn, owner.name)
            after = Usage(
                usage.workspaces + 1,
                usage.memory + draft.limits.memory,
                usage.cpus + draft.limits.cpus,
                usage.disk + draft.size,
            )
            check_quotas(quotas_of(conn, owner.id), usage, after)

        try:
            rec = self._rows.create(
                owner=owner.name,
                name=checked.name,
                spec=spec.text,
                spec_source=spec.source,
                limits=checked.limits,
                size=checked.size,
                network=checked.network,
                runtime=draft.runtime,
                guard=guard,
                extra={
                    "idle_timeout": draft.idle_timeout,
                    "metadata": json.dumps(draft.metadata),
                    "preview_public": draft.preview_public,
                },
            )
        except NameTaken:
            raise Conflict(
                f"a workspace of yours named {draft.name!r} exists already",
                hint="pick another name",
            ) from None
        return replace(
            draft,
            id=rec.id,
            owner=owner.name,
            env=env_of(rec.spec, rec.spec_source),
            created_at=rec.created_at,
            volume=rec.volume,
        )

    def get(self, owner: str, name: str) -> Record:
        """``owner``'s workspace ``name``."""
        with self.catalog.read() as conn:
            row = conn.execute(select(_W).where(_W.c.owner == owner, _W.c.name == name))
            found = row.mappings().first()
        if found is None:
            raise NotFound(f"no workspace named {name!r}", hint="`loft ls` lists yours")
        return _record(found)

    def find(self, id: str, caller: Principal) -> Record | None:
        """The workspace with this id if ``caller`` may touch it (owner or admin), else
        None: what a route keyed by id (the preview proxy's host names) asks."""
        rec = self.by_id(id)
        if rec is None or not (caller.admin or rec.owner == caller.name):
            return None
        return rec

    def by_id(self, id: str) -> Record | None:
        """The workspace with this id, whoever owns it (the preview proxy and the idle
        reaper, which decide who may see it themselves)."""
        with self.catalog.read() as conn:
            row = conn.execute(select(_W).where(_W.c.id == id)).mappings().first()
        return None if row is None else _record(row)

    def list(self, owner: str | None) -> list[Record]:
        """``owner``'s workspaces (None: everyone's), by owner then name."""
        query = select(_W).order_by(_W.c.owner, _W.c.name)
        if owner is not None:
            query = query.where(_W.c.owner == owner)
        with self.catalog.read() as conn:
            return [_record(row) for row in conn.execute(query).mappings()]

    def update(
        self,
        record: Record,
        *,
        limits: Limits | None = None,
        idle_timeout: float | None = None,
        metadata: dict[str, str] | None = None,
        preview_public: bool | None = None,
    ) -> Record:
        """Change a record's limits (within its owner's quotas; the node applies them at
        the workspace's next start), idle timeout, metadata or preview setting."""
        changed = replace(
            record,
            limits=record.limits if limits is None else limits,
            idle_timeout=record.idle_timeout if idle_timeout is None else idle_timeout,
            metadata=record.metadata if metadata is None else metadata,
            preview_public=record.preview_public if preview_public is None else preview_public,
        )
        with self.catalog.write() as conn:
            owner_row = select(s.users.c.id).where(s.users.c.name == record.owner)
            conn.execute(owner_row.with_for_update())
            usage = usage_of(conn, record.owner)
            after = Usage(
                usage.workspaces,
                usage.memory - record.limits.memory + changed.limits.memory,
                usage.cpus - record.limits.cpus + changed.limits.cpus,
                usage.disk,
            )
            user = conn.execute(select(s.users.c.id).where(s.users.c.name == record.owner)).first()
            if user is not None:
                check_quotas(quotas_of(conn, user.id), usage, after)
            done = conn.execute(
                update(_W)
                .where(_W.c.id == record.id)
                .values(
                    memory=changed.limits.memory,
                    cpus=changed.limits.cpus,
                    pids=changed.limits.pids,
                    idle_timeout=changed.idle_timeout,
                    metadata=json.dumps(changed.metadata),
                    preview_public=changed.preview_public,
                )
            ).rowcount
        if not done:
            raise NotFound(f"no workspace named {record.name!r}")
        return changed

    def set_env(self, record: Record, env: EnvSpec) -> Record:
        """Record the environment the workspace's node switched it to."""
        spec = _spec(env)
        with self.catalog.write() as conn:
            conn.execute(
                update(_W)
                .where(_W.c.id == record.id)
                .values(spec=spec.text, spec_source=spec.source[:255])
            )
        return replace(record, env=env_of(spec.text, spec.source))

    def delete(self, id: str) -> None:
        """Remove a record (its node has deleted the workspace, or never made it)."""
        self._rows.delete_record(id)


def _record(row: RowMapping | Any) -> Record:
    return Record(
        id=row["id"],
        owner=row["owner"],
        name=row["name"],
        env=env_of(row["spec"], row["spec_source"]),
        runtime=row["runtime"],
        network=row["network"],
        size=int(row["size"]),
        limits=Limits(memory=int(row["memory"]), cpus=float(row["cpus"]), pids=int(row["pids"])),
        idle_timeout=float(row["idle_timeout"]),
        metadata=json.loads(row["metadata"]),
        created_at=float(row["created_at"]),
        volume=row["volume"],
        preview_public=bool(row["preview_public"]),
    )
