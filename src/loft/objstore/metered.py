"""An object store that counts its own work: each operation's latency and the bytes
moved up and down, into a :class:`loft.telemetry.Meter` (the disk service's chunk
store, for ``/metrics``). Everything else passes through unchanged."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from loft.objstore.store import ObjectInfo, ObjectStore
from loft.telemetry import Meter

__all__ = ["MeteredStore"]

T = TypeVar("T")


class MeteredStore:
    """``store``, with each call timed into ``meter``."""

    def __init__(self, store: ObjectStore, meter: Meter) -> None:
        self.store = store
        self.meter = meter
        self.url = store.url

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)  # what a back end offers beyond the interface

    def _timed(self, op: str, call: Callable[[], T], direction: str = "", size: int = 0) -> T:
        start = time.perf_counter()
        try:
            result = call()
        finally:
            self.meter.observe(op, time.perf_counter() - start, direction, size)
        return result

    def put(self, key: str, value: bytes | bytearray) -> None:
        self._timed("put", lambda: self.store.put(key, value), "up", len(value))

    def get(self, key: str) -> bytes:
        value = self._timed("get", lambda: self.store.get(key))
        self.meter.moved("down", len(value))
        return value

    def stat(self, key: str) -> ObjectInfo | None:
        return self._timed("stat", lambda: self.store.stat(key))

    def touch(self, key: str) -> bool:
        return self._timed("touch", lambda: self.store.touch(key))

    def put_many(self, items: Sequence[tuple[str, bytes | bytearray]]) -> None:
        size = sum(len(v) for _, v in items)
        self._timed("put_many", lambda: self.store.put_many(items), "up", size)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        values = self._timed("get_many", lambda: self.store.get_many(keys))
        self.meter.moved("down", sum(len(v) for v in values.values()))
        return values

    def stat_many(self, keys: Sequence[str]) -> dict[str, ObjectInfo | None]:
        return self._timed("stat_many", lambda: self.store.stat_many(keys))

    def delete_many(self, keys: Sequence[str]) -> None:
        self._timed("delete_many", lambda: self.store.delete_many(keys))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        start = time.perf_counter()  # a listing's time is its whole iteration
        try:
            yield from self.store.list(prefix)
        finally:
            self.meter.observe("list", time.perf_counter() - start)

    def close(self) -> None:
        self.store.close()
