"""Writing around the page cache, and reading only what it holds."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from loft.directio import ALIGN, aligned_buffer, open_direct, read_cached


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def test_a_thread_keeps_one_aligned_buffer() -> None:
    a = aligned_buffer(10_000)
    first = _address(a)
    assert first % ALIGN == 0 and len(a) == 10_000
    a.release()
    b = aligned_buffer(ALIGN)  # smaller: the same memory again
    assert _address(b) == first and len(b) == ALIGN
    b.release()


def test_read_cached_never_waits_for_the_disk(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(4 * ALIGN))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages: gone
        data = path.read_bytes()  # ... and back, for the whole file
        assert read_cached(fd, ALIGN, ALIGN) == data[ALIGN : 2 * ALIGN]
        dfd = open_direct(path, os.O_RDWR)
        if dfd < 0:
            pytest.skip("this filesystem refuses O_DIRECT")
        try:
            view = aligned_buffer(ALIGN)
            view[:] = b"d" * ALIGN
            os.pwrite(dfd, view, 0)  # on the disk; the cached page is dropped
            view.release()
        finally:
            os.close(dfd)
        assert read_cached(fd, 0, ALIGN) is None
        assert os.pread(fd, ALIGN, 0) == b"d" * ALIGN
    finally:
        os.close(fd)
