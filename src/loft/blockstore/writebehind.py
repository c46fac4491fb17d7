"""Write-behind: start writing a volume's streamed writes back to its disk before the
client flushes them.

A client that streams large writes and flushes now and then (a guest's filesystem, fio
``--fsync``) otherwise finds every byte since its last flush still dirty in the page
cache when it flushes, and waits while ``fdatasync`` writes them all: measured with
bench/nbd_vs_nbdkit.py ``--sustained`` (1 MiB writes, a FLUSH every GiB), 370-480 ms
per flush, during which the client sent nothing and both cores sat idle. So once
:data:`WRITE_BEHIND_BYTES` of large writes have accumulated, a thread of the volume's
starts their writeback (``sync_file_range(SYNC_FILE_RANGE_WRITE)``: it queues the I/O and
waits for none of it); the flush then finds little left to write (17-50 ms there).

Only writes of :data:`LARGE_WRITE` bytes or more count: small writes are where rewrites
of the same page are likely, and the kernel's own writeback, which waits up to 30 s,
merges those. And only a client that flushed in the last :data:`FLUSHED_WITHIN` seconds
gets it: one that does not flush waits for no flush, and one that rewrites a range over
and over without flushing (fio's drained ``seq_write_1M`` rewrites one GiB five to ten
times in a run) would have every pass written to the disk, where the kernel writes only
the last: write-behind cost such a run ~55 us of CPU per MiB and its share of the disk
(docs/benchmarks.md, "Drained 1 MiB writes of a volume"). The flush the server makes
when a client disconnects (``Volume.flush(closing=True)``) does not count: the next
writes come from another client, and each of fio's runs ends with one.

Durability does not change: a flush still syncs the file, and only a flush
promises anything. Pages under writeback stay writable (the disk does not ask for stable
pages here: ``/sys/block/*/queue/stable_writes``); on a disk that did, a rewrite of a page
being written back would wait for that write.
"""

from __future__ import annotations

import logging
import threading
import time

from loft import libc

log = logging.getLogger(__name__)

__all__ = ["FLUSHED_WITHIN", "LARGE_WRITE", "WRITE_BEHIND_BYTES", "WriteBehind", "start_writeback"]

#: Large writes accumulated before their writeback starts.
WRITE_BEHIND_BYTES = 32 << 20
#: Writes smaller than this are left to the kernel's writeback.
LARGE_WRITE = 128 << 10
#: Seconds since the client's last flush within which its large writes are written
#: behind; after that they are left to the kernel's writeback until it flushes again.
FLUSHED_WITHIN = 60.0


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Queue the writeback of ``fd``'s dirty pages in ``[offset, offset+length)``; waits
    for no I/O (only, on a congested disk, for room to queue it)."""
    libc.sync_file_range(fd, offset, length, libc.SYNC_FILE_RANGE_WRITE)


class WriteBehind:
    """Starts the writeback of a file's large writes, a span at a time, on a thread of its
    own (started at the first span). :meth:`wrote` is called by the file's writers under
    one lock of theirs (the volume's); the span's bookkeeping relies on it."""

    def __init__(self, fd: int, threshold: int | None = None) -> None:
        self._fd = fd
        self._threshold = WRITE_BEHIND_BYTES if threshold is None else threshold
        #: when the client last flushed (monotonic); never, to begin with
        self._flushed_at = float("-inf")
        #: large writes since the last span was handed over: bytes, lowest and highest end
        self._bytes = 0
        self._lo = 0
        self._hi = 0
        #: the span the thread is to start next (merged with any it has not taken yet)
        self._span: tuple[int, int] | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._failed = False

    def wrote(self, offset: int, length: int) -> None:
        """``length`` bytes were written at ``offset`` (writers' lock held)."""
        if length < LARGE_WRITE:
            return
        end = offset + length
        if self._bytes:
            self._lo = min(self._lo, offset)
            self._hi = max(self._hi, end)
        else:
            self._lo, self._hi = offset, end
        self._bytes += length
        if self._bytes >= self._threshold:
            if time.monotonic() - self._flushed_at <= FLUSHED_WITHIN:
                self._hand_over()
            else:  # a client that does not flush: the kernel's writeback serves it
                self._bytes = 0

    def flushed(self) -> None:
        """The client flushed, and the file is synced (writers' lock held): what
        accumulated is on the disk, and write-behind serves this client from now on."""
        self._bytes = 0
        self._flushed_at = time.monotonic()

    def _hand_over(self) -> None:
        lo, hi = self._lo, self._hi
        self._bytes = 0
        with self._cond:
            if self._stop or self._failed:
                return
            if self._span is not None:
                lo, hi = min(lo, self._span[0]), max(hi, self._span[1])
            self._span = (lo, hi)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="write-behind", daemon=True)
                self._thread.start()
            self._cond.notify()

    def close(self) -> None:
        """Stop the thread (before the file is closed: it uses the descriptor)."""
        with self._cond:
            self._stop = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(30)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._span is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                assert self._span is not None
                lo, hi = self._span
                self._span = None
            try:
                start_writeback(self._fd, lo, hi - lo)
            except OSError as e:  # only ever an optimisation: flushes still sync
                log.warning("write-behind off for this volume: %s", e)
                with self._cond:
                    self._failed = True
                return
