"""Serve a loft volume (or a read-only snapshot view) over NBD.

A thin adapter: the volume already has the NBD-shaped data path (pread/pwrite on a
sparse working copy, holes for zeros, lazy fetch of absent extents), so each method is
one call. ``is_resident`` tells the server when a request can run on the event loop.
"""

from __future__ import annotations

from typing import Protocol

from loft.nbd.backends.base import Backend, BlockSizes, Buffer

__all__ = ["VolumeBackend", "VolumeLike"]

#: Clients align to this; smaller writes are read-modify-write inside the volume.
PREFERRED_BLOCK = 4096


class VolumeLike(Protocol):
    """What the adapter needs: :class:`loft.blockstore.Volume`, ``SnapshotView``, or the
    disk service's lazily opened volume."""

    name: str
    size: int
    extent_size: int
    readonly: bool

    def is_resident(self, offset: int, length: int) -> bool: ...
    def read(self, offset: int, length: int) -> bytes: ...
    def write(
        self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False
    ) -> None: ...
    def zero(
        self,
        offset: int,
        length: int,
        *,
        fua: bool = False,
        may_trim: bool = True,
        fast_only: bool = False,
    ) -> None: ...
    def trim(self, offset: int, length: int, fua: bool = False) -> None: ...
    def flush(self) -> None: ...
    def cache(self, offset: int, length: int) -> None: ...
    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]: ...
    def allocation_depth(self, offset: int, length: int) -> list[tuple[int, int]]: ...
    def close(self) -> None: ...


class VolumeBackend(Backend):
    """An NBD export backed by a volume; one object shared by every connection."""

    def __init__(self, volume: VolumeLike, description: str = "") -> None:
        self.volume = volume
        self.size = volume.size
        self.readonly = volume.readonly
        self.description = description or f"loft volume {volume.name}"

    def can_trim(self) -> bool:
        return not self.readonly

    def can_zero(self) -> bool:
        return not self.readonly

    def can_fast_zero(self) -> bool:
        return not self.readonly

    def can_cache(self) -> bool:
        return True

    def can_multi_conn(self) -> bool:
        # Every connection shares this one volume object and its one working copy.
        return True

    def can_extents(self) -> bool:
        return True

    def can_allocation_depth(self) -> bool:
        return True

    def block_sizes(self) -> BlockSizes:
        return BlockSizes(minimum=1, preferred=PREFERRED_BLOCK)

    def is_resident(self, offset: int, length: int) -> bool:
        return self.volume.is_resident(offset, length)

    def pread(self, offset: int, length: int) -> Buffer:
        return self.volume.read(offset, length)

    def pwrite(self, offset: int, data: Buffer, fua: bool = False) -> None:
        self.volume.write(offset, data, fua)

    def zero(
        self,
        offset: int,
        length: int,
        *,
        fua: bool = False,
        may_trim: bool = True,
        fast_only: bool = False,
    ) -> None:
        self.volume.zero(offset, length, fua=fua, may_trim=may_trim, fast_only=fast_only)

    def trim(self, offset: int, length: int, fua: bool = False) -> None:
        self.volume.trim(offset, length, fua)

    def flush(self) -> None:
        self.volume.flush()

    def cache(self, offset: int, length: int) -> None:
        self.volume.cache(offset, length)

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        return self.volume.block_status(offset, length)

    def allocation_depth(self, offset: int, length: int) -> list[tuple[int, int]]:
        return self.volume.allocation_depth(offset, length)

    def close(self) -> None:
        self.volume.close()
