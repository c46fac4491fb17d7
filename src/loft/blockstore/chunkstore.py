"""The chunk store interface: a flat key -> bytes store of immutable objects.

Back ends (``file.py``, ``s3.py``, ``memory.py``) know nothing of chunks, manifests or
volumes: they store opaque values under string keys such as ``chunks/ab/ab12...`` or
``heads/<volume-id>``. Content addressing, compression and dedup live above them
(:mod:`loft.blockstore.chunks`), so a new back end is a few dozen lines.

Every call is bounded: a back end that cannot reach its store raises
:class:`ChunkStoreError` within its operation timeout instead of stalling the caller.
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


class ChunkStoreError(LoftError):
    """The chunk store failed or could not be reached (after retries)."""


class ChunkNotFound(ChunkStoreError):
    """A key that should exist is absent from the chunk store."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"object {key!r} is missing from the chunk store",
            hint="the store was modified outside loft or a GC ran with --force",
        )
        self.key = key


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object: its key, stored size in bytes and modification time (epoch s)."""

    key: str
    size: int
    mtime: float


@runtime_checkable
class ChunkStore(Protocol):
    """A flat store of immutable values. Implementations must be thread-safe."""

    url: str

    def put(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` (atomically: readers see all of it or nothing)."""
        ...

    def get(self, key: str) -> bytes:
        """Return the value under ``key``; :class:`ChunkNotFound` if absent."""
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """Return the object's info, or None when absent."""
        ...

    def touch(self, key: str) -> bool:
        """Refresh the object's modification time; False when it is absent."""
        ...

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Store several values, in parallel where the back end can."""
        ...

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Fetch several values in parallel; :class:`ChunkNotFound` if any is absent."""
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


def open_chunk_store(url: str) -> ChunkStore:
    """Open a chunk store from a URL.

    ``file:///path`` (a local directory), ``s3://bucket/prefix?endpoint=http://host:port``
    (credentials from the usual AWS environment variables) or ``memory://name``.
    """
    scheme = urlsplit(url).scheme
    if scheme == "file":
        from loft.blockstore.file import FileChunkStore

        return FileChunkStore.from_url(url)
    if scheme == "s3":
        from loft.blockstore.s3 import S3ChunkStore

        return S3ChunkStore.from_url(url)
    if scheme == "memory":
        from loft.blockstore.memory import MemoryChunkStore

        return MemoryChunkStore.from_url(url)
    raise ChunkStoreError(
        f"unsupported chunk store URL {url!r}",
        hint="use file:///path or s3://bucket/prefix?endpoint=http://host:port",
    )
