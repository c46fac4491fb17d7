"""Writing around the page cache (``O_DIRECT``), and reading only what it holds.

On a virtual machine, a page the guest touches for the first time -- or again after its
balloon handed it back to the hypervisor -- costs a VM exit: writing 1 GiB into new page
cache pages (dd) took 2.8 s of CPU here, against 0.24 s into pages just freed, and reading
a file from the disk into new pages 1.3 s, against 0.02 s with ``O_DIRECT``. Bytes that
pass through once (an extent fetched for a client that caches what it reads itself) are
cheaper written around the page cache, from a buffer each thread keeps.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading

__all__ = ["ALIGN", "aligned_buffer", "open_direct", "read_cached"]

#: O_DIRECT's alignment of offsets, lengths and buffers (the largest logical block size).
ALIGN = 4096

_local = threading.local()


def aligned_buffer(length: int) -> memoryview:
    """A page-aligned buffer of ``length`` bytes, this thread's own and kept for its next
    call (new memory for every transfer would be new pages to touch). Valid until the
    thread's next call; release the view when done."""
    buf: mmap.mmap | None = getattr(_local, "buf", None)
    if buf is None or len(buf) < length:
        size = -(-length // ALIGN) * ALIGN
        buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        _local.buf = buf
    return memoryview(buf)[:length]


def open_direct(path: str | os.PathLike[str], flags: int) -> int:
    """``os.open`` with ``O_DIRECT``; -1 where the filesystem refuses it (tmpfs)."""
    try:
        return os.open(path, flags | os.O_DIRECT)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return -1
        raise


def read_cached(fd: int, offset: int, length: int) -> bytearray | None:
    """``length`` bytes at ``offset`` if the page cache holds all of them, else None
    (without waiting for the disk)."""
    buf = bytearray(length)
    try:
        n = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
    except BlockingIOError:
        return None
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return None  # no RWF_NOWAIT here: the caller reads it where it may wait
        raise
    return buf if n == length else None
