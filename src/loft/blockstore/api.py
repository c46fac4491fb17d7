"""The blockstore's front door: every volume operation the CLI and the disk service use."""

from __future__ import annotations

import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from loft.blockstore import gc as gc_mod
from loft.blockstore.chunks import ZERO_HASH, chunk_key
from loft.blockstore.commit import DEFAULT_GC_GRACE, HEAD_PREFIX, zeros
from loft.blockstore.context import BlockstoreContext
from loft.blockstore.errors import (
    InvalidArgument,
    SnapshotNotFound,
    VolumeBusy,
    VolumeExists,
)
from loft.blockstore.heads import (
    DEFAULT_LEASE_MARGIN,
    DEFAULT_LEASE_TTL,
    SnapshotRecord,
    VolumeRecord,
    lease_held,
)
from loft.blockstore.holder import describe, new_holder_id
from loft.blockstore.names import check_geometry, check_name, check_not_reserved, split_ref
from loft.blockstore.snapview import SnapshotView
from loft.blockstore.volume import Volume, open_volume
from loft.blockstore.workcopy import ABSENT, DIRTY, WorkingCopy
from loft.config import Settings

DURABILITIES = ("remote", "local")
DEFAULT_SIZE = 16 << 30
DEFAULT_EXTENT_SIZE = 4 << 20
DEFAULT_COMMIT_INTERVAL = 5.0
#: Uncommitted bytes past which a volume's writers wait for a commit. With the commit
#: interval it bounds what a `local` volume can lose with its node: at most the interval
#: plus one commit of this much (a 1 GiB commit took 7 s to a chunk directory on the same
#: disk and 13 s to SeaweedFS on the 2-vCPU test machine: docs/nbd.md).
DEFAULT_MAX_DIRTY = 1 << 30
#: Automatic snapshots kept unconditionally; older ones are thinned logarithmically.
KEEP_AUTO_SNAPSHOTS = 8

Progress = Callable[[int], None]


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    uid: str
    size: int
    extent_size: int
    durability: str
    max_dirty: int
    version: int
    epoch: int
    parent: str | None
    holder: str | None
    snapshots: int
    extents_total: int
    extents_written: int
    extents_present: int | None
    extents_dirty: int | None
    bytes_stored: int
    raw_written: bool
    #: clean extents found not to match their chunk since the volume was opened (and
    #: fetched again); None when it is not open in this process
    extents_corrupt: int | None = None
    #: seconds the oldest flushed write not yet committed has waited, and the longest any
    #: waited since the volume was opened; None when it is not open in this process
    commit_lag_s: float | None = None
    commit_lag_max_s: float | None = None

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class TransferReport:
    bytes: int
    seconds: float
    extents_written: int
    uploaded_bytes: int = 0


@contextmanager
def open_image(path: str) -> Iterator[tuple[BinaryIO, int]]:
    """Open an image to import: a regular file only (its size is known up front; a
    device or a pipe would be read without end), with its size."""
    # O_NONBLOCK: opening a FIFO must not wait for a writer before it can be refused.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(
                f"{path} is not a regular file",
                hint="import a device or a pipe through stdin: loft volume import NAME - < FILE",
            )
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:  # O_NONBLOCK means nothing to a regular file's reads
        yield f, st.st_size


class Blockstore:
    """Volumes on this node and in the catalog."""

    def __init__(self, ctx: BlockstoreContext) -> None:
        self.ctx = ctx
        self.heads = ctx.heads

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Blockstore:
        return cls(BlockstoreContext.open(settings or Settings.from_env()))

    def close(self) -> None:
        self.ctx.close()

    # -- volumes ------------------------------------------------------------------------

    def create(
        self,
        name: str,
        *,
        size: int = DEFAULT_SIZE,
        extent_size: int = DEFAULT_EXTENT_SIZE,
        durability: str = "local",
        commit_interval: float = DEFAULT_COMMIT_INTERVAL,
        max_dirty: int = DEFAULT_MAX_DIRTY,
    ) -> VolumeRecord:
        """A new, empty (all-zero) volume."""
        check_not_reserved(check_name(name, new=True))
        check_geometry(size, extent_size)
        if durability not in DURABILITIES:
            raise InvalidArgument(f"durability must be 'remote' or 'local', not {durability!r}")
        if commit_interval <= 0:
            raise InvalidArgument("commit interval must be positive")
        if max_dirty < extent_size:
            raise InvalidArgument(
                f"max dirty ({max_dirty} bytes) must be at least one extent ({extent_size})"
            )
        return self.heads.create(
            name,
            size=size,
            extent_size=extent_size,
            durability=durability,
            commit_interval=commit_interval,
            max_dirty=max_dirty,
        )

    def get(self, name: str) -> VolumeRecord:
        return self.heads.get(check_name(name))

    def volumes(self) -> list[VolumeRecord]:
        return self.heads.all()

    def info(self, name: str) -> VolumeInfo:
        """What a volume is, where its data is, and how much the store holds for it."""
        rec = self.get(name)
        view = SnapshotView(self.ctx, rec, rec.root, rec.name)
        digests = {d for _, d in view.written_extents()}
        written = sum(1 for _ in view.written_extents())
        stats = self.ctx.store.stat_many([chunk_key(d) for d in digests]) if digests else {}
        stored = sum(i.size for i in stats.values() if i is not None)
        present = dirty = None
        wc = WorkingCopy.load(self.ctx.volumes_dir / rec.uid)
        if wc is not None:
            present = wc.n_extents - wc.states.count(ABSENT)
            dirty = wc.states.count(DIRTY)
            wc.close()
        parent = None
        if rec.parent_uid:
            parent = next(
                (v.name for v in self.heads.all() if v.uid == rec.parent_uid), rec.parent_uid
            )
            if rec.parent_snapshot:
                parent = f"{parent}@{rec.parent_snapshot}"
        return VolumeInfo(
            name=rec.name,
            uid=rec.uid,
            size=rec.size,
            extent_size=rec.extent_size,
            durability=rec.durability,
            max_dirty=rec.max_dirty,
            version=rec.version,
            epoch=rec.epoch,
            parent=parent,
            holder=rec.holder,
            snapshots=len(self.heads.snapshots(rec)),
            extents_total=rec.n_extents,
            extents_written=written,
            extents_present=present,
            extents_dirty=dirty,
            bytes_stored=stored,
            raw_written=rec.raw_written,
        )

    def open(
        self,
        name: str,
        *,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        lease_margin: float = DEFAULT_LEASE_MARGIN,
    ) -> Volume:
        """Open a volume read-write on this node (takes its lease)."""
        return open_volume(
            self.ctx, check_name(name), lease_ttl=lease_ttl, lease_margin=lease_margin
        )

    def digest(self, data: bytes | bytearray | memoryview) -> bytes:
        """The digest a volume's manifest holds for an extent of exactly ``data``
        (``ZERO_HASH`` for zeros), so a writer can tell which extents changed."""
        digest = self.ctx.codec.hash(data)
        return ZERO_HASH if digest == self.ctx.codec.zero_digest(len(data)) else digest

    def view(self, ref: str) -> SnapshotView:
        """A read-only view of ``NAME@SNAP`` (or of NAME's committed head)."""
        name, snap = split_ref(ref)
        rec = self.heads.get(name)
        if snap is None:
            return SnapshotView(self.ctx, rec, rec.root, rec.name)
        s = self.heads.get_snapshot(rec, snap)
        return SnapshotView(self.ctx, rec, s.root, f"{rec.name}@{s.name}")

    def remove(self, name: str) -> None:
        """Delete a volume (refused while someone holds its lease)."""
        rec = self.get(name)
        self._refuse_if_held(rec, "remove")
        self.ctx.store.delete_many([HEAD_PREFIX + rec.uid])
        self.heads.delete(rec)
        wc = WorkingCopy.load(self.ctx.volumes_dir / rec.uid)
        if wc is not None:
            wc.destroy()

    def _held(self, rec: VolumeRecord) -> bool:
        if rec.holder is None:
            return False
        with self.ctx.catalog.read() as conn:
            now = self.ctx.catalog.now(conn)
        return lease_held(rec, now)

    def served_at(self, name: str) -> str | None:
        """The control socket of the disk service serving the volume, if one is."""
        rec = self.get(name)
        return rec.control_socket if rec.control_socket and self._held(rec) else None

    def _refuse_if_held(self, rec: VolumeRecord, what: str) -> None:
        if not self._held(rec):
            return
        if rec.control_socket:
            raise VolumeBusy(
                f"cannot {what} volume {rec.name!r}: it is served by the disk service at "
                f"{rec.control_socket}",
                hint=f"run `loft disk release {rec.name}` or stop that disk service first",
            )
        raise VolumeBusy(
            f"cannot {what} volume {rec.name!r}: it is in use by {describe(rec.holder or '')}",
            hint="stop the writer using it first, or wait for its lease to expire",
        )

    # -- snapshots ----------------------------------------------------------------------

    def snapshot(self, name: str, snap: str) -> SnapshotRecord:
        """Commit what this node holds of the volume, then record its head as ``snap``."""
        check_name(snap, "snapshot", new=True)
        rec = self.get(name)
        if self._has_local_changes(rec):
            vol = self.open(name)
            try:
                rec = vol.commit()
            finally:
                vol.close()
        else:
            self._refuse_if_held(rec, "snapshot")
        return self.heads.add_snapshot(rec, snap, rec.version, rec.root)

    def _has_local_changes(self, rec: VolumeRecord) -> bool:
        wc = WorkingCopy.load(self.ctx.volumes_dir / rec.uid)
        if wc is None:
            return False
        try:
            return DIRTY in wc.states or not wc.header.clean_shutdown
        finally:
            wc.close()

    def snapshots(self, name: str) -> list[SnapshotRecord]:
        return self.heads.snapshots(self.get(name))

    def remove_snapshot(self, name: str, snap: str) -> None:
        rec = self.get(name)
        self.heads.delete_snapshot(self.heads.get_snapshot(rec, check_name(snap, "snapshot")))

    def fork(self, ref: str, new: str) -> VolumeRecord:
        """A new volume whose head is a snapshot's root: constant time, no data copied."""
        name, snap = split_ref(ref)
        if snap is None:
            raise InvalidArgument(f"fork needs NAME@SNAPSHOT, got {ref!r}")
        check_not_reserved(check_name(new, new=True))
        if self.heads.find(new) is not None:
            raise VolumeExists(new)
        rec = self.heads.get(name)
        s = self.heads.get_snapshot(rec, snap)
        return self.heads.create(
            new,
            size=rec.size,
            extent_size=rec.extent_size,
            durability=rec.durability,
            commit_interval=rec.commit_interval,
            max_dirty=rec.max_dirty,
            root=s.root,
            parent_uid=rec.uid,
            parent_snapshot=s.name,
            lineage=(rec.uid, *rec.lineage),
            raw_written=rec.raw_written,
        )

    def restore(self, name: str, snap: str) -> tuple[VolumeRecord, str]:
        """Point the volume back at a snapshot. Dirty data is committed first and the
        replaced head is kept as an automatic snapshot, so a restore can be undone.
        Returns the new head and the automatic snapshot's name."""
        rec = self.get(name)
        target = self.heads.get_snapshot(rec, check_name(snap, "snapshot"))
        self._refuse_if_held(rec, "restore")
        vol = self.open(name)
        try:
            rec = vol.commit()
        except BaseException:
            vol.close()
            raise
        wc = vol.detach()
        auto = f"restore-{time.strftime('%Y%m%dT%H%M%S')}-v{rec.version}"
        try:
            new = self.heads.restore_head(rec, vol.holder, target, auto)
        except BaseException:
            wc.close()
            self.heads.release(rec.id, rec.epoch, vol.holder)
            raise
        wc.destroy()
        self.prune_auto_snapshots(new)
        return new, auto

    def prune_auto_snapshots(self, rec: VolumeRecord, keep: int = KEEP_AUTO_SNAPSHOTS) -> int:
        """Drop automatic snapshots beyond the last ``keep``, keeping older ones spaced
        logarithmically (each kept one at least twice as old as the previous)."""
        autos = [s for s in self.heads.snapshots(rec) if s.auto]
        autos.sort(key=lambda s: s.created_at, reverse=True)
        with self.ctx.catalog.read() as conn:
            now = self.ctx.catalog.now(conn)
        dropped = 0
        last_age = None
        for s in autos[keep:]:
            age = max(now - s.created_at, 1e-3)
            if last_age is None or age >= 2 * last_age:
                last_age = age
                continue
            self.heads.delete_snapshot(s)
            dropped += 1
        return dropped

    # -- import / export ----------------------------------------------------------------

    def import_image(
        self, name: str, src: BinaryIO, size: int | None, progress: Progress | None = None
    ) -> TransferReport:
        """Write a raw image into the volume from offset 0, then commit. An image larger
        than the volume changes nothing. The volume is flagged raw-written (see
        :meth:`Volume.import_image`)."""
        rec = self.get(name)
        if size is not None and size > rec.size:
            raise InvalidArgument(
                f"image is {size} bytes but volume {name!r} is {rec.size} bytes",
                hint="create a bigger volume",
            )
        self._refuse_if_held(rec, "import into")
        started = time.monotonic()
        vol = self.open(name)
        try:
            res = vol.import_image(src, progress)
        finally:
            vol.close()
        n = len(res.digests)
        written = min(rec.size, n * rec.extent_size)
        return TransferReport(written, time.monotonic() - started, n, res.uploaded_bytes)

    def export_image(
        self, ref: str, dst: BinaryIO, progress: Progress | None = None
    ) -> TransferReport:
        """Write the volume (its committed head, or a snapshot) as a raw image. Zero
        extents are skipped when ``dst`` can seek, so the output file is sparse."""
        view = self.view(ref)
        started = time.monotonic()
        seekable, start = _sparse_target(dst)
        es = view.extent_size
        n_extents = -(-view.size // es)
        written = 0
        window = 8
        extents = list(range(n_extents))
        for i in range(0, n_extents, window):
            batch = extents[i : i + window]
            view.cache(batch[0] * es, min(view.size, (batch[-1] + 1) * es) - batch[0] * es)
            for e in batch:
                length = min(es, view.size - e * es)
                if view.digest(e) == ZERO_HASH:
                    if seekable:
                        dst.seek(length, os.SEEK_CUR)
                    else:
                        dst.write(zeros(length))
                else:
                    dst.write(view.extent(e))
                    written += 1
                if progress:
                    progress(length)
        if seekable:
            if n_extents and view.digest(n_extents - 1) == ZERO_HASH:
                # Skipped up to the end: write the last byte, since truncate() cannot
                # extend every stream (an in-memory buffer).
                dst.seek(-1, os.SEEK_CUR)
                dst.write(b"\0")
            dst.truncate(start + view.size)
        dst.flush()
        return TransferReport(view.size, time.monotonic() - started, written)

    # -- GC -----------------------------------------------------------------------------

    def gc(
        self,
        *,
        grace: float = DEFAULT_GC_GRACE,
        max_fraction: float = gc_mod.DEFAULT_MAX_FRACTION,
        force: bool = False,
        dry_run: bool = False,
    ) -> gc_mod.GCReport:
        return gc_mod.collect(
            self.ctx, grace=grace, max_fraction=max_fraction, force=force, dry_run=dry_run
        )


def _sparse_target(dst: BinaryIO) -> tuple[bool, int]:
    """Whether zeros may be skipped by seeking in ``dst``, and where the image starts.
    Not in append mode (writes would land at the end whatever the position), and the image
    ends at ``start + size`` (stdout may be a file with something written before it)."""
    try:
        if not dst.seekable():
            return False, 0
        start = dst.tell()
    except (AttributeError, OSError, ValueError):
        return False, 0
    try:
        if fcntl.fcntl(dst.fileno(), fcntl.F_GETFL) & os.O_APPEND:
            return False, 0
    except (AttributeError, OSError, ValueError):
        pass  # no file descriptor (an in-memory buffer): seeking is fine
    return True, start


__all__ = [
    "Blockstore",
    "SnapshotNotFound",
    "TransferReport",
    "VolumeInfo",
    "new_holder_id",
    "open_image",
]
