"""Errors of loft.blockstore. The NBD server maps them to wire errors in one place."""

from __future__ import annotations

from loft.blockstore.chunkstore import ChunkNotFound, ChunkStoreError
from loft.errors import LoftError


class BlockstoreError(LoftError):
    """Base of every volume error."""


class InvalidArgument(BlockstoreError):
    """A bad name, size or range given by the user."""


class VolumeNotFound(BlockstoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no volume named {name!r}", hint="see `loft volume ls`")


class VolumeExists(BlockstoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"a volume named {name!r} already exists", hint="pick another name")


class SnapshotNotFound(BlockstoreError):
    def __init__(self, volume: str, name: str) -> None:
        super().__init__(
            f"volume {volume!r} has no snapshot named {name!r}",
            hint=f"see `loft volume snapshots {volume}`",
        )


class SnapshotExists(BlockstoreError):
    def __init__(self, volume: str, name: str) -> None:
        super().__init__(f"volume {volume!r} already has a snapshot named {name!r}")


class VolumeBusy(BlockstoreError):
    """Another writer holds the volume's lease."""


class LeaseLost(BlockstoreError):
    """This writer's lease expired or was taken over: it may no longer write or commit."""


class ReadOnlyVolume(BlockstoreError):
    """A write to a read-only view (a snapshot)."""


class VolumeIOError(BlockstoreError):
    """Reading or writing the volume failed (local disk or chunk store)."""


class NotFast(BlockstoreError):
    """A fast-only zero could not be done without reading or writing data."""


class GCRefused(BlockstoreError):
    """GC found a reason not to run (catalog behind the store, too much to delete)."""


__all__ = [
    "BlockstoreError",
    "ChunkNotFound",
    "ChunkStoreError",
    "GCRefused",
    "InvalidArgument",
    "LeaseLost",
    "NotFast",
    "ReadOnlyVolume",
    "SnapshotExists",
    "SnapshotNotFound",
    "VolumeBusy",
    "VolumeExists",
    "VolumeIOError",
    "VolumeNotFound",
]
