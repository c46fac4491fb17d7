"""The node's presence index: chunks this node knows are in the chunk store, so that a
commit of data the store already holds is hashed and nothing more, with no question to
the store (a stat per chunk: a HEAD request on S3).

What an entry claims: the chunk was in the store, with a modification time no older than
the entry's, *after* the GC sweep the catalog had counted when a commit registered it.
Only GC deletes chunks, and the commit protocol bounds what GC may delete:

- A commit registers its chunk keys before it trusts any chunk (``register_chunks``), in
  the transaction that reads GC's state. A sweep that starts later marks those keys; a
  sweep that is running makes the commit wait until it ends. Either way, once registered
  and past the wait, a chunk present in the store stays until the commit is over, and
  after that it is referenced by the new head.
- Every sweep bumps ``gc_state.sweeps`` in the transaction that takes its lease. An entry
  is recorded under the count its commit's registration read, and trusted only by a
  commit whose registration reads the same count: no sweep has started since the entry
  was recorded, so nothing deleted it. A sweep on any node moves the count on and so
  empties every node's index (the next commit of each asks the store again). The grace
  period does not enter into it, so this holds for ``loft volume gc --grace 0`` too.
- An entry older than the touch age (a quarter of the default grace period) is not
  trusted either: the store is asked, and an old chunk is touched, as without the index,
  so a dedup hit keeps refreshing what it relies on.

A commit that waited for a sweep and gave up (the sweep outlived the wait) neither
trusts nor records anything. Chunks deleted behind GC's back (by hand, a lost bucket) are
outside the contract, as they are for a commit's own stat: the index forgets them only
at the next sweep or after the touch age.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from itertools import islice

__all__ = ["DEFAULT_MAX_ENTRIES", "PresenceIndex"]

#: Entries kept (the oldest recorded go first): 128k chunks of 4 MiB name 512 GiB of data
#: for about 16 MiB of memory.
DEFAULT_MAX_ENTRIES = 128 * 1024


class PresenceIndex:
    """Chunk digests known present in the store, for the current GC sweep count only.
    Thread-safe (the commits of every volume on the node share one)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        #: the GC sweep count the entries were recorded under
        self._sweeps = -1
        #: digest -> the lowest modification time the chunk can have in the store
        self._entries: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def _at(self, sweeps: int) -> bool:
        """Bring the index to sweep count ``sweeps`` (lock held): a later count empties
        it. False when ``sweeps`` is older than what the index holds (a commit that
        registered before a sweep another commit has already seen)."""
        if sweeps > self._sweeps:
            self._entries.clear()
            self._sweeps = sweeps
        return sweeps == self._sweeps

    def known(self, digests: Iterable[bytes], sweeps: int, fresh_after: float) -> set[bytes]:
        """The ``digests`` recorded under sweep count ``sweeps`` whose chunks were
        modified after ``fresh_after`` (epoch seconds)."""
        with self._lock:
            if not self._at(sweeps):
                return set()
            entries = self._entries
            return {d for d in digests if entries.get(d, 0.0) > fresh_after}

    def add(self, seen: dict[bytes, float], sweeps: int) -> None:
        """Record chunks as present (``digest -> the lowest modification time it can have
        in the store``), as found by a commit whose registration saw sweep count
        ``sweeps``."""
        with self._lock:
            if not self._at(sweeps):
                return
            entries = self._entries
            for d, mtime in seen.items():
                entries.pop(d, None)  # re-inserted last: the oldest go first
                entries[d] = mtime
            excess = len(entries) - self.max_entries
            if excess > 0:
                for d in list(islice(entries, excess)):
                    del entries[d]

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()
