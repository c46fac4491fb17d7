"""Errors of loft.blockstore. The disk service's NBD backend maps them to errnos
(:mod:`loft.node.volume_backend`); the object store's own errors pass through."""

from __future__ import annotations

import errno

from loft.errors import LoftError
from loft.objstore import ObjectNotFound, ObjectStoreError


class BlockstoreError(LoftError):
    """Base of every volume error."""


class ChunkNotFound(BlockstoreError, ObjectNotFound):
    """A chunk (or manifest page) the catalog refers to is absent from the chunk store:
    the store lost it, which only tampering or a forced GC can do."""

    def __init__(self, key: str) -> None:
        ObjectNotFound.__init__(
            self,
            key,
            f"object {key!r} is missing from the chunk store",
            hint="the store was modified outside loft or a GC ran with --force",
        )


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


class NoSpace(BlockstoreError, OSError):
    """The node's data disk is under its free-space reserve: growth is refused. Also an
    OSError with errno ENOSPC, like the disk-full error it stands in for."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        BlockstoreError.__init__(self, message, hint=hint)
        self.errno = errno.ENOSPC
        self.strerror = self.message


class NotFast(BlockstoreError):
    """A fast-only zero could not be done without reading or writing data."""


class GCRefused(BlockstoreError):
    """GC found a reason not to run (catalog behind the store, too much to delete)."""


__all__ = [
    "BlockstoreError",
    "ChunkNotFound",
    "GCRefused",
    "InvalidArgument",
    "LeaseLost",
    "NoSpace",
    "NotFast",
    "ObjectNotFound",
    "ObjectStoreError",
    "ReadOnlyVolume",
    "SnapshotExists",
    "SnapshotNotFound",
    "VolumeBusy",
    "VolumeExists",
    "VolumeIOError",
    "VolumeNotFound",
]
