"""Serve a raw (possibly sparse) image file.

Reads and writes are ``os.pread``/``os.pwrite`` on one shared descriptor; FLUSH is
``fdatasync``; TRIM punches holes and WRITE_ZEROES uses ``FALLOC_FL_ZERO_RANGE`` (or
punches a hole when trimming is allowed); block status comes from
``SEEK_DATA``/``SEEK_HOLE``. Every connection shares the descriptor, so a flush covers
every connection's writes (CAN_MULTI_CONN).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from loft.libc import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    fallocate,
)
from loft.nbd.backends.base import Backend, BackendError, BlockSizes, Buffer
from loft.nbd.protocol import Errno, StateFlag

__all__ = ["FileBackend"]

_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_HOLE_ZERO = int(StateFlag.HOLE | StateFlag.ZERO)


class FileBackend(Backend):
    """A raw image file served as an NBD export."""

    copies_writes = True  # pwrite(2) copies into the page cache

    def __init__(
        self, path: str | os.PathLike[str], *, readonly: bool = False, description: str = ""
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.description = description or f"raw file {self.path.name}"
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
        self._fd = os.open(self.path, flags)
        st = os.fstat(self._fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(self._fd)
            raise BackendError(f"{self.path} is not a regular file", Errno.EINVAL)
        self.size = st.st_size
        self._punch = not readonly
        self._zero_range = not readonly
        self._seek = True
        self._nowait = _RWF_NOWAIT != 0

    def can_trim(self) -> bool:
        return not self.readonly

    def can_fast_zero(self) -> bool:
        return not self.readonly

    def can_multi_conn(self) -> bool:
        return True

    def can_extents(self) -> bool:
        return True

    def can_cache(self) -> bool:
        return True

    def can_allocation_depth(self) -> bool:
        return True

    def block_sizes(self) -> BlockSizes:
        return BlockSizes(1, 4096, BlockSizes().maximum)

    def pread(self, offset: int, length: int) -> Buffer:
        data = os.pread(self._fd, length, offset)
        if len(data) < length:  # the file shrank under us; read as zeroes past its end
            data += bytes(length - len(data))
        return data

    def pread_nowait(self, offset: int, length: int) -> Buffer | None:
        # RWF_NOWAIT: copy from the page cache, or fail at once rather than wait for the
        # disk -- so a cold read never stalls the event loop (and every other client).
        if not self._nowait:
            return None
        buf = bytearray(length)
        try:
            n = os.preadv(self._fd, [buf], offset, _RWF_NOWAIT)
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                self._nowait = False  # kernel or filesystem without RWF_NOWAIT
                return None
            raise
        if n < length:
            if offset + n >= self.size:
                return buf  # past the end of the file: zeroes, as pread pads
            return None  # partly cached: the worker thread reads it all
        return buf

    def pwrite(self, offset: int, data: Buffer, fua: bool = False) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view = view[n:]
            offset += n
        if fua:
            os.fdatasync(self._fd)

    def zero(
        self,
        offset: int,
        length: int,
        *,
        fua: bool = False,
        may_trim: bool = True,
        fast_only: bool = False,
    ) -> None:
        if may_trim and self._punch:
            try:
                fallocate(self._fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                self._punch = False
            else:
                return self._maybe_sync(fua)
        if self._zero_range:
            try:
                fallocate(self._fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                self._zero_range = False
            else:
                return self._maybe_sync(fua)
        super().zero(offset, length, fua=fua, may_trim=may_trim, fast_only=fast_only)

    def _maybe_sync(self, fua: bool) -> None:
        if fua:
            os.fdatasync(self._fd)

    def trim(self, offset: int, length: int, fua: bool = False) -> None:
        if not self._punch:
            return
        try:
            fallocate(self._fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            self._punch = False
        self._maybe_sync(fua)

    def flush(self) -> None:
        if not self.readonly:
            os.fdatasync(self._fd)

    def cache(self, offset: int, length: int) -> None:
        os.posix_fadvise(self._fd, offset, length, os.POSIX_FADV_WILLNEED)

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        end = min(offset + length, self.size)
        if not self._seek:
            return [(end - offset, 0)]
        out: list[tuple[int, int]] = []
        pos = offset
        try:
            while pos < end:
                try:
                    data = os.lseek(self._fd, pos, os.SEEK_DATA)
                except OSError as e:
                    if e.errno != errno.ENXIO:
                        raise
                    data = end  # no data after pos: hole up to the end
                if data > pos:
                    out.append((min(data, end) - pos, _HOLE_ZERO))
                    pos = min(data, end)
                    if pos >= end:
                        break
                hole = os.lseek(self._fd, pos, os.SEEK_HOLE)
                out.append((min(hole, end) - pos, 0))
                pos = min(hole, end)
                if len(out) >= 1024:  # enough for one reply; clients ask again
                    break
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                self._seek = False
                return [(end - offset, 0)]
            raise
        return out

    def allocation_depth(self, offset: int, length: int) -> list[tuple[int, int]]:
        return [
            (n, 0 if flags & StateFlag.HOLE else 1) for n, flags in self.extents(offset, length)
        ]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
