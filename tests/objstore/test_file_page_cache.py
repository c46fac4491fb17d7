"""The directory store drops what it wrote from the page cache (written once, seldom read
back by the writer): the next writes then find free pages instead of growing the cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loft.objstore.file import FileObjectStore

pytestmark = pytest.mark.timeout(60)


def cached(path: Path) -> bool:
    """Whether the first page of ``path`` is in the page cache (a read that may not wait
    for the disk fails otherwise)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def skip_unless_pages_can_be_dropped(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, os.urandom(1 << 20))
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    if cached(probe):
        pytest.skip("this filesystem keeps pages it was told to drop (tmpfs)")


def test_written_objects_leave_the_page_cache(tmp_path: Path) -> None:
    skip_unless_pages_can_be_dropped(tmp_path)
    store = FileObjectStore(tmp_path / "store")
    try:
        value = os.urandom(1 << 20)
        store.put("chunks/ab/one", value)
        store.put_many([(f"chunks/cd/{i}", value) for i in range(3)])
        for key in ("chunks/ab/one", "chunks/cd/0", "chunks/cd/2"):
            assert not cached(tmp_path / "store" / key), key
        assert store.get("chunks/cd/1") == value  # read back from the disk
    finally:
        store.close()


def test_large_objects_read_leave_the_page_cache_and_small_ones_stay(tmp_path: Path) -> None:
    skip_unless_pages_can_be_dropped(tmp_path)
    store = FileObjectStore(tmp_path / "store")
    try:
        chunk, head = os.urandom(1 << 20), b"a small object"
        store.put("chunks/ab/one", chunk)
        store.put("heads/v", head)
        assert store.get("chunks/ab/one") == chunk
        assert store.get("heads/v") == head
        # A chunk is read to be fetched into a volume, once: it leaves the cache again.
        assert not cached(tmp_path / "store" / "chunks/ab/one")
        assert cached(tmp_path / "store" / "heads/v")
    finally:
        store.close()
