"""Shipping an open volume's states to the chunk store: the capture queue, the
commit loop with its backoff, and image import (litestream's ``Replica`` beside its
``DB``).

A capture is the extents dirty at one instant (:class:`Capture`); one capture is
uploaded at a time by a background thread and retried with backoff when the store or
the catalog fails. In ``remote`` durability a flush is captured at once and uploaded at
once. In ``local`` durability a flush only makes a commit due (:meth:`Committer.flushed`):
``commit_interval`` later, with no upload running, the capture is taken of the disk as it
is then, a flush point the volume makes itself that covers the flushes before it (so
writes meanwhile copy nothing aside for a capture that would only wait). A newer capture
replaces one still waiting, so at most two exist: the one uploading and the one pending.
When a capture is committed the committer tells the volume through one call,
``on_committed(capture, result)``, and the volume marks clean the extents nobody wrote
meanwhile (an import makes the same call without a capture).

The committer shares the volume's lock (its condition): a write must preserve captured
bytes and bump its generation atomically with respect to a capture being taken or
retired, and both sides wait on the same condition.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from loft.blockstore.budget import Evictable
from loft.blockstore.capture import Capture
from loft.blockstore.chunks import HEADER_SIZE
from loft.blockstore.commit import Buffers, CommitResult, commit_extents
from loft.blockstore.context import BlockstoreContext
from loft.blockstore.errors import InvalidArgument, LeaseLost, VolumeIOError
from loft.blockstore.extents import evict_all
from loft.blockstore.heads import VolumeRecord
from loft.blockstore.lease import LeaseKeeper
from loft.blockstore.manifest import Manifest
from loft.priority import lower_thread_priority

log = logging.getLogger("loft.blockstore.volume")

__all__ = ["Committer", "OnCommitted"]

_RETRY_BACKOFF_MIN = 0.5
_RETRY_BACKOFF_MAX = 10.0
#: The two aside files, one per capture alive at once (uploading, pending), each reused
#: by the captures after it (see capture.py).
_ASIDE_NAMES = ("aside-a", "aside-b")

#: The volume's side of a finished commit (called with the shared lock held): mark clean
#: what is unchanged since the capture (None: an import, which replaced extents wholesale)
#: and persist the new base; returns what the budget wants evicted, which the committer
#: evicts once the lock is released.
OnCommitted = Callable[[Capture | None, CommitResult], list[tuple[Evictable, int]]]


class Committer:
    """The commit pipeline of one open volume; see the module docstring."""

    def __init__(
        self,
        ctx: BlockstoreContext,
        rec: VolumeRecord,
        manifest: Manifest,
        lease: LeaseKeeper,
        cond: threading.Condition,
        *,
        data_fd: int,
        aside_dir: Path,
        extent_len: Callable[[int], int],
        on_committed: OnCommitted,
        dirty_now: Callable[[], dict[int, int]],
    ) -> None:
        self.ctx = ctx
        self.name = rec.name
        self.durability = rec.durability
        self.commit_interval = rec.commit_interval
        #: the head as this writer last committed it, and its manifest
        self.record = rec
        self.manifest = manifest
        self.last_commit: CommitResult | None = None
        self._lease = lease
        self._cond = cond
        self._fd = data_fd
        self._aside_dir = aside_dir
        self._elen = extent_len
        self._on_committed = on_committed
        #: the volume's dirty extents and their write generations, now (lock held)
        self.dirty_now = dirty_now
        #: a flush (local durability) not captured yet: when the oldest such was made
        self._deferred_since: float | None = None
        self._extent_size = rec.extent_size
        self._pending: Capture | None = None
        self._uploading: Capture | None = None
        self._pending_since: float | None = None
        self._retry_at = 0.0
        self._backoff = _RETRY_BACKOFF_MIN
        self._seq = 0
        self._committed_seq = 0
        self._fail_count = 0
        self._last_error: BaseException | None = None
        #: the longest a flushed write waited to be committed, seconds
        self.max_lag = 0.0
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"volume-{rec.name}", daemon=True)

    # -- what the volume calls, with the shared lock held --------------------------------

    @property
    def busy(self) -> bool:
        """A capture is waiting or uploading, or a flush waits for one (lock held)."""
        return (
            self._pending is not None
            or self._uploading is not None
            or self._deferred_since is not None
        )

    def flushed(self) -> None:
        """A flush in local durability (lock held): have everything written so far
        committed once ``commit_interval`` is up. Nothing is captured now: when the
        interval is up (and no upload runs), the disk as it is then is captured, a flush
        point the volume makes itself that covers this one, so writes meanwhile copy
        nothing aside."""
        if self._deferred_since is None:
            self._deferred_since = time.monotonic()
            self._cond.notify_all()

    def preserve(self, offset: int, length: int) -> None:
        """Before the data file's range changes: copy aside what captures still need."""
        for cap in (self._uploading, self._pending):
            if cap is not None and cap.unread:
                cap.preserve(self._fd, offset, length)

    def capture(self, gens: dict[int, int]) -> int:
        """Capture the dirty extents (``extent -> write generation``) as of now, for a
        commit as soon as no other uploads; returns the sequence number that, once
        committed, covers every write completed before."""
        seq = self._capture(gens)
        self._cond.notify_all()
        return seq

    def _capture(self, gens: dict[int, int]) -> int:
        deferred, self._deferred_since = self._deferred_since, None  # this one covers it
        if not gens:
            return self._seq
        pending = self._pending
        if pending is not None and pending.gens == gens:
            return pending.seq
        self._seq += 1
        busy = self._uploading.aside_path.name if self._uploading else None
        name = _ASIDE_NAMES[1] if busy == _ASIDE_NAMES[0] else _ASIDE_NAMES[0]
        if pending is not None:
            pending.close(keep=True)
        self._pending = Capture(self._seq, gens, self._aside_dir / name, self._extent_size)
        if self._pending_since is None:
            self._pending_since = time.monotonic() if deferred is None else deferred
        return self._seq

    def lag(self) -> float:
        """How long the oldest flushed write not yet committed has waited, seconds (0
        when every flush is committed). Lock held."""
        oldest = [c.since for c in (self._uploading,) if c is not None]
        oldest += [t for t in (self._pending_since, self._deferred_since) if t is not None]
        return time.monotonic() - min(oldest) if oldest else 0.0

    # -- waiting and lifecycle ------------------------------------------------------------

    def wait_committed(self, seq: int) -> None:
        """Block until capture ``seq`` is committed; raise if the writer is fenced, a
        commit fails meanwhile (it is retried; the data is safe on the node) or the
        committer stops."""
        with self._cond:
            failures = self._fail_count
            while self._committed_seq < seq:
                fenced = self._lease.fenced
                if fenced is not None:
                    raise fenced
                if self._fail_count != failures:
                    raise VolumeIOError(
                        f"volume {self.name!r}: commit failed: {self._last_error}",
                        hint="the data is safe on this node and the commit is retried",
                    )
                if self._stop:
                    raise VolumeIOError(f"volume {self.name!r} closed before committing")
                self._cond.wait(1.0)

    def start(self) -> None:
        """Start the commit thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the commit thread (an upload under way finishes first)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(30)
        if not self._thread.is_alive():
            with self._cond:
                for cap in (self._uploading, self._pending):
                    if cap is not None:
                        cap.close(keep=True)
                for name in _ASIDE_NAMES:
                    (self._aside_dir / name).unlink(missing_ok=True)

    # -- the commit thread ----------------------------------------------------------------

    def _run(self) -> None:
        lower_thread_priority()  # commits are background work: clients come first
        while True:
            with self._cond:
                cap = None
                while True:
                    if self._stop:
                        return
                    now = time.monotonic()
                    if self._lease.fenced is None:
                        deferred = self._deferred_since
                        if (
                            self._uploading is None
                            and deferred is not None
                            and now >= deferred + self.commit_interval
                        ):
                            self._capture(self.dirty_now())  # due: the disk as it is now
                        if self._uploading is not None and now >= self._retry_at:
                            cap = self._uploading
                            break
                        if self._uploading is None and self._pending is not None:
                            cap = self._uploading = self._pending
                            cap.since = self._pending_since or cap.created
                            self._pending = None
                            self._pending_since = None
                            break
                    wake = now + 60.0
                    if self._uploading is not None:
                        wake = self._retry_at
                    elif self._deferred_since is not None:
                        wake = self._deferred_since + self.commit_interval
                    self._cond.wait(max(0.001, wake - now))
            self._commit(cap)

    def _commit(self, cap: Capture) -> None:
        buffers = Buffers()

        def source(e: int) -> bytearray:
            return cap.read_extent(self._fd, e, buffers.get(self._elen(e)))

        lease = self._lease
        sent = time.monotonic()
        try:
            res = commit_extents(
                self.ctx,
                self.record,
                lease.holder,
                self.manifest,
                sorted(cap.gens),
                source,
                buffers=buffers,
                ttl=lease.ttl,
            )
        except LeaseLost as lost:
            lease.fence(lost)
            return
        except Exception as err:
            log.warning("volume %s: commit failed, will retry: %s", self.name, err)
            with self._cond:
                self._fail_count += 1
                self._last_error = err
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, _RETRY_BACKOFF_MAX)
                self._cond.notify_all()
            return
        with self._cond:
            lease.extend(sent)  # the head's compare-and-swap renewed the lease too
            self.max_lag = max(self.max_lag, time.monotonic() - cap.since)
            self._backoff = _RETRY_BACKOFF_MIN
            self.manifest = res.manifest
            self.record = res.record
            self.last_commit = res
            victims = self._on_committed(cap, res)
            pending = self._pending
            if pending is not None:
                for e, g in list(pending.gens.items()):
                    if cap.gens.get(e) == g:
                        pending.drop(e)
            self._uploading = None
            cap.close(keep=True)
            self._committed_seq = cap.seq
            if pending is not None and not pending.gens:
                self._committed_seq = pending.seq
                pending.close(keep=True)
                self._pending = None
                self._pending_since = None
            self._cond.notify_all()
        evict_all(victims)

    # -- import ---------------------------------------------------------------------------

    def import_image(
        self,
        src: BinaryIO,
        progress: Callable[[int], None] | None,
        *,
        n_extents: int,
        size: int,
        read: Callable[[int, int], bytes],
    ) -> CommitResult:
        """Commit a raw image read from ``src`` as the volume's first bytes, streaming
        extents straight to the chunk store (not through the working copy). The volume
        has committed everything first; ``read`` gives what it holds after a partial
        last extent. An image larger than the volume raises InvalidArgument before the
        head moves."""
        es = self._extent_size
        buffers = Buffers()
        blocks: dict[int, bytearray] = {}

        def extents() -> Iterator[int]:
            e = 0
            while True:
                buf = buffers.get(es)
                n = _read_full(src, memoryview(buf)[HEADER_SIZE:])
                if n == 0:
                    buffers.release(buf)
                    return
                if e >= n_extents or n > self._elen(e):
                    raise InvalidArgument(
                        f"image is larger than volume {self.name!r} ({size} bytes)",
                        hint="create a bigger volume",
                    )
                if n < es:
                    # A partial last extent keeps what the volume had after the image's
                    # end, and the volume's own last extent may be shorter than others.
                    rest = read(e * es + n, self._elen(e) - n)
                    whole = buffers.get(self._elen(e))
                    whole[HEADER_SIZE : HEADER_SIZE + n] = memoryview(buf)[
                        HEADER_SIZE : HEADER_SIZE + n
                    ]
                    whole[HEADER_SIZE + n :] = rest
                    buffers.release(buf)
                    buf = whole
                blocks[e] = buf
                if progress:
                    progress(n)
                yield e
                e += 1
                if n < es:
                    return

        with self._cond:
            if self.busy:
                raise VolumeIOError(f"volume {self.name!r} is being written; import refused")
            rec, manifest = self.record, self.manifest
        lease = self._lease
        res = commit_extents(
            self.ctx,
            rec,
            lease.holder,
            manifest,
            extents(),
            blocks.pop,
            buffers=buffers,
            ttl=lease.ttl,
        )
        with self._cond:
            self.record, self.manifest = res.record, res.manifest
            self.last_commit = res
            victims = self._on_committed(None, res)
        evict_all(victims)
        return res


def _read_full(src: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``src`` unless it ends first; returns the bytes read."""
    got = 0
    while got < len(view):
        n = src.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got
