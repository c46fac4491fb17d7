"""Workspace records and their runtime state, in the catalog.

Two kinds of rows, in separate tables from the start (``loft.catalog.schema``):

- the **record** (``workspaces``): what a workspace *is* — owner and name, environment
  spec, limits, size, network, host id range, runtime kind, volume. The control plane
  writes these (:meth:`Records.create`, :meth:`Records.delete_record`; its own columns,
  ``idle_timeout`` and ``metadata``, through ``extra``), and a node only reads them;
- the **runtime state** (``workspace_runtime``): what the node running it *sees* — which
  node, its phase, whether it should run (``desired``), its attachment. Only that node
  writes it.

Names are unique per owner and DNS-safe (``[a-z][a-z0-9-]{0,39}``, no ``--``, no
trailing ``-``: a name may become part of a host name). Each workspace also has a short
random id (:func:`new_workspace_id`) that names everything on the node — its volume
(``ws-<id>``), its environment profile (the same), its container and directories — so a
rename never touches them. Its 65,536 host ids are allocated here, in the transaction
that inserts the record (:func:`loft.runtime.ids.allocate_range` over every range the
catalog holds; the range base is unique, so two writers racing for one range cannot
both insert it: the loser retries).
"""

from __future__ import annotations

import enum
import json
import re
import secrets
import string
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Delete, RowMapping, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from loft.catalog import Catalog
from loft.catalog.schema import workspace_runtime, workspace_snapshots, workspaces
from loft.errors import LoftError
from loft.isolation.userns import IdRange
from loft.runtime.errors import UnknownWorkspace
from loft.runtime.ids import allocate_range
from loft.runtime.spec import Limits, Network

__all__ = [
    "DEFAULT_OWNER",
    "BadName",
    "Desired",
    "NameTaken",
    "Phase",
    "Records",
    "RuntimeState",
    "Workspace",
    "WorkspaceRecord",
    "check_workspace_name",
    "new_workspace_id",
    "volume_name",
]

#: Every workspace has an owner (a user's name): root owned the workspaces a node made
#: before it had a control plane, and root is the control plane's first admin.
DEFAULT_OWNER = "root"
_NAME = re.compile(r"[a-z][a-z0-9-]{0,39}")
_ID_ALPHABET = string.ascii_lowercase + string.digits
#: Allocation attempts when another node takes the same id range at the same moment.
_ALLOCATION_ATTEMPTS = 8


class BadName(LoftError):
    """A workspace name that is not DNS-safe."""


class NameTaken(LoftError):
    """The owner already has a workspace of that name."""


class Phase(enum.Enum):
    """What the node sees a workspace doing (``workspace_runtime.phase``)."""

    CREATING = "creating"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    #: its storage chain broke (the disk service or nbdfuse died): being stopped and
    #: started again from its last flush
    RECOVERING = "recovering"


class Desired(enum.Enum):
    """Whether the workspace should run: a node that stopped it (a drain, a dead disk
    service) starts it again when it can."""

    RUNNING = "running"
    STOPPED = "stopped"


def check_workspace_name(name: str) -> str:
    """``name`` if it is a valid workspace name, else :class:`BadName`."""
    if not _NAME.fullmatch(name) or "--" in name or name.endswith("-"):
        raise BadName(
            f"bad workspace name {name!r}",
            hint="use 1-40 lowercase letters, digits and single '-', starting with a "
            "letter and not ending with '-' (it may become part of a host name)",
        )
    return name


def new_workspace_id() -> str:
    """A short random id: a letter and nine letters or digits (~46 bits)."""
    first = secrets.choice(string.ascii_lowercase)
    return first + "".join(secrets.choice(_ID_ALPHABET) for _ in range(9))


def volume_name(workspace_id: str) -> str:
    """The workspace's volume (and environment profile): ``ws-<id>``."""
    return f"ws-{workspace_id}"


@dataclass(frozen=True)
class WorkspaceRecord:
    """What a workspace is (a ``workspaces`` row)."""

    id: str
    owner: str
    name: str
    spec: str
    spec_source: str
    limits: Limits
    size: int
    network: Network
    ids: IdRange
    runtime: str
    volume: str
    created_at: float

    @property
    def profile(self) -> str:
        """The name of its environment profile."""
        return self.volume

    @classmethod
    def from_row(cls, row: RowMapping) -> WorkspaceRecord:
        return cls(
            id=row["id"],
            owner=row["owner"],
            name=row["name"],
            spec=row["spec"],
            spec_source=row["spec_source"],
            limits=Limits(
                memory=int(row["memory"]), cpus=float(row["cpus"]), pids=int(row["pids"])
            ),
            size=int(row["size"]),
            network=Network(row["network"]),
            ids=IdRange(int(row["ids_base"])),
            runtime=row["runtime"],
            volume=row["volume"],
            created_at=float(row["created_at"]),
        )


@dataclass(frozen=True)
class RuntimeState:
    """What the node sees of a workspace (a ``workspace_runtime`` row)."""

    node: str | None
    phase: Phase
    desired: Desired
    attachment: dict[str, Any] | None
    updated_at: float

    @classmethod
    def from_row(cls, row: RowMapping) -> RuntimeState:
        raw = row["attachment"]
        return cls(
            node=row["node"],
            phase=Phase(row["phase"]),
            desired=Desired(row["desired"]),
            attachment=json.loads(raw) if raw else None,
            updated_at=float(row["updated_at"]),
        )


@dataclass(frozen=True)
class Workspace:
    """A record and its runtime state, read together."""

    record: WorkspaceRecord
    state: RuntimeState


_UNSET: Any = object()


class Records:
    """Workspace rows of one catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    # -- records ------------------------------------------------------------------------

    def create(
        self,
        *,
        owner: str,
        name: str,
        spec: str,
        spec_source: str,
        limits: Limits,
        size: int,
        network: Network,
        runtime: str,
        etc: Path = Path("/etc"),
        guard: Callable[[Connection], None] | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> WorkspaceRecord:
        """Insert a new workspace record with a new id and id range (the control plane's
        write: a node adds its runtime state with :meth:`add_state`); :class:`NameTaken`
        when the owner has one of that name. ``guard`` runs in the inserting transaction
        first (the control plane checks quotas there); ``extra`` sets further columns."""
        check_workspace_name(name)
        for attempt in range(_ALLOCATION_ATTEMPTS):
            if attempt:
                # A writer that just won creates its next one at once; without a random
                # pause the loser of every round meets it again at the same range.
                time.sleep(secrets.randbelow(1000) / 1000 * 0.005 * 2**attempt)
            try:
                with self.catalog.write() as conn:
                    if guard is not None:
                        guard(conn)
                    if self._find(conn, owner, name) is not None:
                        raise _name_taken(owner, name)
                    used = [IdRange(int(b)) for (b,) in conn.execute(select(workspaces.c.ids_base))]
                    ids = allocate_range(used, etc)
                    wid = new_workspace_id()
                    conn.execute(
                        insert(workspaces).values(
                            id=wid,
                            owner=owner,
                            name=name,
                            spec=spec,
                            spec_source=spec_source[:255],
                            memory=limits.memory,
                            cpus=limits.cpus,
                            pids=limits.pids,
                            size=size,
                            network=network.value,
                            ids_base=ids.host,
                            runtime=runtime,
                            volume=volume_name(wid),
                            created_at=self.catalog.now(conn),
                            **(extra or {}),
                        )
                    )
                    row = conn.execute(select(workspaces).where(workspaces.c.id == wid))
                    return WorkspaceRecord.from_row(row.mappings().one())
            except IntegrityError:
                # Another writer inserted the same name, range or id at this moment.
                with self.catalog.read() as conn:
                    if self._find(conn, owner, name) is not None:
                        raise _name_taken(owner, name) from None
        raise LoftError(
            "could not allocate a workspace id range (too much contention)", hint="try again"
        )

    def record(self, workspace_id: str) -> WorkspaceRecord | None:
        """The record with this id, with or without runtime state."""
        with self.catalog.read() as conn:
            row = (
                conn.execute(select(workspaces).where(workspaces.c.id == workspace_id))
                .mappings()
                .first()
            )
        return None if row is None else WorkspaceRecord.from_row(row)

    def delete_record(self, workspace_id: str) -> None:
        """Forget a record (the control plane's write, once its node removed the rest)."""
        with self.catalog.write() as conn:
            conn.execute(delete(workspaces).where(workspaces.c.id == workspace_id))

    @staticmethod
    def _find(conn: Connection, owner: str, name: str) -> WorkspaceRecord | None:
        row = (
            conn.execute(
                select(workspaces).where(workspaces.c.owner == owner, workspaces.c.name == name)
            )
            .mappings()
            .first()
        )
        return None if row is None else WorkspaceRecord.from_row(row)

    def find(self, owner: str, name: str) -> Workspace | None:
        """The workspace ``owner`` calls ``name``, or None."""
        with self.catalog.read() as conn:
            found = list(
                self._select(conn, (workspaces.c.owner == owner) & (workspaces.c.name == name))
            )
        return found[0] if found else None

    def get(self, owner: str, name: str) -> Workspace:
        """The workspace ``owner`` calls ``name``; :class:`UnknownWorkspace` if none."""
        ws = self.find(owner, name)
        if ws is None:
            raise UnknownWorkspace(f"no workspace named {name!r}", hint="`loft ls` lists them")
        return ws

    def by_id(self, workspace_id: str) -> Workspace | None:
        """The workspace with this id, or None."""
        with self.catalog.read() as conn:
            found = list(self._select(conn, workspaces.c.id == workspace_id))
        return found[0] if found else None

    def all(self, owner: str | None = None) -> list[Workspace]:
        """Every workspace (of ``owner``), by name."""
        with self.catalog.read() as conn:
            where = workspaces.c.owner == owner if owner is not None else None
            return list(self._select(conn, where))

    def on_node(self, node: str) -> list[Workspace]:
        """The workspaces whose runtime state names ``node``."""
        with self.catalog.read() as conn:
            return list(self._select(conn, workspace_runtime.c.node == node))

    @staticmethod
    def _select(conn: Connection, where: Any) -> Iterator[Workspace]:
        q = select(workspaces, workspace_runtime).join(
            workspace_runtime, workspace_runtime.c.workspace_id == workspaces.c.id
        )
        if where is not None:
            q = q.where(where)
        for row in conn.execute(q.order_by(workspaces.c.owner, workspaces.c.name)).mappings():
            yield Workspace(WorkspaceRecord.from_row(row), RuntimeState.from_row(row))

    def delete(self, workspace_id: str) -> None:
        """Forget what the node keeps of a workspace: its runtime state and snapshot rows
        (the record is the control plane's: :meth:`delete_record`)."""
        with self.catalog.write() as conn:
            for table, column in (
                (workspace_snapshots, workspace_snapshots.c.workspace_id),
                (workspace_runtime, workspace_runtime.c.workspace_id),
            ):
                conn.execute(delete(table).where(column == workspace_id))

    # -- runtime state --------------------------------------------------------------------

    def add_state(self, workspace_id: str, node: str) -> None:
        """Take on a record: its runtime state, phase ``creating`` on ``node``."""
        with self.catalog.write() as conn:
            conn.execute(
                insert(workspace_runtime).values(
                    workspace_id=workspace_id,
                    node=node,
                    phase=Phase.CREATING.value,
                    desired=Desired.STOPPED.value,
                    attachment=None,
                    updated_at=self.catalog.now(conn),
                )
            )

    def set_state(
        self,
        workspace_id: str,
        *,
        phase: Phase | None = None,
        desired: Desired | None = None,
        node: str | None = _UNSET,
        attachment: dict[str, Any] | None = _UNSET,
    ) -> None:
        """Update the runtime state's given fields (and its time)."""
        values: dict[str, Any] = {}
        if phase is not None:
            values["phase"] = phase.value
        if desired is not None:
            values["desired"] = desired.value
        if node is not _UNSET:
            values["node"] = node
        if attachment is not _UNSET:
            values["attachment"] = None if attachment is None else json.dumps(attachment)
        with self.catalog.write() as conn:
            values["updated_at"] = self.catalog.now(conn)
            conn.execute(
                update(workspace_runtime)
                .where(workspace_runtime.c.workspace_id == workspace_id)
                .values(**values)
            )

    # -- snapshots ------------------------------------------------------------------------

    def add_snapshot(
        self, workspace_id: str, name: str, env_path: str, memory: bytes | None = None
    ) -> None:
        """Record the environment snapshot ``name`` was taken with (and a VM's memory
        image record, :mod:`loft.runtime.vm_image`)."""
        with self.catalog.write() as conn:
            conn.execute(_snapshot_row(delete(workspace_snapshots), workspace_id, name))
            conn.execute(
                insert(workspace_snapshots).values(
                    workspace_id=workspace_id,
                    name=name,
                    env_path=env_path,
                    created_at=self.catalog.now(conn),
                    memory=memory,
                )
            )

    def remove_snapshot(self, workspace_id: str, name: str) -> None:
        """Forget snapshot ``name``'s row (its environment is then no GC root for it;
        gone already is fine)."""
        with self.catalog.write() as conn:
            conn.execute(_snapshot_row(delete(workspace_snapshots), workspace_id, name))

    def snapshot_memories(self, workspace_id: str) -> dict[str, bytes]:
        """Snapshot name -> its memory image record, for the snapshots that have one."""
        with self.catalog.read() as conn:
            rows = conn.execute(
                select(workspace_snapshots.c.name, workspace_snapshots.c.memory).where(
                    workspace_snapshots.c.workspace_id == workspace_id,
                    workspace_snapshots.c.memory.is_not(None),
                )
            )
            return {n: bytes(m) for n, m in rows}

    def snapshot_envs(self, workspace_id: str) -> dict[str, str]:
        """Snapshot name -> the environment it was taken with."""
        with self.catalog.read() as conn:
            rows = conn.execute(
                select(workspace_snapshots.c.name, workspace_snapshots.c.env_path).where(
                    workspace_snapshots.c.workspace_id == workspace_id
                )
            )
            return {n: p for n, p in rows}

    def snapshot_env_paths(self) -> set[str]:
        """Every environment a workspace snapshot refers to (GC roots)."""
        with self.catalog.read() as conn:
            return {p for (p,) in conn.execute(select(workspace_snapshots.c.env_path).distinct())}


def _name_taken(owner: str, name: str) -> NameTaken:
    whose = "" if owner == DEFAULT_OWNER else f" of {owner}"
    return NameTaken(
        f"a workspace{whose} named {name!r} exists already",
        hint=f"pick another name, or remove it first (`loft rm {name}`)",
    )


def _snapshot_row(stmt: Delete, workspace_id: str, name: str) -> Delete:
    """``stmt`` limited to the row of ``workspace_id``'s snapshot ``name``."""
    return stmt.where(
        workspace_snapshots.c.workspace_id == workspace_id, workspace_snapshots.c.name == name
    )
