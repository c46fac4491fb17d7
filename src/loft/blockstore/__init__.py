"""Volumes: thin-provisioned disks stored as content-addressed chunks, with constant-time
snapshots and forks, lazy loading, crash-safe flush and a fenced single writer.

Start at :class:`Blockstore` (the operations) and :class:`Volume` (the data path)."""

from loft.blockstore.api import Blockstore, TransferReport, VolumeInfo
from loft.blockstore.context import BlockstoreContext
from loft.blockstore.errors import (
    BlockstoreError,
    ChunkNotFound,
    GCRefused,
    InvalidArgument,
    LeaseLost,
    NotFast,
    ObjectStoreError,
    ReadOnlyVolume,
    SnapshotExists,
    SnapshotNotFound,
    VolumeBusy,
    VolumeExists,
    VolumeIOError,
    VolumeNotFound,
)
from loft.blockstore.extents import STATE_HOLE, STATE_ZERO
from loft.blockstore.snapview import SnapshotView
from loft.blockstore.volume import Volume, open_volume

__all__ = [
    "STATE_HOLE",
    "STATE_ZERO",
    "Blockstore",
    "BlockstoreContext",
    "BlockstoreError",
    "ChunkNotFound",
    "GCRefused",
    "InvalidArgument",
    "LeaseLost",
    "NotFast",
    "ObjectStoreError",
    "ReadOnlyVolume",
    "SnapshotExists",
    "SnapshotNotFound",
    "SnapshotView",
    "TransferReport",
    "Volume",
    "VolumeBusy",
    "VolumeExists",
    "VolumeIOError",
    "VolumeInfo",
    "VolumeNotFound",
    "open_volume",
]
