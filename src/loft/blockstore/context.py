"""What every volume on a node shares: catalog, chunk store, codec, caches, thread pool."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from loft.blockstore.budget import ExtentBudget
from loft.blockstore.chunkcache import ChunkCache
from loft.blockstore.chunks import ChunkCodec, deployment_secret
from loft.blockstore.errors import VolumeIOError
from loft.blockstore.heads import Heads
from loft.blockstore.presence import PresenceIndex
from loft.blockstore.reserve import DiskReserve
from loft.catalog import Catalog
from loft.config import Settings
from loft.datadir import private_data_dir
from loft.objstore import ObjectStore, open_object_store
from loft.objstore.metered import MeteredStore
from loft.priority import lower_thread_priority
from loft.telemetry import CHUNK_STORE

log = logging.getLogger(__name__)


@dataclass
class BlockstoreContext:
    """The node-wide pieces volumes are built on. Open one per process."""

    settings: Settings
    catalog: Catalog
    heads: Heads
    store: ObjectStore
    codec: ChunkCodec
    cache: ChunkCache
    budget: ExtentBudget
    reserve: DiskReserve
    #: chunks known to be in the store (hash-first commits skip asking it)
    presence: PresenceIndex = field(default_factory=PresenceIndex)
    pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(
            max(4, (os.cpu_count() or 2) * 2),
            thread_name_prefix="blockstore",
            initializer=lower_thread_priority,
        )
    )
    #: fetches ahead of sequential readers (readahead.py), at normal priority: a client
    #: is about to wait for them
    fetch_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(
            max(4, (os.cpu_count() or 2) * 2), thread_name_prefix="readahead"
        )
    )

    @property
    def volumes_dir(self) -> Path:
        """Where working copies live, one directory per volume uid."""
        return self.settings.data_dir / "volumes"

    @classmethod
    def open(cls, settings: Settings, *, catalog: Catalog | None = None) -> BlockstoreContext:
        """Open the catalog (migrating it) and the chunk store named by ``settings``."""
        catalog = catalog or Catalog.open(settings)
        with catalog.write() as conn:
            secret = deployment_secret(conn)
        private_data_dir(settings.data_dir)
        store = MeteredStore(open_object_store(settings.chunks_url), CHUNK_STORE)
        cache = ChunkCache(store, settings.data_dir / "chunk-cache", settings.chunk_cache_bytes)
        return cls(
            settings=settings,
            catalog=catalog,
            heads=Heads(catalog),
            store=store,
            codec=ChunkCodec(secret),
            cache=cache,
            budget=ExtentBudget(settings.cache_bytes),
            reserve=DiskReserve(settings.data_dir, settings.disk_reserve, settings.chunks_url),
        )

    def decode_chunk(self, digest: bytes, value: bytes) -> bytes:
        """The raw bytes of chunk ``digest`` from its ``value`` (from :attr:`cache`),
        checked against the key. A value the node's chunk cache kept that fails the check
        (its disk rotted) is dropped and fetched from the chunk store once more, rather
        than failing every read of the chunk until it is evicted."""
        data = self.chunk_view(digest, value)
        return data if isinstance(data, bytes) else bytes(data)

    def chunk_view(self, digest: bytes, value: bytes) -> bytes | memoryview:
        """:meth:`decode_chunk` without copying a chunk stored raw: a view into the
        value (to write it into a working copy)."""
        try:
            return self.codec.decode_view(value, expect=digest)
        except VolumeIOError:
            if not self.cache.discard(digest):
                raise  # the store's copy is bad: nothing here to mend
            log.warning('chunk_cache.corrupt chunk="%s"', digest[:8].hex())
            return self.codec.decode_view(self.cache.get(digest), expect=digest)

    def check_store(self) -> None:
        """Fail fast (ObjectStoreError) when the chunk store is unreachable or refuses us."""
        self.store.stat("heads/.probe")

    def close(self) -> None:
        self.fetch_pool.shutdown(wait=True)
        self.pool.shutdown(wait=True)
        self.store.close()
        self.catalog.close()
