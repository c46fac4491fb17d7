"""The node-wide budget for clean working-copy extents (``LOFT_CACHE_BYTES``).

Clean extents can always be fetched again, so when the node holds more of them than the
budget allows, the least recently used are evicted (their range of the data file becomes a
hole again). A 1 TiB volume therefore never needs 1 TiB of node disk.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Protocol


class Evictable(Protocol):
    def evict(self, extent: int) -> None: ...

    def referenced(self, extent: int) -> bool:
        """Whether ``extent`` was read since the budget last asked (forgetting it)."""
        ...


class ExtentBudget:
    """Accounting of clean extents across every volume open in this process, evicting
    the least recently used first -- approximately: extents are queued in the order they
    became clean, and one read since it was last considered (the owner's reference mark,
    see :meth:`Evictable.referenced`) sends an extent back to the young end once instead
    of evicting it (the CLOCK algorithm). A read then costs one byte store instead of a
    call into the budget on the event loop's hot path."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lru: OrderedDict[tuple[int, int], tuple[Evictable, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, owner: Evictable, extent: int, size: int) -> list[tuple[Evictable, int]]:
        """Account a clean extent; returns the victims the caller must evict (outside its
        own lock, so two volumes never wait on each other)."""
        key = (id(owner), extent)
        victims: list[tuple[Evictable, int]] = []
        with self._lock:
            if key in self._lru:
                self._lru.move_to_end(key)
                return victims
            self._lru[key] = (owner, size)
            self._bytes += size
            # The extent just added is never the victim (its caller is about to use it),
            # and every pass over the queue clears the marks it sees: this ends within two.
            while self._bytes > self.max_bytes and len(self._lru) > 1:
                oldest, (victim, vsize) = self._lru.popitem(last=False)
                if oldest == key or victim.referenced(oldest[1]):
                    self._lru[oldest] = (victim, vsize)  # to the young end
                    continue
                self._bytes -= vsize
                victims.append((victim, oldest[1]))
        return victims

    def forget(self, owner: Evictable, extent: int) -> None:
        with self._lock:
            item = self._lru.pop((id(owner), extent), None)
            if item is not None:
                self._bytes -= item[1]

    def forget_owner(self, owner: Evictable) -> None:
        with self._lock:
            for key in [k for k in self._lru if k[0] == id(owner)]:
                self._bytes -= self._lru.pop(key)[1]

    @property
    def used_bytes(self) -> int:
        return self._bytes
