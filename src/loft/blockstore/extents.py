"""What a volume and a snapshot view share about extents: block-status runs, allocation
depth, and writing an extent's bytes into a working copy."""

from __future__ import annotations

import os

from loft.blockstore.budget import Evictable
from loft.blockstore.manifest import NEVER

__all__ = [
    "MAX_STATUS_EXTENTS",
    "STATE_HOLE",
    "STATE_ZERO",
    "WRITE_PIECE",
    "append_run",
    "entry_depth",
    "evict_all",
    "write_pieces",
]

#: NBD base:allocation flags, as block_status reports them.
STATE_HOLE = 1
STATE_ZERO = 2
#: Runs one block-status answer describes at most (the client asks again for the rest).
MAX_STATUS_EXTENTS = 1024

#: Largest single write into the working copy. The kernel caches a write in folios as
#: large as the write, and a later small write into a large folio costs in proportion to
#: the folio's size (Linux 6.18, ext4): 20,000 random 4 KiB writes into a cached file took
#: 0.15 s with 128 KiB folios, 0.24 s with 256 KiB, 0.60 s with 1 MiB and 0.99 s with
#: 4 MiB. Large folios make sequential 1 MiB overwrites cheaper (198, 178 and 152 us per
#: MiB with 128 KiB, 256 KiB and 1 MiB folios); 256 KiB is the balance. A volume writes
#: extents dirty already in one call: their folios exist (volume.py, ``_write_large``).
WRITE_PIECE = 256 << 10


def write_pieces(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """``os.pwrite`` in pieces of at most :data:`WRITE_PIECE` bytes (see there)."""
    n = len(data)
    if n <= WRITE_PIECE:
        os.pwrite(fd, data, offset)
        return
    view = memoryview(data)
    for pos in range(0, n, WRITE_PIECE):
        os.pwrite(fd, view[pos : pos + WRITE_PIECE], offset + pos)


def evict_all(victims: list[tuple[Evictable, int]]) -> None:
    """Evict what the budget chose to make room (outside any volume's lock)."""
    for owner, extent in victims:
        owner.evict(extent)


def entry_depth(entry: bytes, own_tag: bytes, lineage_tags: list[bytes]) -> int:
    """qemu:allocation-depth of a manifest entry: 0 never written, 1 written by this
    volume, 2+ inherited from the fork parent, grandparent..."""
    if entry == NEVER:
        return 0
    tag = entry[32:]
    if tag == own_tag:
        return 1
    try:
        return lineage_tags.index(tag) + 2
    except ValueError:
        return len(lineage_tags) + 2


def append_run(out: list[tuple[int, int]], length: int, flags: int) -> None:
    """Append a ``(length, flags)`` run, merging it into the last one when flags match."""
    if out and out[-1][1] == flags:
        out[-1] = (out[-1][0] + length, flags)
    else:
        out.append((length, flags))
