"""A volume opened read-write on this node: the data path, fetch and eviction.

Reads and writes go to the working copy with ``os.pread``/``os.pwrite``; an extent not
present locally is fetched on first touch (lazy loading), written around the page cache
and read from memory at first (fill.py), and evicted again under the node's byte budget.
``flush()`` makes completed writes durable on the node and has them committed (at once in
``remote`` durability, within ``commit_interval`` in ``local``); the volume's
:class:`~loft.blockstore.committer.Committer` captures, uploads and advances the head, and
its :class:`~loft.blockstore.lease.LeaseKeeper` keeps the lease, so the writer stops
acknowledging writes and flushes at its own lease deadline.

Thread-safe; every method may be called from any thread. Calls that can block on the
chunk store are those for which :meth:`Volume.is_resident` is False.

One idea although over 500 lines: every method here reads or changes the per-extent
state (absent / clean / dirty, write generations, eviction counts) under one lock, and
the lock-free read depends on exactly how fetch, eviction and close order their steps;
split apart, those orderings would be contracts between modules instead of one file.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import replace
from typing import BinaryIO

from loft.blockstore.budget import Evictable
from loft.blockstore.capture import Capture
from loft.blockstore.chunks import ZERO_HASH
from loft.blockstore.commit import CommitResult, is_zero, manifest_for
from loft.blockstore.committer import Committer
from loft.blockstore.context import BlockstoreContext
from loft.blockstore.errors import (
    BlockstoreError,
    InvalidArgument,
    LeaseLost,
    NotFast,
    VolumeIOError,
)
from loft.blockstore.extents import (
    MAX_STATUS_EXTENTS,
    STATE_HOLE,
    STATE_ZERO,
    append_run,
    entry_depth,
    evict_all,
    write_pieces,
)
from loft.blockstore.fill import DirectFill, FreshExtents
from loft.blockstore.heads import (
    DEFAULT_LEASE_MARGIN,
    DEFAULT_LEASE_TTL,
    VolumeRecord,
    writer_tag,
)
from loft.blockstore.holder import new_holder_id
from loft.blockstore.lease import LeaseKeeper
from loft.blockstore.manifest import Manifest
from loft.blockstore.readahead import DEFAULT_WINDOW, ReadAhead
from loft.blockstore.workcopy import ABSENT, CLEAN, DIRTY, Header, WorkingCopy, punch_hole
from loft.blockstore.writebehind import LARGE_WRITE, WriteBehind
from loft.directio import read_cached
from loft.objstore import ObjectStoreError

__all__ = ["STATE_HOLE", "STATE_ZERO", "Volume", "open_volume"]

log = logging.getLogger(__name__)

_ALIGN = 4096
_FETCH_WAIT = 60.0
#: The largest single write a client sends (NBD's maximum payload): near ``max_dirty``,
#: is_resident() sends a request touching an extent not dirty yet to a worker thread
#: while one this large could still find the volume full and have to wait for a commit,
#: which must not happen on the event loop.
_LARGEST_WRITE = 32 << 20


class Volume:
    """A read-write volume holding the lease. Open with :func:`open_volume`."""

    readonly = False

    def __init__(
        self,
        ctx: BlockstoreContext,
        rec: VolumeRecord,
        holder: str,
        wc: WorkingCopy,
        *,
        lease_ttl: float,
        lease_margin: float,
        deadline: float,
    ) -> None:
        self.ctx = ctx
        self.name = rec.name
        self.size = rec.size
        self.extent_size = rec.extent_size
        self.holder = holder
        self.durability = rec.durability
        self.commit_interval = rec.commit_interval
        self.max_dirty = rec.max_dirty
        #: dirty extents past which a write that dirties more waits for a commit
        self._dirty_limit = max(1, rec.max_dirty // rec.extent_size)
        #: dirty extents from which requests leave the event loop (see _LARGEST_WRITE)
        self._dirty_soft = max(0, self._dirty_limit - _LARGEST_WRITE // rec.extent_size - 1)
        #: writes that waited for a commit because the volume held max_dirty
        self.throttled_writes = 0
        self._wc = wc
        self._fd = wc.data_fd
        #: starts the writeback of streamed writes before the client flushes them
        self._behind = WriteBehind(self._fd)
        #: fetched extents are written around the page cache, when the disk allows it
        self._fill = DirectFill(self._fd)
        #: 1 for an extent fetched that way (the page cache may not hold it: see fill.py)
        self._direct = bytearray(wc.n_extents)
        # Clean extents kept from before this start are local copies nobody has checked:
        # the disk may have rotted, or been changed, while the volume was not served. They
        # stay ABSENT in ``_states`` until _fetch() has compared them with their chunk, so
        # every path that would trust their bytes (the lock-free read included) treats them
        # as not here yet and goes through the fetch, at no cost to the paths themselves.
        wc.hold_unverified()
        self._states = wc.states
        #: CLEAN for a clean extent from before this start not yet checked, else 0
        self._unverified = wc.unverified
        #: extents whose bytes did not match their chunk when checked (fetched again)
        self.corrupt_extents = 0
        self._n = wc.n_extents
        self._gen = array("Q", bytes(8 * self._n))
        #: extents read since the budget last considered evicting them (see referenced())
        self._referenced = bytearray(self._n)
        #: how often each extent was evicted (lets read() go without the lock)
        self._evictions = array("I", bytes(4 * self._n))
        self._dirty = {i for i, s in enumerate(self._states) if s == DIRTY}
        self._tag = rec.writer_tag
        self._lineage_tags = [writer_tag(u) for u in rec.lineage]
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._fetching: dict[int, threading.Event] = {}
        #: extents an import replaced while they were being fetched (see _committed())
        self._superseded: set[int] = set()
        self._closed = False
        self._readahead = ReadAhead(
            self._n,
            # Only when the window is at most an eighth of the node's budget: fetching
            # ahead must not evict what a reader is about to use (and it may overshoot
            # the budget by the fetches under way, until they evict what they displace).
            DEFAULT_WINDOW if ctx.budget.max_bytes >= 8 * DEFAULT_WINDOW * rec.extent_size else 0,
            ctx.fetch_pool,
            absent=lambda e: self._states[e] == ABSENT and e not in self._fetching,
            fetch=self._fetch_ahead,
        )
        #: extents fetched ahead and not read since (see readahead.py)
        self._ra_marks = self._readahead.marks
        #: extents just fetched around the page cache, in memory for their first reads:
        #: twice the read-ahead window, so a sequential reader finds every one there
        self._fresh = FreshExtents(2 * max(DEFAULT_WINDOW, 1) if self._fill.enabled else 0)
        self.lease = LeaseKeeper(
            ctx.heads,
            rec,
            holder,
            ttl=lease_ttl,
            margin=lease_margin,
            deadline=deadline,
            on_fenced=self._wake_waiters,
        )
        self._committer = Committer(
            ctx,
            rec,
            manifest_for(ctx, rec),
            self.lease,
            self._cond,
            data_fd=self._fd,
            aside_dir=wc.directory,
            extent_len=self._elen,
            on_committed=self._committed,
            dirty_now=lambda: {e: self._gen[e] for e in self._dirty},
        )

    # -- properties -------------------------------------------------------------------

    @property
    def record(self) -> VolumeRecord:
        """The head as this writer last committed it."""
        return self._committer.record

    @property
    def last_commit(self) -> CommitResult | None:
        """What the last commit (or import) uploaded, once there was one."""
        return self._committer.last_commit

    @property
    def _manifest(self) -> Manifest:
        return self._committer.manifest

    @property
    def dirty_extents(self) -> int:
        return len(self._dirty)

    @property
    def commit_lag(self) -> float:
        """Seconds the oldest flushed write not committed yet has waited (0: none)."""
        with self._lock:
            return self._committer.lag()

    @property
    def max_commit_lag(self) -> float:
        """The longest a flushed write waited to be committed since the volume opened."""
        return self._committer.max_lag

    @property
    def present_extents(self) -> int:
        """Extents the working copy holds bytes of (unverified ones included)."""
        return self._n - self._states.count(ABSENT) + self._unverified.count(CLEAN)

    def _elen(self, e: int) -> int:
        return min(self.extent_size, self.size - e * self.extent_size)

    # -- checks -----------------------------------------------------------------------

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise InvalidArgument(
                f"range {offset}+{length} is outside volume {self.name!r} of {self.size} bytes"
            )

    def _check_writable(self) -> None:
        fenced = self.lease.fenced
        if fenced is not None:
            raise fenced
        if self._closed:
            raise VolumeIOError(f"volume {self.name!r} is closed")
        self.lease.check()

    # -- data path --------------------------------------------------------------------

    def is_resident(self, offset: int, length: int) -> bool:
        """True when serving ``[offset, offset+length)`` needs nothing from the chunk store
        (nor a check of an unverified extent: those are ABSENT until checked)."""
        if length <= 0:
            return True
        es = self.extent_size
        first, last = offset // es, (offset + length - 1) // es
        st = self._states
        # Near max_dirty, a write to an extent not dirty yet might wait for a commit: not
        # on the event loop. Extents already dirty never wait, and a volume whose every
        # extent is dirty (rewritten in place) must keep its fast path.
        near = len(self._dirty) >= self._dirty_soft
        if first == last:  # the common case, on the event loop for every request
            state = st[first]
            return state != ABSENT and (not near or state == DIRTY)
        return all(st[e] != ABSENT and (not near or st[e] == DIRTY) for e in range(first, last + 1))

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``."""
        es = self.extent_size
        first = offset // es
        if length > 0 and offset >= 0 and offset + length <= self.size:
            if first == (offset + length - 1) // es:
                # The common case, on the event loop for every small read: one extent,
                # already here (and checked, if kept from before this start: until then
                # it is ABSENT), read without the lock. An eviction counts itself before
                # it punches the hole (and close() flags itself before it closes the
                # file), so a read that raced with either sees it and is redone below.
                evictions = self._evictions
                seen = evictions[first]
                if self._states[first] != ABSENT:
                    self._referenced[first] = 1
                    fresh = self._fresh.get(first)
                    if fresh is not None:
                        # Fetched while this request waited for a worker thread: its
                        # bytes are in memory, maybe not in the page cache.
                        if self._ra_marks[first]:
                            self._readahead.used(first)
                        start = offset - first * es
                        return bytes(fresh[start : start + length])
                    try:
                        data = os.pread(self._fd, length, offset)
                    except OSError:
                        data = None  # closed meanwhile? the locked path below says
                    if data is not None and evictions[first] == seen and not self._closed:
                        if self._ra_marks[first]:
                            self._readahead.used(first)
                        return data
        else:
            self._check_range(offset, length)
            return b""
        extents = range(first, (offset + length - 1) // es + 1)
        victims: list[tuple[Evictable, int]] = []
        fetched = False
        try:
            for _ in range(4):
                with self._lock:
                    if self._closed:
                        raise VolumeIOError(f"volume {self.name!r} is closed")
                    missing = [e for e in extents if self._states[e] == ABSENT]
                    if not missing:
                        if not fetched:  # a read that fetched is no second use
                            for e in extents:
                                self._referenced[e] = 1
                        marked = [e for e in extents if self._ra_marks[e]]
                        fresh = self._fresh.get(first)
                        if fresh is not None and len(extents) == 1:
                            start = offset - first * es
                            out = bytes(fresh[start : start + length])
                        else:
                            out = os.pread(self._fd, length, offset)
                if not missing:
                    for e in marked:
                        self._readahead.used(e)
                    return out
                if not fetched:
                    self._readahead.missed(missing[0], missing[-1])
                victims += self._ensure_present(missing)
                fetched = True
        finally:
            evict_all(victims)
        raise VolumeIOError(f"volume {self.name!r}: extents keep disappearing while read")

    def read_nowait(self, offset: int, length: int) -> bytes | bytearray | memoryview | None:
        """:meth:`read` for the event loop, of any range: None when its bytes would
        have to come from the chunk store or the disk, or the extent changed meanwhile
        (the caller reads them on a worker thread). An extent just fetched is served
        from memory without a copy."""
        es = self.extent_size
        first, last = offset // es, (offset + length - 1) // es
        if first != last or length <= 0 or offset < 0 or offset + length > self.size:
            span = slice(first, last + 1)
            if (
                length > 0
                and first != last
                and (any(self._direct[span]) or ABSENT in self._states[span])
            ):
                return None
            return self.read(offset, length)
        # read()'s lock-free path (see there), inline: every request on the event loop
        # comes here, and a call less is a measurable share of a 4 KiB read.
        evictions = self._evictions
        seen = evictions[first]
        if self._states[first] == ABSENT:
            return None
        data: bytes | bytearray | memoryview | None
        try:
            if not self._direct[first]:
                data = os.pread(self._fd, length, offset)  # through the page cache
            elif (fresh := self._fresh.get(first)) is not None:
                start = offset - first * es
                data = fresh[start : start + length]
            else:
                data = read_cached(self._fd, offset, length)
        except OSError:
            return None  # closed meanwhile? the worker thread's read says
        if data is None or evictions[first] != seen or self._closed:
            return None
        self._referenced[first] = 1
        if self._ra_marks[first]:
            self._readahead.used(first)
        return data

    def _needs_fetch(self, offset: int, length: int) -> list[int]:
        """Absent extents a mutation of the range must fetch first (it covers them only
        partly), plus any being fetched right now. Call with the lock held."""
        es = self.extent_size
        end = offset + length
        out = []
        for e in range(offset // es, (end - 1) // es + 1):
            if self._states[e] != ABSENT:
                continue
            base = e * es
            if e in self._fetching or offset > base or end < base + self._elen(e):
                out.append(e)
        return out

    def _mutating(self, offset: int, length: int) -> None:
        """Bookkeeping before changing a range of the data file (lock held): preserve
        captured bytes, mark extents dirty (durably ordered before the data), bump gens."""
        self._committer.preserve(offset, length)
        es = self.extent_size
        for e in range(offset // es, (offset + length - 1) // es + 1):
            if self._states[e] != DIRTY:
                if self._states[e] == CLEAN or self._unverified[e]:
                    # (an unverified extent gets here only when the change covers it whole)
                    self.ctx.budget.forget(self, e)
                    self._fresh.drop(e)
                self._wc.set_state(e, DIRTY)
                self._dirty.add(e)
            self._gen[e] += 1

    def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        """Write ``data`` at ``offset``; with ``fua`` it is durable before returning."""
        n = len(data)
        if n < LARGE_WRITE:
            self._mutate(offset, n, lambda: write_pieces(self._fd, data, offset), "write")
        else:
            whole = self._rewrite(offset, n)
            self._mutate(offset, n, lambda: self._write_large(offset, data, whole), "write")
        if fua:
            self.flush()

    def _rewrite(self, offset: int, length: int) -> bool:
        """Whether every extent of the range is dirty already (no lock: a hint only)."""
        es, st = self.extent_size, self._states
        return all(st[e] == DIRTY for e in range(offset // es, (offset + length - 1) // es + 1))

    def _write_large(self, offset: int, data: bytes | bytearray | memoryview, whole: bool) -> None:
        if whole:
            # Extents written since their last commit have their pages in the page cache
            # (unless the machine restarted since), in the folios their first writes made,
            # which one call does not change. With write-behind for flushing clients only,
            # drained 1 MiB rewrites went from ~1,790 to ~2,050 MB/s (docs/benchmarks.md,
            # "Drained 1 MiB writes of a volume").
            os.pwrite(self._fd, data, offset)
        else:
            write_pieces(self._fd, data, offset)
        self._behind.wrote(offset, len(data))

    def zero(
        self,
        offset: int,
        length: int,
        *,
        fua: bool = False,
        may_trim: bool = True,
        fast_only: bool = False,
    ) -> None:
        """Make the range read as zeros. Whole extents cost nothing (a hole); a partly
        covered absent extent is fetched first, which ``fast_only`` refuses (NotFast)."""
        del may_trim  # zeros are holes either way: content addressing stores no zeros
        self._mutate(offset, length, lambda: self._zero_locked(offset, length), "zero", fast_only)
        if fua:
            self.flush()

    def _mutate(
        self,
        offset: int,
        length: int,
        apply: Callable[[], None],
        what: str,
        fast_only: bool = False,
    ) -> None:
        """Fetch what a change of the range needs (partly covered absent extents), then
        do the bookkeeping and ``apply`` it under the lock."""
        self._check_writable()
        self._check_range(offset, length)
        if length == 0:
            return
        victims: list[tuple[Evictable, int]] = []
        try:
            for _ in range(4):
                with self._lock:
                    self._throttle_locked(offset, length)
                    need = self._needs_fetch(offset, length)
                    if self.ctx.reserve.low() and self._grows(offset, length, what, need):
                        self.ctx.reserve.refuse_growth(f"volume {self.name!r}: {what}")
                    if not need:
                        self._mutating(offset, length)
                        apply()
                        return
                if fast_only:
                    raise NotFast("zeroing part of an extent not present locally needs a fetch")
                victims += self._ensure_present(need)
            raise VolumeIOError(f"volume {self.name!r}: could not fetch extents to {what}")
        finally:
            evict_all(victims)

    def _throttle_locked(self, offset: int, length: int) -> None:
        """Wait (lock held; released while waiting) while dirtying the range would take
        the volume's uncommitted data past ``max_dirty``. Writes to extents already dirty
        never wait, and neither does one when nothing else is dirty, however large.

        A commit is what makes room, and a commit needs a flush point: the disk is
        captured at once for the next commit, flushed by the client or not, so a client
        that never flushes is slowed down, never stalled. That capture is a flush point
        the volume makes itself (as when a local commit is due): the disk as it is now,
        every completed write in it, as after a power cut at this instant, never a
        mixture of states."""
        es = self.extent_size
        first, last = offset // es, (offset + length - 1) // es
        if len(self._dirty) + last - first + 1 <= self._dirty_limit:
            return  # the common case: one comparison
        waited = False
        while True:
            new = sum(1 for e in range(first, last + 1) if self._states[e] != DIRTY)
            if not new or not self._dirty or len(self._dirty) + new <= self._dirty_limit:
                return
            self._check_writable()  # fenced or closed: fail rather than wait for nothing
            if not waited:
                waited = True
                self.throttled_writes += 1
            self._capture_locked()
            self._cond.wait(1.0)

    def _grows(self, offset: int, length: int, what: str, need: list[int]) -> bool:
        """Whether a mutation takes new space in the working copy (lock held): a write
        into any hole (an absent extent, or a zero one fetched as a hole), or a zeroing
        that must fetch the extents it covers only partly (``need``)."""
        if what != "write":
            return bool(need)
        return os.lseek(self._fd, offset, os.SEEK_HOLE) < offset + length

    def _zero_locked(self, offset: int, length: int) -> None:
        end = offset + length
        lo = -(-offset // _ALIGN) * _ALIGN
        hi = end // _ALIGN * _ALIGN
        if lo < hi:
            punch_hole(self._fd, lo, hi - lo)
            if offset < lo:
                os.pwrite(self._fd, bytes(lo - offset), offset)
            if hi < end:
                os.pwrite(self._fd, bytes(end - hi), hi)
        else:
            os.pwrite(self._fd, bytes(length), offset)

    def trim(self, offset: int, length: int, fua: bool = False) -> None:
        """Discard the range: whole extents and present parts become zeros; parts of
        absent extents are left alone (a trim is advisory, never worth a fetch)."""
        self._check_writable()
        self._check_range(offset, length)
        es = self.extent_size
        end = offset + length
        with self._lock:
            pos = offset
            while pos < end:
                e = pos // es
                base = e * es
                stop = min(end, base + self._elen(e))
                whole = pos == base and stop == base + self._elen(e)
                if (whole and e not in self._fetching) or self._states[e] != ABSENT:
                    self._mutating(pos, stop - pos)
                    self._zero_locked(pos, stop - pos)
                pos = stop
        if fua:
            self.flush()

    def cache(self, offset: int, length: int) -> None:
        """Prefetch the range from the chunk store."""
        self._check_range(offset, length)
        if length:
            es = self.extent_size
            extents = list(range(offset // es, (offset + length - 1) // es + 1))
            evict_all(self._ensure_present(extents))

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        """``(length, flags)`` runs from ``offset``; flags HOLE|ZERO for zeros, 0 for data."""
        self._check_range(offset, length)
        out: list[tuple[int, int]] = []
        es = self.extent_size
        end = offset + length
        pos = offset
        with self._lock:
            while pos < end and len(out) < MAX_STATUS_EXTENTS:
                e = pos // es
                stop = min(end, e * es + self._elen(e))
                if self._states[e] != DIRTY:
                    # An absent or clean extent is its chunk, whole: the manifest says. Only
                    # a dirty one needs the file asked (SEEK_DATA/SEEK_HOLE), which waits for
                    # the file's lock while a fetch writes another extent: during cold reads
                    # (every 1 MiB read asks its block status first) the event loop was
                    # seen blocked in ext4_llseek, holding the volume's lock meanwhile.
                    zero = self._manifest.entry(e)[:32] == ZERO_HASH
                    append_run(out, stop - pos, STATE_HOLE | STATE_ZERO if zero else 0)
                    pos = stop
                    continue
                while pos < stop:
                    try:
                        data_at = os.lseek(self._fd, pos, os.SEEK_DATA)
                    except OSError:  # ENXIO: only a hole follows
                        data_at = stop
                    if data_at > pos:
                        run_end = min(data_at, stop)
                        append_run(out, run_end - pos, STATE_HOLE | STATE_ZERO)
                    else:
                        run_end = min(os.lseek(self._fd, pos, os.SEEK_HOLE), stop)
                        append_run(out, run_end - pos, 0)
                    pos = run_end
        return out

    def allocation_depth(self, offset: int, length: int) -> list[tuple[int, int]]:
        """``(length, depth)`` runs: 0 never written, 1 written in this volume, 2+ inherited
        from the fork parent, grandparent..."""
        self._check_range(offset, length)
        out: list[tuple[int, int]] = []
        es = self.extent_size
        end = offset + length
        pos = offset
        while pos < end and len(out) < MAX_STATUS_EXTENTS:
            e = pos // es
            stop = min(end, e * es + self._elen(e))
            if self._states[e] == DIRTY:
                depth = 1
            else:
                depth = entry_depth(self._manifest.entry(e), self._tag, self._lineage_tags)
            append_run(out, stop - pos, depth)
            pos = stop
        return out

    # -- fetching and eviction --------------------------------------------------------

    def _ensure_present(self, extents: list[int]) -> list[tuple[Evictable, int]]:
        """Fetch the absent ones among ``extents`` (or wait for fetches under way).
        Returns the extents the budget wants evicted to make room: the caller evicts them
        (:func:`_evict`) once its own operation is done, so it never evicts what it fetched
        before using it, however small the budget."""
        to_fetch: list[int] = []
        unverified: list[int] = []
        waits: list[threading.Event] = []
        with self._lock:
            for e in dict.fromkeys(extents):
                if self._states[e] != ABSENT:
                    continue
                ev = self._fetching.get(e)
                if ev is not None:
                    waits.append(ev)
                else:
                    self._fetching[e] = threading.Event()
                    to_fetch.append(e)
                    if self._unverified[e]:
                        unverified.append(e)
        victims: list[tuple[Evictable, int]] = []
        try:
            if to_fetch:
                victims = self._fetch(to_fetch, unverified)
        finally:
            with self._lock:
                for e in to_fetch:
                    self._fetching.pop(e).set()
                    self._superseded.discard(e)
        for ev in waits:
            if not ev.wait(_FETCH_WAIT):
                evict_all(victims)
                raise VolumeIOError(f"volume {self.name!r}: timed out waiting for a fetch")
        return victims

    def _fetch_ahead(self, extent: int) -> None:
        """Fetch one extent ahead of a sequential reader (on the fetch pool)."""
        if not self._closed:
            evict_all(self._ensure_present([extent]))

    def _fetch(self, extents: list[int], unverified: list[int]) -> list[tuple[Evictable, int]]:
        """Fetch, write into the data file and mark clean; returns the extents the budget
        wants evicted to make room. The ``unverified`` among them are checked first and
        fetched only if their bytes do not match their chunk. The caller registered every
        extent in ``_fetching``: nobody else changes their bytes or states meanwhile (an
        import may replace them in the manifest: see ``_superseded``)."""
        try:
            digests = {e: self._manifest.entry(e)[:32] for e in extents}
            for e in self._verify(unverified, digests):
                del digests[e]  # its bytes are the chunk's: nothing to fetch
            wanted = sorted({d for d in digests.values() if d != ZERO_HASH})
            values = self.ctx.cache.get_many(wanted) if wanted else {}
            es = self.extent_size
            direct: dict[int, bytes | memoryview] = {}
            for e, d in digests.items():
                if d == ZERO_HASH:
                    # An absent extent is a hole by rule; make sure (the disk may say
                    # otherwise after a restart): one cheap call, once per fetch.
                    punch_hole(self._fd, e * es, self._elen(e))
                    continue
                data = self.ctx.chunk_view(d, values[d])
                if len(data) != self._elen(e):
                    raise VolumeIOError(f"chunk {d.hex()} has the wrong size for extent {e}")
                if self._fill.write(data, e * es):
                    direct[e] = data
                else:
                    write_pieces(self._fd, data, e * es)
        except ObjectStoreError as err:
            raise VolumeIOError(f"volume {self.name!r}: fetching extents failed: {err}") from err
        victims: list[tuple[Evictable, int]] = []
        with self._lock:
            for e in extents:
                self._unverified[e] = 0  # checked by now, or replaced
                if e in self._superseded:
                    # An import replaced the extent while we fetched the chunk it had.
                    self.ctx.budget.forget(self, e)
                    punch_hole(self._fd, e * self.extent_size, self._elen(e))
                elif self._states[e] == ABSENT:
                    if e in direct:
                        self._direct[e] = 1
                        self._fresh.put(e, direct[e])
                    self._states[e] = CLEAN
                    victims += self.ctx.budget.add(self, e, self._elen(e))
        return victims

    def _verify(self, extents: list[int], digests: dict[int, bytes]) -> list[int]:
        """The ``extents`` whose bytes in the working copy match their chunk digest (a zero
        extent: all zeros). The others are counted, logged and punched to a hole, ready to
        be fetched again. Costs a read and a keyed hash of each extent (about 1 ms per
        4 MiB), once per extent per start, on the fetching thread: never the event loop,
        since is_resident() is False for an extent not verified yet."""
        good = []
        es = self.extent_size
        for e in extents:
            data = os.pread(self._fd, self._elen(e), e * es)
            want = digests[e]
            if len(data) == self._elen(e) and (
                is_zero(data) if want == ZERO_HASH else self.ctx.codec.hash(data) == want
            ):
                good.append(e)
                continue
            # "event key=value" like the disk service's own lines (its log is JSON).
            log.warning(
                'volume.extent_corrupt volume=%s extent=%d expected="%s" found="%s"',
                self.name,
                e,
                "zero" if want == ZERO_HASH else want[:8].hex(),
                self.ctx.codec.hash(data)[:8].hex(),
            )
            with self._lock:  # close() closes the file under the lock: never punch after
                if self._closed:
                    raise VolumeIOError(f"volume {self.name!r} is closed")
                self.corrupt_extents += 1
                self._unverified[e] = 0
                self.ctx.budget.forget(self, e)
                punch_hole(self._fd, e * es, self._elen(e))
        return good

    def referenced(self, extent: int) -> bool:
        """Whether ``extent`` was read since the budget last asked (forgetting it). No
        lock: a read racing with this only changes which extent is evicted first."""
        was = self._referenced[extent]
        self._referenced[extent] = 0
        return bool(was)

    def evict(self, extent: int) -> None:
        """Drop a clean extent from the working copy (the budget asked for room)."""
        with self._lock:
            if self._closed or extent in self._fetching or not self._droppable(extent):
                return
            self._drop_locked(extent)

    def _droppable(self, extent: int) -> bool:
        """A clean extent, verified or not: its bytes can be fetched again (lock held)."""
        return self._states[extent] == CLEAN or self._unverified[extent] == CLEAN

    def _drop_locked(self, extent: int) -> None:
        """Make a clean extent absent again (lock held). It is counted and marked before
        the hole exists: see read()."""
        self._evictions[extent] = (self._evictions[extent] + 1) & 0xFFFFFFFF
        self._states[extent] = ABSENT
        self._unverified[extent] = 0
        self._direct[extent] = 0
        self._fresh.drop(extent)
        punch_hole(self._fd, extent * self.extent_size, self._elen(extent))

    # -- flush and commit -------------------------------------------------------------

    def flush(self, *, closing: bool = False) -> None:
        """Make every completed write durable on the node and have it committed: in
        ``remote`` durability this flush point, captured now and waited for; in ``local``,
        the disk as it is when ``commit_interval`` is up (see the committer).
        ``closing``: the server's flush for a client that disconnects, the same but for
        write-behind, which serves clients that flush themselves (see writebehind)."""
        self._check_writable()
        try:
            self._wc.sync()
        except OSError as e:
            raise VolumeIOError(f"volume {self.name!r}: fsync failed: {e.strerror}") from e
        with self._cond:
            if not closing:
                self._behind.flushed()
            if self.durability != "remote":
                self._committer.flushed()
                return
            seq = self._capture_locked()
        self._committer.wait_committed(seq)

    def commit(self) -> VolumeRecord:
        """Flush, then wait until everything written so far is committed to the store."""
        self._check_writable()
        self._wc.sync()
        with self._cond:
            seq = self._capture_locked()
        self._committer.wait_committed(seq)
        return self._committer.record

    def _capture_locked(self) -> int:
        """Hand the dirty extents as of now to the committer (lock held)."""
        return self._committer.capture(self._committer.dirty_now())

    def _committed(self, cap: Capture | None, res: CommitResult) -> list[tuple[Evictable, int]]:
        """The committer's one call back (lock held): ``cap`` is committed as ``res``, so
        its extents not written since are clean now; an import (``cap`` None) replaced
        extents, so clean copies of them are stale. Returns what to evict."""
        victims: list[tuple[Evictable, int]] = []
        if cap is None:
            for e in res.digests:
                if self._states[e] != CLEAN and e in self._fetching:
                    self._superseded.add(e)  # its fetch holds the replaced chunk
                elif self._droppable(e):
                    self.ctx.budget.forget(self, e)
                    self._drop_locked(e)
        else:
            for e, g in cap.gens.items():
                if self._gen[e] == g and self._states[e] == DIRTY:
                    self._states[e] = CLEAN
                    self._dirty.discard(e)
                    victims += self.ctx.budget.add(self, e, self._elen(e))
        self._wc.write_all(
            replace(
                self._wc.header,
                epoch=res.record.epoch,
                base_version=res.record.version,
                base_root=res.record.root,
                clean_shutdown=False,
            )
        )
        return victims

    def start(self) -> None:
        """Start the commit and lease workers; commit at once what recovery found dirty."""
        victims = []
        with self._lock:  # clean extents kept from a clean shutdown count against the budget
            for e, flag in enumerate(self._unverified):
                if flag:
                    victims += self.ctx.budget.add(self, e, self._elen(e))
        evict_all(victims)
        self._committer.start()
        self.lease.start()
        if self._dirty:
            with self._cond:
                self._capture_locked()

    def _wake_waiters(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def import_image(
        self, src: BinaryIO, progress: Callable[[int], None] | None = None
    ) -> CommitResult:
        """Replace the volume's first bytes with a raw image read from ``src`` and commit,
        streaming extents straight to the chunk store (not through the working copy).
        An image larger than the volume raises InvalidArgument before the head moves.

        The volume is flagged raw-written before any byte of the image lands (a failed
        import may have changed nothing and still flags it: the flag errs on the safe
        side)."""
        self.commit()  # the import applies on top of a clean, committed volume
        with self._cond:
            if self._dirty:
                raise VolumeIOError(f"volume {self.name!r} is being written; import refused")
            self._check_writable()
        self.ctx.heads.mark_raw_written(self.record.id)
        return self._committer.import_image(
            src, progress, n_extents=self._n, size=self.size, read=self.read
        )

    # -- lifecycle --------------------------------------------------------------------

    @property
    def fenced(self) -> bool:
        return self.lease.fenced is not None

    def _stop_worker(self) -> None:
        self._readahead.stop()  # before the data file closes: its fetches write there
        self._behind.close()  # and it starts writeback there
        self._committer.stop()
        self.lease.stop()

    def close(self) -> None:
        """Commit everything, release the lease and close. A fenced volume instead keeps
        its uncommitted work as an orphan fork (``NAME.orphan-<epoch>``)."""
        if self._closed:
            return
        if self.lease.fenced is not None:
            self._stop_worker()
            self._closed = True
            self._release_fill()
            self._salvage()
            return
        error: BaseException | None = None
        try:
            self.commit()
        except BlockstoreError as e:
            error = e
        self._stop_worker()
        fenced = self.lease.fenced  # the commit above may have been fenced meanwhile
        if fenced is None and isinstance(error, LeaseLost):
            fenced = self.lease.taken_over()
        with self._lock:
            self._closed = True
            self._release_fill()
            if fenced is not None:
                self._salvage()
                raise fenced
            self._wc.write_all(replace(self._wc.header, clean_shutdown=True))
            self._wc.sync()
            self._wc.close()
        self.ctx.budget.forget_owner(self)
        self.lease.release()
        if error is not None:
            raise error

    def detach(self) -> WorkingCopy:
        """Stop without committing or releasing (restore takes over from here)."""
        self._stop_worker()
        with self._lock:
            self._closed = True
            self._release_fill()
        self.ctx.budget.forget_owner(self)
        return self._wc

    def _release_fill(self) -> None:
        """Close the direct-write descriptor and forget fetched bytes (lock held, once
        ``_closed`` is set: no fetch writes after this)."""
        self._fill.close()
        self._fresh.clear()

    def _salvage(self) -> None:
        from loft.blockstore.recovery import salvage_orphan

        self.ctx.budget.forget_owner(self)
        if self._wc.dirty_extents():
            salvage_orphan(self.ctx, self._committer.record, self._wc)
        self._wc.destroy()


def open_volume(
    ctx: BlockstoreContext,
    name: str,
    *,
    lease_ttl: float = DEFAULT_LEASE_TTL,
    lease_margin: float = DEFAULT_LEASE_MARGIN,
    holder: str | None = None,
) -> Volume:
    """Take the volume's lease, recover its working copy on this node, and start it."""
    from loft.blockstore.recovery import recover_working_copy

    holder = holder or new_holder_id()
    started = time.monotonic()
    tk = ctx.heads.takeover(name, holder, ttl=lease_ttl, margin=lease_margin)
    rec = tk.record
    try:
        wc = recover_working_copy(ctx, tk)
        if wc is None:
            header = Header(
                rec.uid, rec.epoch, rec.version, rec.root, rec.size, rec.extent_size, False
            )
            wc = WorkingCopy.create(ctx.volumes_dir / rec.uid, header)
    except BaseException:
        ctx.heads.release(rec.id, rec.epoch, holder)
        raise
    vol = Volume(
        ctx,
        rec,
        holder,
        wc,
        lease_ttl=lease_ttl,
        lease_margin=lease_margin,
        deadline=started + lease_ttl - lease_margin,
    )
    vol.start()
    return vol
