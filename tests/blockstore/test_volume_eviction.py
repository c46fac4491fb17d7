"""Clean extents are evicted under the node's byte budget; reads stay correct."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loft.blockstore import Blockstore
from loft.blockstore import volume as volume_module
from loft.config import Settings

KIB = 1 << 10
EXTENT = 64 * KIB
pytestmark = pytest.mark.timeout(120)


def _blockstore(root: Path, node: str, cache_bytes: int) -> Blockstore:
    return Blockstore.from_settings(
        Settings(
            data_dir=root / node,
            chunks_url=f"file://{root / 'chunks'}",
            catalog_url=f"sqlite:///{root / 'catalog.db'}",
            cache_bytes=cache_bytes,
            chunk_cache_bytes=0,
        )
    )


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def _written(tmp_path: Path, n: int) -> dict[int, bytes]:
    """Volume ``v`` of ``n`` extents of random data, written and committed by node a."""
    writer = _blockstore(tmp_path, "a", 1 << 30)
    writer.create("v", size=n * EXTENT, extent_size=EXTENT)
    contents = {e: os.urandom(EXTENT) for e in range(n)}
    vol = writer.open("v")
    for e, data in contents.items():
        vol.write(e * EXTENT, data)
    vol.close()
    writer.close()
    return contents


def test_clean_extents_are_evicted_under_the_budget(tmp_path: Path) -> None:
    contents = _written(tmp_path, 64)
    budget = 8 * EXTENT
    reader = _blockstore(tmp_path, "b", budget)
    vol = reader.open("v")
    data_file = reader.ctx.volumes_dir / vol.record.uid / "data"
    try:
        for rnd in range(2):
            for e in range(64):
                assert vol.read(e * EXTENT, EXTENT) == contents[e], (rnd, e)
                assert vol.present_extents <= budget // EXTENT
                assert reader.ctx.budget.used_bytes <= budget
            assert _allocated(data_file) <= budget + EXTENT
        # A dirty extent is never evicted, whatever the budget says.
        vol.write(0, b"x" * 100)
        for e in range(1, 64):
            vol.read(e * EXTENT, 16)
        assert vol.read(0, 100) == b"x" * 100
    finally:
        vol.close()
        reader.close()


def test_a_lazy_fork_fetches_only_what_it_reads(tmp_path: Path) -> None:
    writer = _blockstore(tmp_path, "a", 1 << 30)
    writer.create("base", size=256 * EXTENT, extent_size=EXTENT)
    vol = writer.open("base")
    for e in range(256):
        vol.write(e * EXTENT, os.urandom(EXTENT))
    vol.close()
    writer.snapshot("base", "s")
    writer.fork("base@s", "child")
    writer.close()

    reader = _blockstore(tmp_path, "b", 1 << 30)
    child = reader.open("child")
    try:
        for e in (3, 100, 200):
            child.read(e * EXTENT + 17, 1000)
        # Three extents and the one manifest page (256 extents fit in a single leaf).
        assert reader.ctx.cache.fetched_count == 4
        # Random data does not compress: three extents plus a page of at most ~10 KiB.
        assert reader.ctx.cache.fetched_bytes <= 3 * (EXTENT + 64) + 11 * KIB
        assert child.present_extents == 3
        assert child.allocation_depth(3 * EXTENT, EXTENT) == [(EXTENT, 2)]
    finally:
        child.close()
        reader.close()


def test_a_read_racing_with_an_eviction_is_redone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small reads take no lock: an eviction that punches the hole while such a read is
    in its pread (made to happen here, deterministically) must not return the hole."""
    contents = _written(tmp_path, 4)
    reader = _blockstore(tmp_path, "b", 1 << 30)
    vol = reader.open("v")
    try:
        assert vol.read(EXTENT, 100) == contents[1][:100]  # extent 1 is here, clean
        vol._fresh.clear()  # its fetched bytes gone from memory: reads pread the disk
        real_pread = os.pread
        raced = []

        def pread_while_evicted(fd: int, n: int, offset: int) -> bytes:
            if not raced:
                raced.append(offset)
                vol.evict(offset // EXTENT)  # another thread's eviction, mid-read
            return real_pread(fd, n, offset)

        monkeypatch.setattr(volume_module.os, "pread", pread_while_evicted)
        assert vol.read(EXTENT + 10, 4000) == contents[1][10:4010]
        assert raced == [EXTENT + 10]
    finally:
        monkeypatch.undo()
        vol.close()
        reader.close()


def test_extents_read_again_outlive_those_read_once(tmp_path: Path) -> None:
    """Eviction order approximates least recently used: an extent that keeps being read
    stays while a scan streams other extents through a small budget."""
    contents = _written(tmp_path, 32)
    reader = _blockstore(tmp_path, "b", 4 * EXTENT)
    vol = reader.open("v")
    try:
        assert vol.read(0, 512) == contents[0][:512]
        for e in range(1, 32):
            assert vol.is_resident(0, 512), f"the hot extent was evicted by extent {e}"
            assert vol.read(0, 512) == contents[0][:512]
            assert vol.read(e * EXTENT, 512) == contents[e][:512]
            assert vol.present_extents <= 4
    finally:
        vol.close()
        reader.close()


def test_read_nowait_never_fetches(tmp_path: Path) -> None:
    """The event loop's read of any range: what is here, else None -- an absent extent,
    alone or beside a present one, is left to a worker thread, not fetched."""
    contents = _written(tmp_path, 4)
    reader = _blockstore(tmp_path, "b", 1 << 30)
    vol = reader.open("v")
    try:
        new = os.urandom(EXTENT)
        vol.write(0, new)  # extent 0 written whole here (nothing fetched), 1 absent
        assert vol.present_extents == 1
        assert vol.read_nowait(EXTENT + 10, 4000) is None
        assert vol.read_nowait(EXTENT - 100, 200) is None  # across extents 0 and 1
        assert vol.present_extents == 1 and not vol.is_resident(EXTENT, 1)
        assert vol.read(EXTENT, 10) == contents[1][:10]  # a worker thread fetches it
        vol._fresh.clear()  # what is left of the fetch: the page cache, or the disk
        across = vol.read_nowait(EXTENT - 100, 200)
        assert across is None or bytes(across) == new[-100:] + contents[1][:100]
    finally:
        vol.close()
        reader.close()


def test_fetched_extents_are_read_from_memory_first_and_never_hide_a_write(
    tmp_path: Path,
) -> None:
    """A fetched extent goes to the disk around the page cache (fill.py): its first reads
    come from the fetched bytes, later ones from the disk, never on the event loop, and a
    write or an eviction is never hidden by the bytes kept in memory."""
    contents = _written(tmp_path, 4)
    reader = _blockstore(tmp_path, "b", 1 << 30)
    vol = reader.open("v")
    try:
        if not vol._fill.enabled:
            pytest.skip("this filesystem refuses O_DIRECT")
        assert vol.read(EXTENT, 100) == contents[1][:100]  # fetched
        got = vol.read_nowait(EXTENT + 10, 4000)
        assert isinstance(got, memoryview) and got == contents[1][10:4010]  # no copy
        vol._fresh.clear()
        # On the disk only, whatever else touched the file's pages (the suite once found
        # them cached here): written back and dropped from the page cache.
        fd = os.open(reader.ctx.volumes_dir / vol.record.uid / "data", os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        assert vol.is_resident(EXTENT, 4000)
        assert vol.read_nowait(EXTENT, 4000) is None  # on the disk only: not inline
        assert vol.read(EXTENT, 4000) == contents[1][:4000]  # a worker thread reads it
        assert vol.read_nowait(EXTENT, 4000) == contents[1][:4000]  # now cached

        assert vol.read(2 * EXTENT, 10) == contents[2][:10]
        vol.write(2 * EXTENT + 5, b"new")
        want = contents[2][:5] + b"new" + contents[2][8:4000]
        assert vol.read_nowait(2 * EXTENT, 4000) == want
        assert vol.read(2 * EXTENT, 4000) == want

        assert vol.read(3 * EXTENT, 10) == contents[3][:10]
        vol.evict(3)
        assert vol._fresh.get(3) is None and not vol.is_resident(3 * EXTENT, 10)
        assert vol.read(3 * EXTENT, 4000) == contents[3][:4000]  # fetched again
    finally:
        vol.close()
        reader.close()
