"""The node's chunk cache: compressed chunk values on local disk, shared by every volume
on the node (forks of one template share it), bounded in bytes, least recently used out."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from loft.blockstore.chunks import chunk_key
from loft.blockstore.errors import ChunkNotFound
from loft.objstore import ObjectNotFound, ObjectStore


class ChunkCache:
    """A read-through cache in front of a chunk store, keyed by chunk digest."""

    def __init__(self, store: ObjectStore, directory: Path | None, max_bytes: int) -> None:
        self.store = store
        self.directory = directory
        self.max_bytes = max_bytes
        self._lru: OrderedDict[bytes, int] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.fetched_bytes = 0  # values read from the chunk store (the lazy-load metric)
        self.fetched_count = 0
        if directory is not None and max_bytes > 0:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._scan()

    def _scan(self) -> None:
        assert self.directory is not None
        entries = []
        for name in os.listdir(self.directory):
            path = self.directory / name
            if name.endswith(".tmp"):
                path.unlink(missing_ok=True)
                continue
            try:
                st = path.stat()
                entries.append((st.st_atime, bytes.fromhex(name), st.st_size))
            except (OSError, ValueError):
                continue
        for _, digest, size in sorted(entries):
            self._lru[digest] = size
            self._bytes += size

    def get_many(self, digests: Sequence[bytes]) -> dict[bytes, bytes]:
        """The stored values of ``digests``, from local disk where cached."""
        out: dict[bytes, bytes] = {}
        missing: list[bytes] = []
        for d in digests:
            value = self._read_local(d)
            if value is None:
                missing.append(d)
            else:
                out[d] = value
        if missing:
            try:
                fetched = self.store.get_many([chunk_key(d) for d in missing])
            except ObjectNotFound as e:  # referenced, so it must exist: say what went wrong
                raise ChunkNotFound(e.key) from e
            for d in missing:
                value = fetched[chunk_key(d)]
                out[d] = value
                self.fetched_bytes += len(value)
                self.fetched_count += 1
                self._insert(d, value)
        return out

    def get(self, digest: bytes) -> bytes:
        """One stored value."""
        return self.get_many([digest])[digest]

    def discard(self, digest: bytes) -> bool:
        """Forget a value kept locally (it failed its check); False if none was kept."""
        with self._lock:
            size = self._lru.pop(digest, None)
            if size is None:
                return False
            self._bytes -= size
        assert self.directory is not None  # nothing is kept without one
        (self.directory / digest.hex()).unlink(missing_ok=True)
        return True

    def insert(self, digest: bytes, value: bytes) -> None:
        """Add a value we just uploaded (so forks on this node find it locally)."""
        self._insert(digest, value)

    def _read_local(self, digest: bytes) -> bytes | None:
        if self.directory is None:
            return None
        with self._lock:
            if digest not in self._lru:
                return None
            self._lru.move_to_end(digest)
        try:
            with open(self.directory / digest.hex(), "rb") as f:
                return f.read()
        except FileNotFoundError:
            with self._lock:
                self._bytes -= self._lru.pop(digest, 0)
            return None

    def _insert(self, digest: bytes, value: bytes) -> None:
        if self.directory is None or len(value) > self.max_bytes:
            return
        with self._lock:
            if digest in self._lru:
                return
        path = self.directory / digest.hex()
        tmp = path.with_name(f"{path.name}.{threading.get_ident()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(value)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            return  # a full cache disk only costs a refetch later
        evict: list[bytes] = []
        with self._lock:
            if digest not in self._lru:
                self._lru[digest] = len(value)
                self._bytes += len(value)
            while self._bytes > self.max_bytes and self._lru:
                old, size = self._lru.popitem(last=False)
                self._bytes -= size
                evict.append(old)
        for old in evict:
            (self.directory / old.hex()).unlink(missing_ok=True)

    @property
    def cached_bytes(self) -> int:
        """Bytes of chunk values held locally."""
        return self._bytes
