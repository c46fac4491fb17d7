"""A commit's capture: the dirty extents at one instant, preserved until uploaded.

A write that lands on a captured extent before the uploader has read it first copies the
bytes it is about to overwrite into the capture's aside file (4 KiB blocks), so the upload
sees the extent exactly as it was when captured.

The copy is a ``pread`` and a ``pwrite`` through a buffer of the capture's. On ext4,
which cannot share blocks, ``copy_file_range`` falls back to splicing page by page: a
profile of sustained 1 MiB writes (``perf record -a -g``, bench/nbd_vs_nbdkit.py
``--sustained``, a FLUSH every GiB) put 20% of all samples, 71% of the event loop's
time, in that copy; through a buffer, the event loop's copies (the client's writes and
the copies aside together) took 11%. Each written byte was copied aside about once
there, when every flush started a new capture that waited out its interval; a local
flush no longer captures anything (committer.py), so copies are made only for the
capture uploading.

Copies go to slots (one extent each, in the order extents are first copied) of an aside
file that the next capture of the volume reuses, neither truncated nor deleted between
captures: overwriting pages the file already has costs the kernel about half of filling a
new file (110 against 215 us per MiB here), and a fresh file per capture also paid for
freeing its pages when it was deleted. Its size stays that of the largest recent capture's
copies; the volume deletes it when it closes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from loft.blockstore.chunks import HEADER_SIZE
from loft.blockstore.extents import WRITE_PIECE
from loft.blockstore.workcopy import pread_full

BLOCK = 4096


class Capture:
    """The extents (and their write generations) captured at one flush."""

    def __init__(self, seq: int, gens: dict[int, int], aside_path: Path, extent_size: int):
        self.seq = seq
        self.gens = gens
        self.unread = set(gens)
        self.aside_path = aside_path
        self.extent_size = extent_size
        self.created = time.monotonic()
        #: when the oldest flush this capture commits happened (an earlier capture it
        #: replaced may have been taken before it)
        self.since = self.created
        self._aside: dict[int, bytearray] = {}
        #: extent -> its slot in the aside file (set before the extent's bitmap exists)
        self._slots: dict[int, int] = {}
        self._fd = -1
        self._scratch: memoryview | None = None

    def _aside_fd(self) -> int:
        if self._fd < 0:
            # Not truncated: blocks not marked in a bitmap are never read (see module).
            self._fd = os.open(self.aside_path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    def preserve(self, data_fd: int, offset: int, length: int) -> None:
        """Copy aside the not-yet-preserved blocks of ``[offset, offset+length)`` that belong
        to captured, unread extents. Call before mutating that range of the data file."""
        es = self.extent_size
        end = offset + length
        for e in range(offset // es, (end - 1) // es + 1):
            if e not in self.unread:
                continue
            base = e * es
            bitmap = self._aside.get(e)
            if bitmap is None:
                self._slots[e] = len(self._slots)
                bitmap = self._aside[e] = bytearray(es // BLOCK)
            slot = self._slots[e] * es
            b0 = (max(offset, base) - base) // BLOCK
            b1 = (min(end, base + es) - 1 - base) // BLOCK
            b = b0
            while b <= b1:
                if bitmap[b]:
                    b += 1
                    continue
                run = b
                while run <= b1 and not bitmap[run]:
                    run += 1
                self._copy(data_fd, base + b * BLOCK, slot + b * BLOCK, (run - b) * BLOCK)
                # Marked only once the copy is complete: read_extent runs without the
                # volume's lock and trusts a marked block's aside copy.
                bitmap[b:run] = b"\x01" * (run - b)
                b = run

    def _copy(self, data_fd: int, offset: int, to: int, length: int) -> None:
        """Copy ``[offset, offset+length)`` of the data file to offset ``to`` of the aside
        file."""
        dst = self._aside_fd()
        scratch = self._scratch
        if scratch is None:
            scratch = self._scratch = memoryview(bytearray(WRITE_PIECE))
        done = 0
        while done < length:
            piece = scratch[: min(len(scratch), length - done)]
            n = os.preadv(data_fd, [piece], offset + done)
            if n == 0:  # past the end of the source: the rest reads as zeros anyway
                break
            os.pwritev(dst, [piece[:n]], to + done)
            done += n

    def read_extent(self, data_fd: int, extent: int, buf: bytearray) -> bytearray:
        """Fill the framed buffer ``buf`` (:func:`~loft.blockstore.chunks.framed`) with the
        extent's bytes as of the capture (data file overlaid with aside blocks), and
        return it.

        Needs no lock against writers (so the uploader never holds the volume's lock,
        which the event loop's reads take): a writer copies a block aside, then marks it,
        then overwrites it. A block this pread saw torn or new was marked before the write
        began, so before the bitmap is read below, and comes from the aside copy."""
        view = memoryview(buf)[HEADER_SIZE:]
        length = len(view)
        base = extent * self.extent_size
        pread_full(data_fd, view, base)
        # The extent stays protected until the whole commit is done: a retry after a failed
        # upload must read exactly the same bytes again.
        bitmap = self._aside.get(extent)
        if bitmap is None:
            return buf
        b, n = 0, min(len(bitmap), -(-length // BLOCK))
        while b < n:
            if not bitmap[b]:
                b += 1
                continue
            run = b
            while run < n and bitmap[run]:
                run += 1
            lo, hi = b * BLOCK, min(run * BLOCK, length)
            pread_full(self._fd, view[lo:hi], self._slots[extent] * self.extent_size + lo)
            b = run
        return buf

    def drop(self, extent: int) -> None:
        """Forget an extent (it was committed by an earlier capture with the same data)."""
        self.gens.pop(extent, None)
        self.unread.discard(extent)
        self._aside.pop(extent, None)

    def close(self, *, keep: bool = False) -> None:
        """Release the aside file; ``keep`` leaves it for the volume's next capture,
        trimmed to this capture's slots."""
        if self._fd >= 0:
            if keep:
                size = len(self._slots) * self.extent_size
                if os.fstat(self._fd).st_size > size:
                    os.ftruncate(self._fd, size)
            os.close(self._fd)
            self._fd = -1
        if not keep:
            self.aside_path.unlink(missing_ok=True)
