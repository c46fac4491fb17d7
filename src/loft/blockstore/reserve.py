"""The free-space reserve of the node's data disk: admission for growth.

Volumes are thin: their sizes add up to more than the data disk holds. Without a limit,
the disk fills while every workspace writes, and then every working copy's write, the
catalog and the chunk store fail together -- each workspace's ext4 aborting at once. So
the node keeps a reserve (``LOFT_DISK_RESERVE``: a size such as ``2G``, or a share of
the disk such as ``5%``; by default 5 % of the data dir's filesystem, at most 2 GiB),
and once free space falls under it, *growth* is refused cleanly while everything else
goes on:

- a WRITE (or a partial WRITE_ZEROES) that would allocate working-copy space -- one that
  touches an extent not present on the node (it would be fetched or filled), or a hole of
  a present one (a zero extent that was fetched as a hole) -- fails with ENOSPC at the
  NBD level, before anything of it is applied. ext4 in the workspace hands that to the
  writer: its ``fsync`` fails with ENOSPC, the filesystem stays mounted read-write, and
  it writes again once space is freed (tests/runtime/test_disk_reserve_workspace.py).
  Known limit: ext4's journal is written where the workspace never wrote before (a
  template's journal is zeros, so absent in a fork) until it has gone round once; a
  journal write refused there aborts the journal, as any failed metadata write does;
- new chunks for a file chunk store on the same filesystem are refused (the commit is
  retried with backoff, the data stays safe, dirty, on the node);
- reads go on: a fetched extent takes space, but clean extents are bounded by
  ``LOFT_CACHE_BYTES`` and evicted to stay within it; overwrites of allocated bytes (a
  dirty extent, a clean one's data) go on: they take nothing new. Trims and whole-extent
  zeroing go on: they free space.

Free space is read with ``statvfs`` (the space available to unprivileged users, so
root's own reserved blocks stay untouched) at most every :data:`CHECK_INTERVAL`, so the
common write costs a clock read; the reserve absorbs what is written in between. A
refusal always reads it afresh, so freed space is used at once.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from loft.blockstore.errors import NoSpace
from loft.units import format_size, parse_size

__all__ = [
    "CHECK_INTERVAL",
    "DEFAULT_RESERVE_CAP",
    "DEFAULT_RESERVE_FRACTION",
    "DiskReserve",
    "reserve_bytes",
]

DEFAULT_RESERVE_FRACTION = 0.05
DEFAULT_RESERVE_CAP = 2 << 30
#: How stale the free-space figure may be, in seconds. At 1 GB/s of new writes that is
#: 50 MB past the line, well inside any sensible reserve.
CHECK_INTERVAL = 0.05


def reserve_bytes(spec: str, total: int) -> int:
    """The reserve for a filesystem of ``total`` bytes: ``spec`` is ``N%``, a size, or ""
    for the default (5 %, at most 2 GiB), as checked by :class:`~loft.config.Settings`."""
    spec = spec.strip()
    if not spec:
        return min(int(total * DEFAULT_RESERVE_FRACTION), DEFAULT_RESERVE_CAP)
    if spec.endswith("%"):
        return int(total * float(spec[:-1]) / 100)
    return parse_size(spec)


class DiskReserve:
    """The reserve of the filesystem holding ``data_dir`` (see the module docstring).
    ``chunks_url``: a ``file://`` chunk store on that filesystem is held to it too."""

    def __init__(self, data_dir: Path, spec: str, chunks_url: str = "") -> None:
        self.data_dir = data_dir
        self.spec = spec
        self._chunk_dir = _file_store_dir(chunks_url)
        self._checked = float("-inf")
        self._low = False
        self._free = 0
        self._reserve = 0
        self._lock = threading.Lock()

    def low(self, *, fresh: bool = False) -> bool:
        """True while free space is under the reserve (re-read at most every
        :data:`CHECK_INTERVAL`, unless ``fresh``)."""
        now = time.monotonic()
        if now - self._checked < CHECK_INTERVAL and not fresh:
            return self._low
        with self._lock:
            if fresh or now - self._checked >= CHECK_INTERVAL:
                st = os.statvfs(self.data_dir)
                self._free = st.f_bavail * st.f_frsize
                self._reserve = reserve_bytes(self.spec, st.f_blocks * st.f_frsize)
                self._low = self._free < self._reserve
                self._checked = now
        return self._low

    def refuse_growth(self, what: str) -> None:
        """NoSpace (ENOSPC on the wire) while the disk is under its reserve. Never on a
        stale figure: space freed a moment ago admits the growth at once."""
        if self.low(fresh=True):
            raise NoSpace(
                f"{what}: the data disk is down to {format_size(self._free)} free, under "
                f"its reserve of {format_size(self._reserve)}",
                hint="free space on the node's data disk (LOFT_DISK_RESERVE sets the "
                "reserve); reads and overwrites go on meanwhile",
            )

    def refuse_chunk_growth(self) -> None:
        """NoSpace while under the reserve, when new chunks would land on this disk."""
        if self.low() and self._chunk_dir is not None and self._same_filesystem(self._chunk_dir):
            self.refuse_growth("new chunks refused")

    def _same_filesystem(self, path: Path) -> bool:
        while not path.exists() and path != path.parent:
            path = path.parent
        return os.stat(path).st_dev == os.stat(self.data_dir).st_dev


def _file_store_dir(url: str) -> Path | None:
    parts = urlsplit(url)
    return Path(parts.path) if parts.scheme == "file" else None
