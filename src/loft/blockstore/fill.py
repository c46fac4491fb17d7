"""Fetched extents go into the working copy around the page cache, and their first reads
come from memory.

A cold read fetches each extent from the chunk store and writes it into the working
copy. Written through the page cache, every fetched byte takes a new page, whose first
touch on a virtual machine is a VM exit (see loft.directio: 2.8 s of CPU per GiB here),
and the node's page cache grows with every cold disk it serves, although the client
caches what it reads itself (a VM's kernel; the page cache above a loop device).

So a fetched extent is written with ``O_DIRECT`` (:class:`DirectFill`), and the chunk's
bytes stay in memory for the extent's first reads (:class:`FreshExtents`): a sequential
reader finds there what read-ahead fetched. A later read comes from the disk, on a worker
thread: the event loop reads such an extent with ``RWF_NOWAIT``, so only what the page
cache holds (:func:`loft.directio.read_cached`).
"""

from __future__ import annotations

import errno
import logging
import os

from loft.directio import ALIGN, aligned_buffer, open_direct

__all__ = ["DirectFill", "FreshExtents"]

log = logging.getLogger(__name__)


class DirectFill:
    """Writes whole extents into one data file with ``O_DIRECT``. Where the filesystem
    refuses it (tmpfs, say), :meth:`write` answers False and the caller writes through
    the page cache, as it does for a length that is not a multiple of the alignment."""

    def __init__(self, data_fd: int) -> None:
        self._fd = open_direct(f"/proc/self/fd/{data_fd}", os.O_RDWR)

    @property
    def enabled(self) -> bool:
        return self._fd >= 0

    def write(self, data: bytes | bytearray | memoryview, offset: int) -> bool:
        """Write ``data`` at ``offset``; False (nothing written) when this cannot go
        around the page cache."""
        n, fd = len(data), self._fd
        if fd < 0 or n % ALIGN or offset % ALIGN or n == 0:
            return False
        view = aligned_buffer(n)
        view[:] = data
        try:
            done = 0
            while done < n:
                done += os.pwrite(fd, view[done:], offset + done)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            # A filesystem that opens O_DIRECT and then refuses the alignment: write
            # through the page cache from now on (the caller writes the whole extent).
            log.info("working copy refuses O_DIRECT writes: %s", e.strerror)
            self.close()
            return False
        finally:
            view.release()
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class FreshExtents:
    """Extents just fetched, their bytes in memory for their first reads: at most
    ``capacity``, the oldest out first. ``put`` and ``drop`` with the volume's lock held
    (``drop`` before anything changes the extent's bytes); ``get`` without it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: dict[int, memoryview] = {}
        #: the extent's bytes, or None (the dict's own get: this is every read's path)
        self.get = self._data.get

    def put(self, extent: int, data: bytes | memoryview) -> None:
        if self.capacity <= 0:
            return
        d = self._data
        d.pop(extent, None)
        while len(d) >= self.capacity:
            del d[next(iter(d))]
        d[extent] = memoryview(data)

    def drop(self, extent: int) -> None:
        self._data.pop(extent, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
