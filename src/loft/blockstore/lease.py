"""The single-writer lease of an open volume: deadline, renewal and fencing.

A writer may acknowledge writes only while it is sure nobody else can have taken the
volume over. The catalog judges expiry by its own clock; the holder keeps a deadline on
its own monotonic clock (last renewal sent + ttl - margin) and stops at it even when the
catalog is unreachable. A renewal the catalog refuses (epoch bumped, holder changed)
fences the writer for good.

Renewals run on their own thread: a long upload must not let the lease lapse.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from loft.blockstore.errors import BlockstoreError, LeaseLost
from loft.blockstore.heads import Heads, VolumeRecord

log = logging.getLogger("loft.blockstore.volume")

__all__ = ["LeaseKeeper"]


class LeaseKeeper:
    """Keeps one writer's lease on one volume (id, epoch, holder) alive, or fences it.

    ``on_fenced`` is called (from any thread) once the writer is fenced, so whoever waits
    for commits wakes up and sees :attr:`fenced`.
    """

    def __init__(
        self,
        heads: Heads,
        rec: VolumeRecord,
        holder: str,
        *,
        ttl: float,
        margin: float,
        deadline: float,
        on_fenced: Callable[[], None],
    ) -> None:
        self.heads = heads
        self.name = rec.name
        self.holder = holder
        self.ttl = ttl
        self.margin = margin
        self._volume_id = rec.id
        self._epoch = rec.epoch
        self._deadline = deadline
        self._fenced: BlockstoreError | None = None
        self._on_fenced = on_fenced
        self._fence_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{rec.name}", daemon=True)

    @property
    def fenced(self) -> BlockstoreError | None:
        """Why this writer may no longer write, or None while it may."""
        return self._fenced

    def check(self) -> None:
        """Raise unless writes may be acknowledged now (fenced, or past the deadline)."""
        if self._fenced is not None:
            raise self._fenced
        if time.monotonic() > self._deadline:
            raise LeaseLost(
                f"the lease on volume {self.name!r} expired (catalog unreachable?)",
                hint="writes resume once the lease is renewed",
            )

    def extend(self, sent: float) -> None:
        """The catalog renewed the lease by a request sent at monotonic time ``sent`` (a
        renewal, or a commit, which renews in the same statement)."""
        self._deadline = max(self._deadline, sent + self.ttl - self.margin)

    def fence(self, err: BlockstoreError) -> None:
        """Stop this writer for good: another writer owns the volume now."""
        with self._fence_lock:
            if self._fenced is None:
                log.error("volume %s: fenced: %s", self.name, err)
                self._fenced = err
        self._on_fenced()

    def renew(self) -> None:
        """Renew once (the renewal thread's step; a test may replace it to freeze it)."""
        if self._fenced is not None:
            return
        sent = time.monotonic()
        try:
            ok = self.heads.renew(self._volume_id, self._epoch, self.holder, self.ttl)
        except Exception as e:  # a catalog outage: the deadline will fence us if it lasts
            log.warning("volume %s: lease renewal failed: %s", self.name, e)
            return
        if ok:
            self.extend(sent)
        else:
            self.fence(LeaseLost(f"volume {self.name!r} was taken over by another writer"))

    def taken_over(self) -> LeaseLost | None:
        """Our own deadline passed without a renewal telling us anything: ask the catalog
        whether another writer took the volume over (then our work must become an orphan;
        left on disk it would only be salvaged if this node ever opened the volume again)."""
        try:
            rec = self.heads.get(self.name)
        except Exception as e:
            log.warning("volume %s: cannot tell whether it was taken over: %s", self.name, e)
            return None
        if rec.id == self._volume_id and rec.epoch == self._epoch:
            return None
        return LeaseLost(f"volume {self.name!r} was taken over by another writer")

    def release(self) -> None:
        """Give the lease up (a clean close); a failure only delays the next taker."""
        try:
            self.heads.release(self._volume_id, self._epoch, self.holder)
        except Exception as e:
            log.warning("volume %s: could not release the lease: %s", self.name, e)

    def start(self) -> None:
        """Start renewing every ttl/3."""
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing (the lease stays held until released or expired)."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(30)

    def _loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            self.renew()
