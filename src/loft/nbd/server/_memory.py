"""Keep large request buffers off the page-fault path.

Every 1 MiB READ reply and WRITE payload is a fresh buffer that lives until the socket
has sent (or the disk has taken) it. glibc serves allocations above its mmap threshold
(128 KiB until it adapts) with a fresh ``mmap`` and gives them back on free, so each such
buffer costs a page fault per 4 KiB page -- measured at ~1.5 ms of CPU per 1 MiB read on a
virtual machine, more than the read itself. Raising the threshold (and the heap trim
threshold) lets freed buffers be reused from the heap. Process-wide, so it is done once,
by the server, and only where glibc is the allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

from loft.nbd.protocol import MAX_PAYLOAD

__all__ = ["tune_allocator"]

log = logging.getLogger("loft.nbd")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Free heap memory kept for reuse instead of returned to the OS.
_TRIM_THRESHOLD = 256 * 1024 * 1024
_done = False


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds (once); False where that is not possible."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MAX_PAYLOAD + (1 << 20))) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
    if not ok:  # glibc caps the mmap threshold (32 MiB on 64-bit): take its maximum
        ok = bool(mallopt(_M_MMAP_THRESHOLD, MAX_PAYLOAD)) and bool(
            mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
        )
    _done = ok
    log.debug("nbd.malloc_tuned ok=%s", ok)
    return ok
