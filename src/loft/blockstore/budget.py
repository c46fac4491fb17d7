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


class ExtentBudget:
    """LRU accounting of clean extents across every volume open in this process."""

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
            while self._bytes > self.max_bytes and len(self._lru) > 1:
                (_, ext), (victim, vsize) = self._lru.popitem(last=False)
                self._bytes -= vsize
                victims.append((victim, ext))
        return victims

    def touch(self, owner: Evictable, extent: int) -> None:
        # On every read: no lock. OrderedDict.move_to_end is one C call (atomic under the
        # GIL), and a key evicted meanwhile is simply no longer there to move.
        try:
            self._lru.move_to_end((id(owner), extent))
        except KeyError:
            pass

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
