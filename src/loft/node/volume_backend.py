"""Serve a loft volume (read-write, holding its lease) or a snapshot view (read-only):
the NBD backend over the blockstore, which is why it lives here, above both.

A thin adapter: the volume already speaks in NBD terms (``block_status`` flags are
``base:allocation``'s, ``allocation_depth`` is ``qemu:allocation-depth``'s), so every
method is one call. Data is passed through as the server received it (a WRITE payload
buffer goes straight to ``os.pwrite``). Blockstore errors become errno-carrying
:class:`~loft.nbd.backends.BackendError` here (:func:`backend_error`): the NBD server
core knows only errno.

The server asks :meth:`is_resident` before each request: resident ranges are served on
the event loop thread, the rest (lazy fetches from the chunk store) on worker threads.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from loft.blockstore.errors import (
    BlockstoreError,
    InvalidArgument,
    LeaseLost,
    NoSpace,
    NotFast,
    ReadOnlyVolume,
)
from loft.nbd.backends.base import Backend, BackendError, BlockSizes, Buffer
from loft.nbd.protocol import MAX_PAYLOAD

__all__ = ["VolumeBackend", "VolumeLike", "backend_error"]

#: The errno each kind of blockstore failure is reported with (anything else is EIO).
_ERRNO: tuple[tuple[type[BlockstoreError], int], ...] = (
    (ReadOnlyVolume, errno.EPERM),
    (NotFast, errno.EOPNOTSUPP),
    # The lease is gone: this server may no longer serve the volume.
    (LeaseLost, errno.ESHUTDOWN),
    (InvalidArgument, errno.EINVAL),
    # The data disk is under its reserve: growth is refused, cleanly.
    (NoSpace, errno.ENOSPC),
)


def backend_error(exc: BlockstoreError) -> BackendError:
    """The errno-carrying error a blockstore failure is answered with."""
    for kind, code in _ERRNO:
        if isinstance(exc, kind):
            return BackendError(str(exc), code)
    return BackendError(str(exc), errno.EIO)


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except BlockstoreError as e:
        raise backend_error(e) from e


class VolumeLike(Protocol):
    """What the adapter uses of :class:`loft.blockstore.Volume` / ``SnapshotView``."""

    name: str
    size: int
    extent_size: int
    readonly: bool

    def is_resident(self, offset: int, length: int) -> bool: ...
    def read(self, offset: int, length: int) -> bytes: ...
    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]: ...
    def allocation_depth(self, offset: int, length: int) -> list[tuple[int, int]]: ...
    def cache(self, offset: int, length: int) -> None: ...
    def flush(self, *, closing: bool = False) -> None: ...


class VolumeBackend(Backend):
    """One volume (or snapshot view) as an export. Every connection to the export must
    share this one object: the volume has a single working copy, so a FLUSH on any
    connection covers every connection's writes (CAN_MULTI_CONN)."""

    copies_writes = True  # a volume writes into its working copy before returning

    def __init__(self, volume: VolumeLike, *, description: str = "") -> None:
        self.volume = volume
        self.size = volume.size
        self.readonly = bool(volume.readonly)
        kind = "snapshot" if self.readonly else "volume"
        self.description = description or f"loft {kind} {volume.name}"
        # The per-request calls go straight to the volume: one Python call less each, which
        # is a measurable share of a 4 KiB read served from the page cache.
        self.is_resident = volume.is_resident  # type: ignore[method-assign]
        self._read: Callable[[int, int], bytes] = volume.read
        # A volume may hold resident bytes only on the disk (fill.py); a snapshot view's
        # resident extents are in memory, so its read never waits for the disk.
        self._read_nowait: Callable[[int, int], Buffer | None] = getattr(
            volume, "read_nowait", volume.read
        )
        # A volume's read_nowait checks residency itself, for any range: a small READ is
        # then one call into the volume, not is_resident and a read through each layer.
        # (Its errors are translated when the worker thread reads the range again.)
        self.read_resident = getattr(volume, "read_nowait", None)

    def can_trim(self) -> bool:
        return not self.readonly

    def can_fast_zero(self) -> bool:
        return not self.readonly

    def can_cache(self) -> bool:
        return True

    def can_multi_conn(self) -> bool:
        return True

    def can_extents(self) -> bool:
        return True

    def can_allocation_depth(self) -> bool:
        return True

    def block_sizes(self) -> BlockSizes:
        # Minimum 1: the volume does read-modify-write itself. Preferred: the page size
        # (the extent size would make clients pad small writes to megabytes).
        return BlockSizes(1, 4096, MAX_PAYLOAD)

    def is_resident(self, offset: int, length: int) -> bool:
        return self.volume.is_resident(offset, length)

    def pread(self, offset: int, length: int) -> Buffer:
        try:  # no context manager here: this is every read's path
            return self._read(offset, length)
        except BlockstoreError as e:
            raise backend_error(e) from e

    def pread_nowait(self, offset: int, length: int) -> Buffer | None:
        try:
            return self._read_nowait(offset, length)
        except BlockstoreError as e:
            raise backend_error(e) from e

    def pwrite(self, offset: int, data: Buffer, fua: bool = False) -> None:
        with _translated():
            self.volume.write(offset, data, fua)  # type: ignore[attr-defined]

    def zero(
        self,
        offset: int,
        length: int,
        *,
        fua: bool = False,
        may_trim: bool = True,
        fast_only: bool = False,
    ) -> None:
        with _translated():
            self.volume.zero(  # type: ignore[attr-defined]
                offset, length, fua=fua, may_trim=may_trim, fast_only=fast_only
            )

    def trim(self, offset: int, length: int, fua: bool = False) -> None:
        with _translated():
            self.volume.trim(offset, length, fua)  # type: ignore[attr-defined]

    def flush(self) -> None:
        with _translated():
            self.volume.flush()

    def flush_on_close(self) -> None:
        with _translated():
            self.volume.flush(closing=True)

    def cache(self, offset: int, length: int) -> None:
        with _translated():
            self.volume.cache(offset, length)

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        with _translated():
            return self.volume.block_status(offset, length)

    def allocation_depth(self, offset: int, length: int) -> list[tuple[int, int]]:
        with _translated():
            return self.volume.allocation_depth(offset, length)

    def close(self) -> None:
        """The volume belongs to whoever opened it (it holds the lease): not closed here."""
        return None
