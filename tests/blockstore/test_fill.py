"""Fetched extents written around the page cache, and kept in memory for first reads."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from loft.blockstore import fill as fill_module
from loft.blockstore.fill import DirectFill, FreshExtents
from loft.directio import read_cached

EXTENT = 64 * 1024


def _data_file(tmp_path: Path, size: int) -> int:
    fd = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, size)
    return fd


def test_a_whole_extent_is_written_around_the_page_cache(tmp_path: Path) -> None:
    fd = _data_file(tmp_path, 4 * EXTENT)
    fill = DirectFill(fd)
    try:
        if not fill.enabled:
            pytest.skip("this filesystem refuses O_DIRECT")
        data = os.urandom(EXTENT)
        assert fill.write(memoryview(data), 2 * EXTENT)
        # On the disk, not in the page cache: the event loop would not wait for it.
        assert read_cached(fd, 2 * EXTENT, EXTENT) is None
        assert os.pread(fd, EXTENT, 2 * EXTENT) == data
        assert read_cached(fd, 2 * EXTENT, EXTENT) == data  # cached by that read
    finally:
        fill.close()
        os.close(fd)


def test_what_cannot_go_around_the_page_cache_is_left_to_the_caller(tmp_path: Path) -> None:
    fd = _data_file(tmp_path, 4 * EXTENT)
    fill = DirectFill(fd)
    try:
        assert not fill.write(b"x" * 1000, 0)  # a length O_DIRECT cannot write
        assert not fill.write(b"x" * EXTENT, 512)  # nor at this offset
        assert os.pread(fd, EXTENT, 0) == bytes(EXTENT)  # nothing written
    finally:
        fill.close()
        os.close(fd)


def test_a_filesystem_refusing_the_alignment_turns_direct_writes_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fd = _data_file(tmp_path, 4 * EXTENT)
    fill = DirectFill(fd)
    try:
        if not fill.enabled:
            pytest.skip("this filesystem refuses O_DIRECT")

        def refuse(fd: int, data: object, offset: int) -> int:
            raise OSError(errno.EINVAL, "Invalid argument")

        monkeypatch.setattr(fill_module.os, "pwrite", refuse)
        assert not fill.write(os.urandom(EXTENT), 0)
        assert not fill.enabled  # and the caller writes through the page cache from now on
    finally:
        monkeypatch.undo()
        fill.close()
        os.close(fd)


def test_fresh_extents_keep_the_newest_up_to_their_capacity() -> None:
    fresh = FreshExtents(2)
    fresh.put(1, b"one")
    fresh.put(2, b"two")
    fresh.put(3, b"three")  # the oldest, 1, makes room
    assert fresh.get(1) is None
    assert bytes(fresh.get(3) or b"") == b"three"
    fresh.put(2, b"again")  # a put again is the newest
    fresh.put(4, b"four")
    assert fresh.get(3) is None and bytes(fresh.get(2) or b"") == b"again"
    fresh.drop(2)
    assert fresh.get(2) is None and len(fresh) == 1
    fresh.clear()
    assert len(fresh) == 0


def test_fresh_extents_without_capacity_keep_nothing() -> None:
    fresh = FreshExtents(0)
    fresh.put(1, b"one")
    assert fresh.get(1) is None and len(fresh) == 0
