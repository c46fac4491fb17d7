"""A read-only view of one version of a volume (a snapshot, or a head): for exports,
``NAME@SNAP`` NBD exports and verification. Reads go through the node's chunk cache and a
small LRU of decoded extents; no working copy, no lease."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator

from loft.blockstore.chunks import ZERO_HASH
from loft.blockstore.commit import manifest_for, zeros
from loft.blockstore.context import BlockstoreContext
from loft.blockstore.errors import InvalidArgument, ReadOnlyVolume, VolumeIOError
from loft.blockstore.extents import (
    MAX_STATUS_EXTENTS,
    STATE_HOLE,
    STATE_ZERO,
    append_run,
    entry_depth,
)
from loft.blockstore.heads import VolumeRecord, writer_tag
from loft.objstore import ObjectStoreError

_DECODED_EXTENTS = 16


class SnapshotView:
    """The contents of ``rec`` at ``root``; thread-safe, read-only."""

    readonly = True

    def __init__(self, ctx: BlockstoreContext, rec: VolumeRecord, root: bytes, name: str):
        self.ctx = ctx
        self.name = name
        self.size = rec.size
        self.extent_size = rec.extent_size
        self._rec = rec
        self._manifest = manifest_for(ctx, rec, root)
        self._tag = rec.writer_tag
        self._lineage_tags = [writer_tag(u) for u in rec.lineage]
        self._decoded: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def _elen(self, e: int) -> int:
        return min(self.extent_size, self.size - e * self.extent_size)

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise InvalidArgument(f"range {offset}+{length} is outside {self.name!r}")

    def digest(self, extent: int) -> bytes:
        """The chunk hash of an extent (ZERO_HASH when it reads as zeros)."""
        return self._manifest.entry(extent)[:32]

    def extent(self, e: int) -> bytes:
        """The decoded bytes of extent ``e``."""
        with self._lock:
            data = self._decoded.get(e)
            if data is not None:
                self._decoded.move_to_end(e)
                return data
        digest = self.digest(e)
        if digest == ZERO_HASH:
            return zeros(self._elen(e))
        try:
            data = self.ctx.decode_chunk(digest, self.ctx.cache.get(digest))
        except ObjectStoreError as err:
            raise VolumeIOError(f"{self.name}: fetching extent {e} failed: {err}") from err
        with self._lock:
            self._decoded[e] = data
            while len(self._decoded) > _DECODED_EXTENTS:
                self._decoded.popitem(last=False)
        return data

    def is_resident(self, offset: int, length: int) -> bool:
        if length <= 0:
            return True
        es = self.extent_size
        with self._lock:
            return all(
                e in self._decoded for e in range(offset // es, (offset + length - 1) // es + 1)
            )

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        es = self.extent_size
        parts = []
        pos, end = offset, offset + length
        while pos < end:
            e = pos // es
            stop = min(end, e * es + self._elen(e))
            data = self.extent(e)
            parts.append(data[pos - e * es : stop - e * es])
            pos = stop
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        self._check_range(offset, length)
        out: list[tuple[int, int]] = []
        es = self.extent_size
        pos, end = offset, offset + length
        while pos < end and len(out) < MAX_STATUS_EXTENTS:
            e = pos // es
            stop = min(end, e * es + self._elen(e))
            zero = self.digest(e) == ZERO_HASH
            append_run(out, stop - pos, STATE_HOLE | STATE_ZERO if zero else 0)
            pos = stop
        return out

    def allocation_depth(self, offset: int, length: int) -> list[tuple[int, int]]:
        self._check_range(offset, length)
        out: list[tuple[int, int]] = []
        es = self.extent_size
        pos, end = offset, offset + length
        while pos < end and len(out) < MAX_STATUS_EXTENTS:
            e = pos // es
            stop = min(end, e * es + self._elen(e))
            depth = entry_depth(self._manifest.entry(e), self._tag, self._lineage_tags)
            append_run(out, stop - pos, depth)
            pos = stop
        return out

    def cache(self, offset: int, length: int) -> None:
        self._check_range(offset, length)
        if not length:
            return
        es = self.extent_size
        digests = [
            d
            for e in range(offset // es, (offset + length - 1) // es + 1)
            if (d := self.digest(e)) != ZERO_HASH
        ]
        try:
            self.ctx.cache.get_many(digests)
        except ObjectStoreError as err:
            raise VolumeIOError(f"{self.name}: prefetch failed: {err}") from err

    def written_extents(self) -> Iterator[tuple[int, bytes]]:
        """``(extent, digest)`` for every extent that holds data."""
        for e, entry in self._manifest.entries():
            if entry[:32] != ZERO_HASH:
                yield e, entry[:32]

    def _readonly(self, *_: object, **__: object) -> None:
        raise ReadOnlyVolume(f"{self.name!r} is a read-only snapshot")

    write = zero = trim = _readonly

    def flush(self, *, closing: bool = False) -> None:
        """Nothing to flush in a read-only view."""

    def close(self) -> None:
        with self._lock:
            self._decoded.clear()
