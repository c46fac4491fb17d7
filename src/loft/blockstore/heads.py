"""The catalog side of volumes: rows, heads, leases, snapshots and in-flight commits.

Every head change is a compare-and-swap on the volume's one row: a commit advances
``version`` only where ``(version, epoch, holder)`` still match, and a takeover bumps
``epoch`` in the same transaction that reads the head. Lease times are the database's.
A lease keeps others out until it expires, or until its holder is provably dead
(:func:`~loft.blockstore.holder.provably_dead`: a process of this very node that is
gone); either way the taker goes through the same epoch bump, so fencing and recovery
do not depend on which it was.

A little over 500 lines because it is every statement on the volumes, snapshots and
in-flight-commit tables: the compare-and-swap rules only hold if one module writes them.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, RowMapping, and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from loft.blockstore.chunks import ZERO_HASH
from loft.blockstore.errors import (
    InvalidArgument,
    LeaseLost,
    SnapshotExists,
    SnapshotNotFound,
    VolumeBusy,
    VolumeExists,
    VolumeNotFound,
)
from loft.blockstore.holder import describe, provably_dead
from loft.catalog import Catalog
from loft.catalog.schema import (
    commits_inflight,
    gc_state,
    inflight_chunks,
    snapshots,
    volumes,
)

log = logging.getLogger(__name__)

#: Names of automatic snapshots (unclean takeovers, restores) start with these.
AUTO_SNAPSHOT_PREFIXES = ("takeover-", "restore-")
DEFAULT_LEASE_TTL = 30.0
#: Safety margin between the holder's own deadline and a taker's earliest takeover.
DEFAULT_LEASE_MARGIN = 5.0


@dataclass(frozen=True, slots=True)
class VolumeRecord:
    """A volume's catalog row."""

    id: int
    uid: str
    name: str
    size: int
    extent_size: int
    durability: str
    commit_interval: float
    #: bytes of uncommitted writes past which writers wait for a commit
    max_dirty: int
    parent_uid: str | None
    parent_snapshot: str | None
    lineage: tuple[str, ...]
    created_at: float
    root: bytes
    version: int
    epoch: int
    holder: str | None
    lease_expires: float | None
    control_socket: str | None
    #: written raw (an import, an NBD write outside a workspace attachment): never
    #: mounted by the host
    raw_written: bool

    @property
    def n_extents(self) -> int:
        return -(-self.size // self.extent_size)

    @property
    def writer_tag(self) -> bytes:
        """The 8-byte tag this volume writes into manifest entries."""
        return writer_tag(self.uid)

    @classmethod
    def from_row(cls, row: RowMapping) -> VolumeRecord:
        return cls(
            id=row["id"],
            uid=row["uid"],
            name=row["name"],
            size=row["size"],
            extent_size=row["extent_size"],
            durability=row["durability"],
            commit_interval=row["commit_interval"],
            max_dirty=row["max_dirty"],
            parent_uid=row["parent_uid"],
            parent_snapshot=row["parent_snapshot"],
            lineage=tuple(json.loads(row["lineage"])),
            created_at=row["created_at"],
            root=bytes.fromhex(row["root"]),
            version=row["version"],
            epoch=row["epoch"],
            holder=row["holder"],
            lease_expires=row["lease_expires"],
            control_socket=row["control_socket"],
            raw_written=bool(row["raw_written"]),
        )


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    id: int
    volume_id: int
    name: str
    version: int
    root: bytes
    created_at: float
    auto: bool

    @classmethod
    def from_row(cls, row: RowMapping) -> SnapshotRecord:
        return cls(
            id=row["id"],
            volume_id=row["volume_id"],
            name=row["name"],
            version=row["version"],
            root=bytes.fromhex(row["root"]),
            created_at=row["created_at"],
            auto=bool(row["auto"]),
        )


@dataclass(frozen=True, slots=True)
class Registration:
    """What a commit learns when it registers chunk keys: whether a GC sweep is running
    (then it must wait before trusting that an existing chunk stays) and how many sweeps
    have started so far (the presence index trusts only entries recorded at this count)."""

    sweeping: bool
    sweeps: int


@dataclass(frozen=True, slots=True)
class Takeover:
    """The result of taking a volume's lease: the head as it now is, and what it was."""

    record: VolumeRecord
    previous_epoch: int
    unclean: bool  # the previous holder never released its lease


def writer_tag(uid: str) -> bytes:
    return bytes.fromhex(uid[:16])


def lease_held(rec: VolumeRecord, now: float, margin: float = DEFAULT_LEASE_MARGIN) -> bool:
    """True while ``rec``'s lease keeps other writers out: it has a holder, has not
    expired by the database's clock ``now`` (plus ``margin``), and its holder is not
    provably dead."""
    if rec.holder is None or (rec.lease_expires or 0) + margin <= now:
        return False
    return not provably_dead(rec.holder)


class Heads:
    """Catalog operations on volumes and snapshots."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    # -- volumes ------------------------------------------------------------------------

    def get(self, name: str, conn: Connection | None = None) -> VolumeRecord:
        if conn is None:
            with self.catalog.read() as c:
                return self.get(name, c)
        row = conn.execute(select(volumes).where(volumes.c.name == name)).mappings().first()
        if row is None:
            raise VolumeNotFound(name)
        return VolumeRecord.from_row(row)

    def find(self, name: str) -> VolumeRecord | None:
        try:
            return self.get(name)
        except VolumeNotFound:
            return None

    def all(self) -> list[VolumeRecord]:
        with self.catalog.read() as conn:
            rows = conn.execute(select(volumes).order_by(volumes.c.name)).mappings().all()
        return [VolumeRecord.from_row(r) for r in rows]

    def create(
        self,
        name: str,
        *,
        size: int,
        extent_size: int,
        durability: str,
        commit_interval: float,
        max_dirty: int,
        root: bytes = ZERO_HASH,
        parent_uid: str | None = None,
        parent_snapshot: str | None = None,
        lineage: Iterable[str] = (),
        raw_written: bool = False,
        conn: Connection | None = None,
    ) -> VolumeRecord:
        """Insert a new volume row (version 0, epoch 0, no holder)."""
        if conn is None:
            with self.catalog.write() as c:
                return self.create(
                    name,
                    size=size,
                    extent_size=extent_size,
                    durability=durability,
                    commit_interval=commit_interval,
                    max_dirty=max_dirty,
                    root=root,
                    parent_uid=parent_uid,
                    parent_snapshot=parent_snapshot,
                    lineage=lineage,
                    raw_written=raw_written,
                    conn=c,
                )
        if conn.execute(select(volumes.c.id).where(volumes.c.name == name)).first():
            raise VolumeExists(name)
        values = dict(
            uid=secrets.token_hex(16),
            name=name,
            size=size,
            extent_size=extent_size,
            durability=durability,
            commit_interval=commit_interval,
            max_dirty=max_dirty,
            parent_uid=parent_uid,
            parent_snapshot=parent_snapshot,
            lineage=json.dumps(list(lineage)),
            created_at=self.catalog.now(conn),
            root=root.hex(),
            version=0,
            epoch=0,
            raw_written=raw_written,
        )
        try:
            conn.execute(insert(volumes).values(**values))
        except IntegrityError:
            raise VolumeExists(name) from None
        return self.get(name, conn)

    def mark_raw_written(self, volume_id: int) -> None:
        """Record that the volume now holds raw-written bytes (for good: nothing clears
        the flag, and forks inherit it)."""
        with self.catalog.write() as conn:
            conn.execute(update(volumes).where(volumes.c.id == volume_id).values(raw_written=True))

    def delete(self, record: VolumeRecord) -> None:
        with self.catalog.write() as conn:
            conn.execute(delete(snapshots).where(snapshots.c.volume_id == record.id))
            conn.execute(delete(volumes).where(volumes.c.id == record.id))

    # -- leases -------------------------------------------------------------------------

    def takeover(
        self,
        name: str,
        holder: str,
        *,
        ttl: float = DEFAULT_LEASE_TTL,
        margin: float = DEFAULT_LEASE_MARGIN,
    ) -> Takeover:
        """Take the volume's lease, bumping its epoch; VolumeBusy if someone holds it."""
        with self.catalog.write() as conn:
            row = (
                conn.execute(select(volumes).where(volumes.c.name == name).with_for_update())
                .mappings()
                .first()
            )
            if row is None:
                raise VolumeNotFound(name)
            rec = VolumeRecord.from_row(row)
            now = self.catalog.now(conn)
            if lease_held(rec, now, margin):
                wait = (rec.lease_expires or 0) + margin - now
                raise VolumeBusy(
                    f"volume {name!r} is in use by {describe(rec.holder or '')}",
                    hint=f"stop that writer, or wait {wait:.0f} s for its lease to expire",
                )
            unclean = rec.holder is not None
            if unclean and (rec.lease_expires or 0) + margin > now:
                log.warning(
                    "lease.reclaim volume=%s holder=%s reason=%s",
                    name,
                    json.dumps(rec.holder),
                    json.dumps("its process on this node is gone"),
                )
            conn.execute(
                update(volumes)
                .where(and_(volumes.c.id == rec.id, volumes.c.epoch == rec.epoch))
                .values(epoch=rec.epoch + 1, holder=holder, lease_expires=now + ttl)
            )
            if unclean and rec.version > 0:
                # Keep the head the fenced writer last committed: its orphan is based on it.
                self._add_snapshot(conn, rec, f"takeover-{rec.epoch}", rec.version, rec.root, True)
            return Takeover(self.get(name, conn), rec.epoch, unclean)

    def renew(self, volume_id: int, epoch: int, holder: str, ttl: float) -> bool:
        """Extend the lease; False when it was lost (epoch bumped or holder changed)."""
        with self.catalog.write() as conn:
            now = self.catalog.now(conn)
            res = conn.execute(
                update(volumes)
                .where(
                    and_(
                        volumes.c.id == volume_id,
                        volumes.c.epoch == epoch,
                        volumes.c.holder == holder,
                    )
                )
                .values(lease_expires=now + ttl)
            )
            return res.rowcount == 1

    def release(self, volume_id: int, epoch: int, holder: str) -> None:
        """Give up the lease (a clean stop)."""
        with self.catalog.write() as conn:
            conn.execute(
                update(volumes)
                .where(
                    and_(
                        volumes.c.id == volume_id,
                        volumes.c.epoch == epoch,
                        volumes.c.holder == holder,
                    )
                )
                .values(holder=None, lease_expires=None, control_socket=None)
            )

    def set_control_socket(self, volume_id: int, epoch: int, path: str | None) -> None:
        with self.catalog.write() as conn:
            conn.execute(
                update(volumes)
                .where(and_(volumes.c.id == volume_id, volumes.c.epoch == epoch))
                .values(control_socket=path)
            )

    # -- commits ------------------------------------------------------------------------

    def begin_commit(self, volume_id: int) -> int:
        """Register a commit in flight (GC marks the chunks it registers)."""
        with self.catalog.write() as conn:
            res = conn.execute(
                insert(commits_inflight).values(
                    volume_id=volume_id, started_at=self.catalog.now(conn)
                )
            )
            pk = res.inserted_primary_key
            assert pk is not None
            return int(pk[0])

    def register_chunks(self, commit_id: int, keys: Iterable[str]) -> Registration:
        """Record chunk keys the commit will reference, in the transaction that reads GC's
        state. When a sweep is running the caller must wait (:meth:`wait_for_sweep`)
        before it trusts that an existing chunk will stay."""
        keys = sorted(set(keys))
        with self.catalog.write() as conn:
            row = conn.execute(
                select(gc_state.c.sweeping_until, gc_state.c.sweeps)
                .where(gc_state.c.id == 1)
                .with_for_update()
            ).first()
            existing = {
                r[0]
                for r in conn.execute(
                    select(inflight_chunks.c.key).where(inflight_chunks.c.commit_id == commit_id)
                )
            }
            new = [{"commit_id": commit_id, "key": k} for k in keys if k not in existing]
            if new:
                conn.execute(insert(inflight_chunks), new)
            until = None if row is None else row[0]
            sweeping = until is not None and until > self.catalog.now(conn)
            return Registration(sweeping, 0 if row is None else int(row[1]))

    def wait_for_sweep(self, timeout: float = 120.0) -> bool:
        """Block until no GC sweep is running (or its lease expired); False when it was
        still running after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.catalog.read() as conn:
                row = conn.execute(
                    select(gc_state.c.sweeping_until).where(gc_state.c.id == 1)
                ).first()
                if row is None or row[0] is None or row[0] <= self.catalog.now(conn):
                    return True
            time.sleep(0.05)
        return False

    def end_commit(self, commit_id: int, conn: Connection | None = None) -> None:
        """Forget a commit's registration (after its head advanced, or it failed)."""
        if conn is None:
            with self.catalog.write() as c:
                self.end_commit(commit_id, c)
            return
        conn.execute(delete(inflight_chunks).where(inflight_chunks.c.commit_id == commit_id))
        conn.execute(delete(commits_inflight).where(commits_inflight.c.id == commit_id))

    def cas_head(
        self,
        rec: VolumeRecord,
        holder: str | None,
        new_root: bytes,
        *,
        commit_id: int | None,
        ttl: float = DEFAULT_LEASE_TTL,
    ) -> VolumeRecord:
        """Advance the head from ``rec.version`` to the next, if (version, epoch, holder)
        still match; renews the lease in the same statement. LeaseLost otherwise."""
        with self.catalog.write() as conn:
            now = self.catalog.now(conn)
            cond = [
                volumes.c.id == rec.id,
                volumes.c.version == rec.version,
                volumes.c.epoch == rec.epoch,
            ]
            values: dict[str, object] = {"root": new_root.hex(), "version": rec.version + 1}
            if holder is not None:
                cond.append(volumes.c.holder == holder)
                values["lease_expires"] = now + ttl
            res = conn.execute(update(volumes).where(and_(*cond)).values(**values))
            if res.rowcount != 1:
                raise LeaseLost(
                    f"volume {rec.name!r} was taken over by another writer; "
                    "this writer can no longer commit",
                    hint="its unsaved work is kept as an orphan fork when it is closed",
                )
            if commit_id is not None:
                self.end_commit(commit_id, conn)
            return self.get(rec.name, conn)

    # -- snapshots ----------------------------------------------------------------------

    def _add_snapshot(
        self,
        conn: Connection,
        rec: VolumeRecord,
        name: str,
        version: int,
        root: bytes,
        auto: bool,
    ) -> SnapshotRecord:
        if not auto and name.startswith(AUTO_SNAPSHOT_PREFIXES):
            # A user snapshot named like an automatic one would make the takeover that
            # needs the name fail for good, and hand an orphan the wrong base.
            raise InvalidArgument(
                f"snapshot names starting with {' or '.join(AUTO_SNAPSHOT_PREFIXES)} are "
                "reserved for automatic snapshots",
                hint="pick another name",
            )
        exists = conn.execute(
            select(snapshots.c.id).where(
                and_(snapshots.c.volume_id == rec.id, snapshots.c.name == name)
            )
        ).first()
        if exists:
            raise SnapshotExists(rec.name, name)
        conn.execute(
            insert(snapshots).values(
                volume_id=rec.id,
                name=name,
                version=version,
                root=root.hex(),
                created_at=self.catalog.now(conn),
                auto=auto,
            )
        )
        return self.get_snapshot(rec, name, conn)

    def add_snapshot(
        self, rec: VolumeRecord, name: str, version: int, root: bytes, *, auto: bool = False
    ) -> SnapshotRecord:
        with self.catalog.write() as conn:
            return self._add_snapshot(conn, rec, name, version, root, auto)

    def get_snapshot(
        self, rec: VolumeRecord, name: str, conn: Connection | None = None
    ) -> SnapshotRecord:
        if conn is None:
            with self.catalog.read() as c:
                return self.get_snapshot(rec, name, c)
        row = (
            conn.execute(
                select(snapshots).where(
                    and_(snapshots.c.volume_id == rec.id, snapshots.c.name == name)
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise SnapshotNotFound(rec.name, name)
        return SnapshotRecord.from_row(row)

    def snapshots(self, rec: VolumeRecord) -> list[SnapshotRecord]:
        with self.catalog.read() as conn:
            rows = (
                conn.execute(
                    select(snapshots)
                    .where(snapshots.c.volume_id == rec.id)
                    .order_by(snapshots.c.created_at, snapshots.c.id)
                )
                .mappings()
                .all()
            )
        return [SnapshotRecord.from_row(r) for r in rows]

    def delete_snapshot(self, snap: SnapshotRecord) -> None:
        with self.catalog.write() as conn:
            conn.execute(delete(snapshots).where(snapshots.c.id == snap.id))

    def restore_head(
        self, rec: VolumeRecord, holder: str, snap: SnapshotRecord, auto_name: str
    ) -> VolumeRecord:
        """Point the head at ``snap`` in one transaction: keep the replaced head as an
        automatic snapshot, bump the epoch (any other working copy is now stale) and
        release the lease."""
        with self.catalog.write() as conn:
            res = conn.execute(
                update(volumes)
                .where(
                    and_(
                        volumes.c.id == rec.id,
                        volumes.c.version == rec.version,
                        volumes.c.epoch == rec.epoch,
                        volumes.c.holder == holder,
                    )
                )
                .values(
                    root=snap.root.hex(),
                    version=rec.version + 1,
                    epoch=rec.epoch + 1,
                    holder=None,
                    lease_expires=None,
                )
            )
            if res.rowcount != 1:
                raise LeaseLost(f"volume {rec.name!r} changed during restore; nothing restored")
            self._add_snapshot(conn, rec, auto_name, rec.version, rec.root, True)
            return self.get(rec.name, conn)

    def all_roots(self, conn: Connection) -> list[tuple[VolumeRecord, list[bytes]]]:
        """Every volume with the roots GC must keep: its head and its snapshots."""
        vols = [VolumeRecord.from_row(r) for r in conn.execute(select(volumes)).mappings()]
        snaps: dict[int, list[bytes]] = {}
        for r in conn.execute(select(snapshots.c.volume_id, snapshots.c.root)):
            snaps.setdefault(r[0], []).append(bytes.fromhex(r[1]))
        return [(v, [v.root, *snaps.get(v.id, [])]) for v in vols]
