"""Recovering a working copy after an unclean stop, and salvaging fenced ones as orphans.

Same epoch as the lease we just took over from: nobody else wrote the volume since, so the
working copy is adopted — dirty extents are kept (and committed at once), clean ones are
trusted only after a clean shutdown at the current head. Older epoch: someone else took the
volume over; the working copy is never merged, its dirty extents become the fork
``NAME.orphan-<epoch>`` on top of the head that writer last committed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace

from loft.blockstore.chunks import HEADER_SIZE
from loft.blockstore.commit import Buffers, commit_extents, manifest_for
from loft.blockstore.context import BlockstoreContext
from loft.blockstore.errors import SnapshotNotFound, VolumeExists
from loft.blockstore.heads import Takeover, VolumeRecord
from loft.blockstore.workcopy import ABSENT, DIRTY, WorkingCopy, pread_full, punch_hole

log = logging.getLogger(__name__)


def recover_working_copy(ctx: BlockstoreContext, tk: Takeover) -> WorkingCopy | None:
    """The working copy to continue from after taking over ``tk``, or None for a fresh one."""
    rec = tk.record
    wc = WorkingCopy.load(ctx.volumes_dir / rec.uid)
    if wc is None:
        return None
    h = wc.header
    if h.uid != rec.uid or h.size != rec.size or h.extent_size != rec.extent_size:
        wc.destroy()
        return None
    if os.fstat(wc.data_fd).st_size != h.size:
        # Cut or grown behind our back: reads past a short end would come back short
        # (what was cut reads as zeros; a clean extent it held fails its check).
        os.ftruncate(wc.data_fd, h.size)
    if h.epoch != tk.previous_epoch:
        if wc.dirty_extents():
            salvage_orphan(ctx, rec, wc)
        wc.destroy()
        return None
    trust_clean = h.clean_shutdown and h.base_version == rec.version
    if not trust_clean:
        _discard_non_dirty(wc)
    wc.write_all(
        replace(
            h,
            epoch=rec.epoch,
            base_version=rec.version,
            base_root=rec.root,
            clean_shutdown=False,
        )
    )
    wc.sync()
    return wc


def _discard_non_dirty(wc: WorkingCopy) -> None:
    """Turn every non-dirty extent into a hole: it may hold writes never flushed."""
    es = wc.header.extent_size
    size = wc.header.size
    run_start = None
    for e in range(wc.n_extents + 1):
        keep = e < wc.n_extents and wc.states[e] == DIRTY
        if e < wc.n_extents and not keep:
            wc.states[e] = ABSENT
            if run_start is None:
                run_start = e
        elif run_start is not None:
            start = run_start * es
            punch_hole(wc.data_fd, start, min(e * es, size) - start)
            run_start = None


def salvage_orphan(ctx: BlockstoreContext, rec: VolumeRecord, wc: WorkingCopy) -> VolumeRecord:
    """Commit a stale working copy's dirty extents as a new volume ``NAME.orphan-<epoch>``."""
    h = wc.header
    base_root, parent_snapshot = h.base_root, None
    try:
        snap = ctx.heads.get_snapshot(rec, f"takeover-{h.epoch}")
        base_root, parent_snapshot = snap.root, snap.name
    except SnapshotNotFound:
        pass
    name = f"{rec.name}.orphan-{h.epoch}"
    for n in range(1, 100):
        try:
            orphan = ctx.heads.create(
                name if n == 1 else f"{name}-{n}",
                size=rec.size,
                extent_size=rec.extent_size,
                durability=rec.durability,
                commit_interval=rec.commit_interval,
                max_dirty=rec.max_dirty,
                root=base_root,
                parent_uid=rec.uid,
                parent_snapshot=parent_snapshot,
                lineage=(rec.uid, *rec.lineage),
                raw_written=rec.raw_written,
            )
            break
        except VolumeExists:
            continue
    else:
        raise VolumeExists(name)
    es = rec.extent_size
    buffers = Buffers()

    def source(e: int) -> bytearray:
        buf = buffers.get(min(es, rec.size - e * es))
        pread_full(wc.data_fd, memoryview(buf)[HEADER_SIZE:], e * es)
        return buf

    dirty = wc.dirty_extents()
    res = commit_extents(
        ctx, orphan, None, manifest_for(ctx, orphan), dirty, source, buffers=buffers
    )
    log.warning(
        "volume %s: working copy of epoch %d was fenced; %d dirty extents saved as %s",
        rec.name,
        h.epoch,
        len(dirty),
        orphan.name,
    )
    return res.record
