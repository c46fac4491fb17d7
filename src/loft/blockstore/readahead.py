"""Read-ahead: a volume read sequentially fetches its next extents before they are asked for.

A cold fork read end to end fetches every extent from the chunk store on first touch. One
at a time, the reader waits for each fetch in turn (read the chunk, check its digest,
write it into the working copy) and the fetches never overlap. A reader is taken for
sequential when it misses the extent right after its previous miss; then the next
``window`` extents are fetched ahead, each by its own task on the node's fetch pool (at
normal priority: a client is about to wait for them). Every extent fetched ahead is
marked, and the reader's first read of a marked extent moves the window on (on the
lock-free read path that is one byte read), so a sequential reader stays ``window``
extents ahead while a random reader, whose misses are not adjacent, never starts any.

Nothing here changes what a read returns: a fetch ahead is the same fetch a read would
make (the volume's, registered in its fetch table so the two never race), and one that
fails is forgotten: the reader fetches that extent itself when it gets there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, wait

__all__ = ["DEFAULT_WINDOW", "ReadAhead"]

log = logging.getLogger(__name__)

#: Extents fetched ahead of a sequential reader (32 MiB of 4 MiB extents: enough to keep
#: the fetch pool's four threads busy while the reader consumes the nearest ones).
DEFAULT_WINDOW = 8


class ReadAhead:
    """The read-ahead state of one volume: which extents were fetched ahead, what is
    being fetched, and where the last miss was. Thread-safe."""

    def __init__(
        self,
        n_extents: int,
        window: int,
        pool: Executor,
        *,
        absent: Callable[[int], bool],
        fetch: Callable[[int], None],
    ) -> None:
        self.window = window
        #: 1 for an extent fetched ahead and not read since: its first read moves on
        self.marks = bytearray(n_extents)
        #: extents fetched ahead so far (tests, benchmarks)
        self.fetched = 0
        self._n = n_extents
        self._pool = pool
        self._absent = absent
        self._fetch = fetch
        self._last_miss = -2
        self._scheduled: dict[int, Future[None]] = {}
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def in_flight(self) -> int:
        """Fetches ahead scheduled and not finished."""
        return len(self._scheduled)

    def missed(self, first: int, last: int) -> None:
        """A read must fetch extents ``first..last``: if it follows the previous miss,
        fetch the window after ``last`` meanwhile."""
        with self._lock:
            sequential = first == self._last_miss + 1
            self._last_miss = last
        if sequential:
            self.extend(last + 1)

    def used(self, extent: int) -> None:
        """The first read of an extent fetched ahead: keep the window ahead of it."""
        self.marks[extent] = 0
        self.extend(extent + 1)

    def extend(self, start: int) -> None:
        """Fetch the absent extents of ``start .. start+window-1`` not being fetched."""
        if self.window <= 0:
            return
        with self._lock:
            if self._stopped:
                return
            for e in range(start, min(self._n, start + self.window)):
                if e not in self._scheduled and self._absent(e):
                    self._scheduled[e] = self._pool.submit(self._run, e)

    def _run(self, extent: int) -> None:
        done = False
        try:
            if not self._stopped:
                self._fetch(extent)
                self.marks[extent] = 1
                done = True
        except Exception as e:  # the reader fetches it itself, and reports any error
            log.debug("read-ahead of extent %d failed: %s", extent, e)
        finally:
            with self._lock:
                self._scheduled.pop(extent, None)
                self.fetched += done

    def stop(self) -> None:
        """Start nothing more and wait for the fetches under way (before the volume
        closes the file they write into)."""
        with self._lock:
            self._stopped = True
            pending = list(self._scheduled.values())
        wait(pending)
