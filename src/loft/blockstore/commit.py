"""Uploading a set of extents and advancing the head: the commit pipeline.

Order matters for GC and crash safety: register the chunk keys in the catalog, then make
sure every chunk exists in the store (upload, or refresh an old dedup hit), then the new
manifest pages the same way, then compare-and-swap the head, then write the head record.
A crash anywhere leaves the previous head intact and at worst some unreferenced chunks.

Hash first: an extent is hashed (keyed BLAKE3) before anything else, and compressed and
uploaded only when the store lacks its chunk. Whether it has it comes from the node's
presence index (:mod:`loft.blockstore.presence`), else from a stat. Committing data the
store already holds thus costs reading and hashing it.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from itertools import islice

from loft.blockstore.chunks import HEADER_SIZE, ZERO_HASH, chunk_key, framed
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

#: ``source(e)``: extent ``e``'s bytes in a framed buffer (``HEADER_SIZE`` bytes of room,
#: then the data), taken from the commit's :class:`Buffers` or its own.
ExtentSource = Callable[[int], bytearray]


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


class Buffers:
    """Framed extent buffers reused from one batch to the next within a commit, so a
    commit allocates (and the kernel zeroes and maps) two batches' worth, not one buffer
    per extent. Used from the committing thread only."""

    def __init__(self) -> None:
        self._free: dict[int, list[bytearray]] = {}

    def get(self, length: int) -> bytearray:
        """A framed buffer for ``length`` bytes of data (contents undefined)."""
        free = self._free.get(length)
        return free.pop() if free else bytearray(HEADER_SIZE + length)

    def release(self, buf: bytearray) -> None:
        """Hand a buffer back once nothing refers to it any more."""
        self._free.setdefault(len(buf) - HEADER_SIZE, []).append(buf)


def hash_extent(ctx: BlockstoreContext, buf: bytearray) -> bytes:
    """The digest of a framed buffer's extent; ``ZERO_HASH`` when it is all zeros (told
    from the keyed hash of zeros, so no extra pass over the data)."""
    data = memoryview(buf)[HEADER_SIZE:]
    digest = ctx.codec.hash(data)
    return ZERO_HASH if digest == ctx.codec.zero_digest(len(data)) else digest


def encode_extent(ctx: BlockstoreContext, data: bytes) -> tuple[bytes, bytes | bytearray | None]:
    """``(digest, chunk value)``; an all-zero extent is ``(ZERO_HASH, None)``."""
    buf = framed(data)
    digest = hash_extent(ctx, buf)
    return digest, None if digest == ZERO_HASH else ctx.codec.frame(buf)


def store_chunks(
    ctx: BlockstoreContext,
    commit_id: int,
    chunks: dict[bytes, bytearray],
    tally: _Tally | None = None,
) -> None:
    """Make sure the chunk of every ``digest -> framed buffer`` exists in the store,
    registered for GC first: known present (presence index), else present on a stat
    (refreshed when old), else compressed now and uploaded."""
    if not chunks:
        return
    keys = {d: chunk_key(d) for d in chunks}
    reg = ctx.heads.register_chunks(commit_id, keys.values())
    trusted = True
    if reg.sweeping:
        # A sweep started before we registered: it may be deleting one of these right now.
        trusted = ctx.heads.wait_for_sweep()
    now = time.time()
    fresh_after = now - TOUCH_AGE
    known = ctx.presence.known(chunks, reg.sweeps, fresh_after) if trusted else set()
    asked = [d for d in chunks if d not in known]
    infos = ctx.store.stat_many([keys[d] for d in asked]) if asked else {}
    hits = list(known)
    missing = []
    for d in asked:
        info = infos[keys[d]]
        # An object too short to be a chunk (an upload cut off by a crash, on stores that
        # leave one) is not a hit: the chunk is uploaded again over it.
        if (
            info is not None
            and info.size > HEADER_SIZE
            and (info.mtime > fresh_after or ctx.store.touch(keys[d]))
        ):
            hits.append(d)
        else:
            missing.append(d)
    if missing:
        ctx.reserve.refuse_chunk_growth()
    values = list(ctx.pool.map(lambda d: ctx.codec.frame(chunks[d]), missing))
    ctx.store.put_many([(keys[d], v) for d, v in zip(missing, values, strict=True)])
    if trusted:
        seen = {d: now for d in missing}
        for d in asked:
            if d not in seen:  # a stat's hit: as old as the stat said, or touched now
                info = infos[keys[d]]
                seen[d] = info.mtime if info is not None and info.mtime > fresh_after else now
        ctx.presence.add(seen, reg.sweeps)
    if tally:
        tally.dedup_hits += len(hits)
        tally.uploaded_chunks += len(missing)
        tally.uploaded_bytes += sum(len(v) for v in values)


def commit_extents(
    ctx: BlockstoreContext,
    rec: VolumeRecord,
    holder: str | None,
    manifest: Manifest,
    extents: Iterable[int],
    source: ExtentSource,
    *,
    buffers: Buffers | None = None,
    ttl: float = DEFAULT_LEASE_TTL,
) -> CommitResult:
    """Upload ``extents`` (their bytes from ``source``) on top of ``manifest`` and advance
    the head of ``rec`` with a compare-and-swap. Raises LeaseLost if the head moved. The
    buffers ``source`` returns go back to ``buffers`` once their batch is stored."""
    tally = _Tally()
    commit_id = ctx.heads.begin_commit(rec.id)
    writer = rec.writer_tag
    digests: dict[int, bytes] = {}
    try:
        for batch in _hashed_batches(ctx, extents, source):
            chunks: dict[bytes, bytearray] = {}
            for e, buf, fut in batch:
                digest = digests[e] = fut.result()
                if digest != ZERO_HASH:
                    chunks.setdefault(digest, buf)
            store_chunks(ctx, commit_id, chunks, tally)
            if buffers is not None:
                for _, buf, _ in batch:
                    buffers.release(buf)
        changes = {e: d + writer for e, d in digests.items()}
        new_manifest, pages = manifest.updated(changes, ctx.codec.hash)
        store_chunks(ctx, commit_id, {d: framed(raw) for d, raw in pages}, tally)
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


_Hashed = list[tuple[int, bytearray, Future[bytes]]]


def _hashed_batches(
    ctx: BlockstoreContext, extents: Iterable[int], source: ExtentSource
) -> Iterator[_Hashed]:
    """Batches of ``(extent, framed buffer, digest future)`` with their hashing under way
    in the pool; the next batch is read and started before the current one is handed out,
    so reading and hashing overlap storing. ``source(e)`` is called in order, from this
    thread, right after the iterator yields ``e`` (together they may be reading a
    stream)."""
    it = iter(extents)
    ready: _Hashed | None = None
    while True:
        batch: _Hashed = []
        # One extent at a time: the iterator and source may share state (import).
        for e in islice(it, BATCH_EXTENTS):
            buf = source(e)
            batch.append((e, buf, ctx.pool.submit(hash_extent, ctx, buf)))
        if ready is not None:
            yield ready
        if not batch:
            return
        ready = batch


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
