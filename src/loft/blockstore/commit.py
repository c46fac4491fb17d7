"""Uploading a set of extents and advancing the head: the commit pipeline.

Order matters for GC and crash safety: register the chunk keys in the catalog, then make
sure every chunk exists in the store (upload, or refresh an old dedup hit), then the new
manifest pages the same way, then compare-and-swap the head, then write the head record.
A crash anywhere leaves the previous head intact and at worst some unreferenced chunks.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from itertools import islice

from loft.blockstore.chunks import ZERO_HASH, chunk_key
from loft.blockstore.context import BlockstoreContext
from loft.blockstore.heads import DEFAULT_LEASE_TTL, VolumeRecord
from loft.blockstore.manifest import Manifest

log = logging.getLogger(__name__)

#: Chunks younger than this survive GC even when nothing references them.
DEFAULT_GC_GRACE = 3600.0
#: A dedup hit on a chunk older than this refreshes its modification time.
TOUCH_AGE = DEFAULT_GC_GRACE / 4
#: Extents hashed, compressed and uploaded together. Each batch ends with a wait for its
#: slowest PUT, so a batch of only one wave of the store's 8 parallel transfers leaves the
#: pipe idle half the time; two waves keep it fuller (bench/commit_throughput.py).
BATCH_EXTENTS = 16
HEAD_PREFIX = "heads/"
HEAD_RECORD_VERSION = 1

ExtentSource = Callable[[int], bytes]


@functools.lru_cache(maxsize=8)
def zeros(n: int) -> bytes:
    """``n`` zero bytes, shared (extent-sized buffers are reused, not reallocated)."""
    return bytes(n)


def is_zero(data: bytes) -> bool:
    """True when every byte is zero (a memcmp, not a Python loop)."""
    return data == zeros(len(data))


@dataclass(frozen=True, slots=True)
class CommitResult:
    manifest: Manifest
    record: VolumeRecord
    digests: dict[int, bytes]
    uploaded_bytes: int
    uploaded_chunks: int
    dedup_hits: int


@dataclass
class _Tally:
    uploaded_bytes: int = 0
    uploaded_chunks: int = 0
    dedup_hits: int = 0


def encode_extent(ctx: BlockstoreContext, data: bytes) -> tuple[bytes, bytes | None]:
    """``(digest, chunk value)``; an all-zero extent is ``(ZERO_HASH, None)``."""
    if is_zero(data):
        return ZERO_HASH, None
    return ctx.codec.hash(data), ctx.codec.encode(data)


def store_chunks(
    ctx: BlockstoreContext,
    commit_id: int,
    items: Sequence[tuple[bytes, bytes]],
    tally: _Tally | None = None,
) -> None:
    """Make sure every ``(digest, value)`` exists in the store, registered for GC first."""
    if not items:
        return
    unique = dict(items)
    keys = {chunk_key(d): d for d in unique}
    if ctx.heads.register_chunks(commit_id, keys):
        # A sweep started before we registered: it may be deleting one of these right now.
        ctx.heads.wait_for_sweep()
    infos = ctx.store.stat_many(list(keys))
    now = time.time()
    puts: list[tuple[str, bytes]] = []
    for key, digest in keys.items():
        info = infos[key]
        if info is not None and (info.mtime >= now - TOUCH_AGE or ctx.store.touch(key)):
            if tally:
                tally.dedup_hits += 1
            continue
        puts.append((key, unique[digest]))
    if puts:
        ctx.reserve.refuse_chunk_growth()
    ctx.store.put_many(puts)
    if tally:
        tally.uploaded_chunks += len(puts)
        tally.uploaded_bytes += sum(len(v) for _, v in puts)


def commit_extents(
    ctx: BlockstoreContext,
    rec: VolumeRecord,
    holder: str | None,
    manifest: Manifest,
    extents: Iterable[int],
    source: ExtentSource,
    *,
    ttl: float = DEFAULT_LEASE_TTL,
) -> CommitResult:
    """Upload ``extents`` (their bytes from ``source``) on top of ``manifest`` and advance
    the head of ``rec`` with a compare-and-swap. Raises LeaseLost if the head moved."""
    tally = _Tally()
    commit_id = ctx.heads.begin_commit(rec.id)
    writer = rec.writer_tag
    digests: dict[int, bytes] = {}
    try:
        for batch, futures in _encoded_batches(ctx, extents, source):
            encoded = [f.result() for f in futures]
            store_chunks(ctx, commit_id, [(d, v) for d, v in encoded if v is not None], tally)
            for e, (digest, _) in zip(batch, encoded, strict=True):
                digests[e] = digest
        changes = {e: d + writer for e, d in digests.items()}
        new_manifest, pages = manifest.updated(changes, ctx.codec.hash)
        store_chunks(ctx, commit_id, [(d, ctx.codec.encode(raw)) for d, raw in pages], tally)
        new_rec = ctx.heads.cas_head(rec, holder, new_manifest.root, commit_id=commit_id, ttl=ttl)
    except BaseException:
        try:
            ctx.heads.end_commit(commit_id)
        except Exception:  # the catalog may be what failed
            log.warning("could not unregister commit %d", commit_id)
        raise
    write_head_record(ctx, new_rec)
    return CommitResult(
        new_manifest,
        new_rec,
        digests,
        tally.uploaded_bytes,
        tally.uploaded_chunks,
        tally.dedup_hits,
    )


def _encoded_batches(
    ctx: BlockstoreContext, extents: Iterable[int], source: ExtentSource
) -> Iterator[tuple[list[int], list[Future[tuple[bytes, bytes | None]]]]]:
    """Batches of extents with their hashing/compression under way in the pool; the next
    batch is read and started before the current one is handed out, so encoding overlaps
    uploading. ``source(e)`` is called in order, from this thread, right after the
    iterator yields ``e`` (together they may be reading a stream)."""
    it = iter(extents)
    ready = None
    while True:
        batch: list[int] = []
        started = []
        # One extent at a time: the iterator and source may share a buffer (import).
        for e in islice(it, BATCH_EXTENTS):
            batch.append(e)
            started.append(ctx.pool.submit(encode_extent, ctx, source(e)))
        if ready is not None:
            yield ready
        if not batch:
            return
        ready = (batch, started)


def write_head_record(ctx: BlockstoreContext, rec: VolumeRecord) -> None:
    """Mirror the head into the chunk store, so GC can tell when a catalog is behind."""
    record = {
        "format": HEAD_RECORD_VERSION,
        "uid": rec.uid,
        "name": rec.name,
        "version": rec.version,
        "epoch": rec.epoch,
        "root": rec.root.hex(),
    }
    try:
        ctx.store.put(HEAD_PREFIX + rec.uid, json.dumps(record).encode())
    except Exception as e:  # GC only gets more careful when a record lags
        log.warning("could not write the head record of %s: %s", rec.name, e)


def manifest_for(ctx: BlockstoreContext, rec: VolumeRecord, root: bytes | None = None) -> Manifest:
    """The manifest of ``rec``'s head (or of another root of the same geometry)."""

    def load(digest: bytes) -> bytes:
        return ctx.decode_chunk(digest, ctx.cache.get(digest))

    return Manifest(rec.root if root is None else root, rec.n_extents, load)
