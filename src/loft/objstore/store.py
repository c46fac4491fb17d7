"""The object store interface: a flat key -> bytes store of immutable objects.

Back ends (``file.py``, ``s3.py``, ``memory.py``) know nothing of what they hold: they
store opaque values under string keys such as ``chunks/ab/ab12...``, ``heads/<uid>`` or
``nar/<hash>.nar.zst``. The blockstore keeps volumes' chunks in one (content addressing,
compression and dedup live there, :mod:`loft.blockstore.chunks`); the env store's binary
cache can live in one. A new back end is a few dozen lines.

Every call is bounded: a back end that cannot reach its store raises
:class:`ObjectStoreError` within its operation timeout instead of stalling the caller.
An absent key is :class:`ObjectNotFound`; what that means (a GC gone wrong, a cache
that lacks a path) is for the caller to say.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

from loft.errors import LoftError

#: Connect timeout for network back ends, seconds.
DEFAULT_CONNECT_TIMEOUT = 3.0
#: Upper bound for one whole operation (all retries included), seconds.
DEFAULT_OPERATION_TIMEOUT = 20.0
#: Parallel transfers for put_many/get_many.
DEFAULT_PARALLELISM = 8


class ObjectStoreError(LoftError):
    """The object store failed or could not be reached (after retries)."""


class ObjectNotFound(ObjectStoreError):
    """A key is absent from the object store."""

    def __init__(self, key: str, message: str | None = None, *, hint: str | None = None) -> None:
        super().__init__(message or f"object {key!r} is missing from the store", hint=hint)
        self.key = key


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object: its key, stored size in bytes and modification time (epoch s)."""

    key: str
    size: int
    mtime: float


@runtime_checkable
class ObjectStore(Protocol):
    """A flat store of immutable values. Implementations must be thread-safe."""

    url: str

    def put(self, key: str, value: bytes | bytearray) -> None:
        """Store ``value`` under ``key`` (atomically: readers see all of it or nothing).
        The caller may reuse a bytearray once this returns."""
        ...

    def get(self, key: str) -> bytes:
        """Return the value under ``key``; :class:`ObjectNotFound` if absent."""
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """Return the object's info, or None when absent."""
        ...

    def touch(self, key: str) -> bool:
        """Refresh the object's modification time; False when it is absent."""
        ...

    def put_many(self, items: Sequence[tuple[str, bytes | bytearray]]) -> None:
        """Store several values, in parallel where the back end can."""
        ...

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Fetch several values in parallel; :class:`ObjectNotFound` if any is absent."""
        ...

    def stat_many(self, keys: Sequence[str]) -> dict[str, ObjectInfo | None]:
        """``stat`` for several keys, in parallel where the back end can."""
        ...

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete the keys that exist; absent keys are not an error."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (in no particular order)."""
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...


def open_object_store(url: str) -> ObjectStore:
    """Open an object store from a URL.

    ``file:///path`` (a local directory), ``s3://bucket/prefix?endpoint=http://host:port``
    (credentials from the usual AWS environment variables) or ``memory://name``.
    """
    scheme = urlsplit(url).scheme
    if scheme == "file":
        from loft.objstore.file import FileObjectStore

        return FileObjectStore.from_url(url)
    if scheme == "s3":
        from loft.objstore.s3 import S3ObjectStore

        return S3ObjectStore.from_url(url)
    if scheme == "memory":
        from loft.objstore.memory import MemoryObjectStore

        return MemoryObjectStore.from_url(url)
    raise ObjectStoreError(
        f"unsupported object store URL {url!r}",
        hint="use file:///path or s3://bucket/prefix?endpoint=http://host:port",
    )
