"""An in-memory object store: a real back end, used by tests and as a fault-injection base."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

from loft.objstore.store import ObjectInfo, ObjectNotFound

_REGISTRY: dict[str, MemoryObjectStore] = {}
_REGISTRY_LOCK = threading.Lock()


class MemoryObjectStore:
    """Objects in a dict. ``memory://name`` URLs opened in one process share one store."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._objects: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> MemoryObjectStore:
        """Return the process-wide store registered under ``url``, creating it."""
        with _REGISTRY_LOCK:
            store = _REGISTRY.get(url)
            if store is None:
                store = _REGISTRY[url] = cls(url)
            return store

    def put(self, key: str, value: bytes | bytearray) -> None:
        with self._lock:
            self._objects[key] = (bytes(value), time.time())

    def get(self, key: str) -> bytes:
        with self._lock:
            item = self._objects.get(key)
        if item is None:
            raise ObjectNotFound(key)
        return item[0]

    def stat(self, key: str) -> ObjectInfo | None:
        with self._lock:
            item = self._objects.get(key)
        return None if item is None else ObjectInfo(key, len(item[0]), item[1])

    def touch(self, key: str) -> bool:
        with self._lock:
            item = self._objects.get(key)
            if item is None:
                return False
            self._objects[key] = (item[0], time.time())
            return True

    def put_many(self, items: Sequence[tuple[str, bytes | bytearray]]) -> None:
        for key, value in items:
            self.put(key, value)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        return {key: self.get(key) for key in keys}

    def stat_many(self, keys: Sequence[str]) -> dict[str, ObjectInfo | None]:
        return {key: self.stat(key) for key in keys}

    def delete_many(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._objects.pop(key, None)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        with self._lock:
            items = [(k, v) for k, v in self._objects.items() if k.startswith(prefix)]
        for key, (value, mtime) in items:
            yield ObjectInfo(key, len(value), mtime)

    def set_mtime(self, key: str, mtime: float) -> None:
        """Age an object (tests of GC grace periods)."""
        with self._lock:
            self._objects[key] = (self._objects[key][0], mtime)

    def close(self) -> None:
        pass
