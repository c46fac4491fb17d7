"""Garbage collection of the chunk store.

Mark: every chunk reachable from a head or snapshot (manifest pages and the extents they
name), plus every chunk registered by a commit in flight. Sweep: chunks that are unmarked
and older than the grace period. Only the ``chunks/`` prefix is listed.

The sweep holds a lease in ``gc_state`` taken in the same transaction that reads the roots
and registrations; a commit that registers afterwards sees the lease and waits before it
trusts an existing chunk, so a dedup hit is never swept under it.

Before anything, GC compares the head records in the store with the catalog and refuses
to run when the catalog lacks a head the store has (a lost or stale catalog must never
erase the store), and when it would delete more than ``max_fraction`` of the chunks.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass

from sqlalchemy import select, update

from loft.blockstore.chunks import CHUNK_PREFIX, ZERO_HASH, chunk_key
from loft.blockstore.commit import DEFAULT_GC_GRACE, HEAD_PREFIX, manifest_for
from loft.blockstore.context import BlockstoreContext
from loft.blockstore.errors import GCRefused
from loft.catalog.schema import gc_state, inflight_chunks
from loft.objstore import ObjectNotFound

log = logging.getLogger(__name__)

DEFAULT_MAX_FRACTION = 0.5
#: How long a sweep may run before commits stop waiting for it.
SWEEP_LEASE = 300.0
_SWEEP_MARGIN = 30.0
_DELETE_BATCH = 1000


@dataclass(frozen=True)
class GCReport:
    chunks_total: int
    chunks_marked: int
    chunks_freed: int
    bytes_freed: int
    bytes_total: int
    dry_run: bool
    forced: bool
    seconds: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def check_head_records(ctx: BlockstoreContext) -> list[str]:
    """Reasons the catalog looks behind the store (empty when it is consistent).

    The records are read before the catalog: a commit advances the catalog before it writes
    its record, so a catalog read afterwards is never behind a record unless it really is
    stale. A removal deletes the record first: one that vanished meanwhile is no problem."""
    problems = []
    records: list[tuple[str, dict[str, object]]] = []
    for info in ctx.store.list(HEAD_PREFIX):
        try:
            records.append((info.key, json.loads(ctx.store.get(info.key))))
        except ObjectNotFound:
            continue  # the volume was removed since the listing
        except Exception:
            problems.append(f"unreadable head record {info.key}")
    catalog = {v.uid: v for v in ctx.heads.all()}
    for key, record in records:
        uid = record.get("uid")
        vol = catalog.get(str(uid))
        if vol is None:
            if ctx.store.stat(key) is None:
                continue  # removed while we looked
            problems.append(
                f"the store has volume {record.get('name')!r} ({uid}) which the catalog lacks"
            )
        elif vol.version < int(str(record.get("version", 0))):
            problems.append(
                f"volume {vol.name!r} is at version {vol.version} in the catalog but "
                f"{record['version']} in the store"
            )
    return problems


def collect(
    ctx: BlockstoreContext,
    *,
    grace: float = DEFAULT_GC_GRACE,
    max_fraction: float = DEFAULT_MAX_FRACTION,
    force: bool = False,
    dry_run: bool = False,
) -> GCReport:
    """Delete unreachable chunks older than ``grace`` seconds; see the module docstring."""
    started = time.monotonic()
    problems = check_head_records(ctx)
    if problems and not force:
        raise GCRefused(
            "GC refused: the catalog is behind the chunk store: " + "; ".join(problems[:3]),
            hint="point LOFT_CATALOG_URL at the right catalog; --force deletes anyway",
        )
    if problems:
        log.warning("GC forced despite: %s", "; ".join(problems))
    holder = f"gc-{time.time_ns()}"
    catalog = ctx.catalog
    with catalog.write() as conn:
        now = catalog.now(conn)
        row = conn.execute(
            select(gc_state.c.sweeping_until, gc_state.c.holder)
            .where(gc_state.c.id == 1)
            .with_for_update()
        ).first()
        if row is not None and row[0] is not None and row[0] > now:
            raise GCRefused(f"another GC ({row[1]}) is running")
        if not dry_run:
            # The sweep count moves on with the lease: every node's presence index stops
            # trusting what it recorded before (see presence.py).
            conn.execute(
                update(gc_state)
                .where(gc_state.c.id == 1)
                .values(
                    sweeping_until=now + SWEEP_LEASE,
                    holder=holder,
                    sweeps=gc_state.c.sweeps + 1,
                )
            )
        gc_started_at = now
    deadline = started + SWEEP_LEASE - _SWEEP_MARGIN
    try:
        # Roots and registrations from one consistent snapshot, taken once the sweep lease
        # is committed: a commit that registers later sees the lease and waits. Read
        # statement by statement (PostgreSQL's READ COMMITTED), a head advancing between
        # reading the heads and the registrations would hide the commit's chunks from both.
        with catalog.snapshot() as conn:
            inflight = {r[0] for r in conn.execute(select(inflight_chunks.c.key))}
            roots = ctx.heads.all_roots(conn)
        marked = set(inflight)
        for vol, vol_roots in roots:
            for root in set(vol_roots):
                manifest = manifest_for(ctx, vol, root)
                for page in manifest.page_hashes():
                    marked.add(chunk_key(page))
                for _, entry in manifest.entries():
                    if entry[:32] != ZERO_HASH:
                        marked.add(chunk_key(entry[:32]))
        listed = list(ctx.store.list(CHUNK_PREFIX))
        cutoff = gc_started_at - grace
        victims = [o for o in listed if o.key not in marked and o.mtime < cutoff]
        total_bytes = sum(o.size for o in listed)
        if listed and len(victims) > max_fraction * len(listed) and not force:
            raise GCRefused(
                f"GC refused: it would delete {len(victims)} of {len(listed)} chunks "
                f"(more than {max_fraction:.0%})",
                hint="check the catalog is the right one; --force deletes anyway",
            )
        if force and listed and len(victims) > max_fraction * len(listed):
            log.warning("GC forced to delete %d of %d chunks", len(victims), len(listed))
        if not dry_run:
            for i in range(0, len(victims), _DELETE_BATCH):
                if time.monotonic() > deadline:
                    raise GCRefused("GC stopped: its sweep lease ran out; run it again")
                ctx.store.delete_many([o.key for o in victims[i : i + _DELETE_BATCH]])
        return GCReport(
            chunks_total=len(listed),
            chunks_marked=len(marked),
            chunks_freed=len(victims),
            bytes_freed=sum(o.size for o in victims),
            bytes_total=total_bytes,
            dry_run=dry_run,
            forced=force,
            seconds=round(time.monotonic() - started, 3),
        )
    finally:
        if not dry_run:
            with catalog.write() as conn:
                conn.execute(
                    update(gc_state)
                    .where(gc_state.c.id == 1, gc_state.c.holder == holder)
                    .values(sweeping_until=None, holder=None)
                )
