"""Read-ahead: a sequential reader finds the next extents fetched already; a random reader
fetches exactly what it reads; nothing is fetched beyond the window; the data is the
same either way, and a volume closes cleanly with fetches ahead under way."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest
from bsfixtures import EXTENT, Deployment

from loft.blockstore import Blockstore, Volume
from loft.blockstore.readahead import DEFAULT_WINDOW

pytestmark = pytest.mark.timeout(60)
N = 32
#: Manifest pages a reader fetches besides data (N extents fit in one leaf, the root).
PAGES = 1


@pytest.fixture
def written(deployment_of: Callable[[str], Deployment]) -> tuple[Deployment, bytes]:
    """Volume ``v`` of N extents of random data, committed by node ``writer``; readers
    open it on fresh nodes without a chunk cache, so every extent comes from the store."""
    dep = deployment_of("sqlite-file")
    dep.chunk_cache_bytes = 0
    data = random.Random(11).randbytes(N * EXTENT)
    writer = dep.node("writer")
    writer.create("v", size=N * EXTENT, extent_size=EXTENT)
    vol = writer.open("v")
    vol.write(0, data)
    vol.close()
    return dep, data


def settle(vol: Volume) -> None:
    """Wait until no fetch ahead is under way."""
    deadline = time.monotonic() + 10
    while vol._readahead.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)


def test_volume_readahead_keeps_a_sequential_reader_ahead(
    written: tuple[Deployment, bytes],
) -> None:
    dep, data = written
    bs: Blockstore = dep.node("reader")
    vol = bs.open("v")
    try:
        for e in range(N):
            assert vol.read(e * EXTENT, EXTENT) == data[e * EXTENT : (e + 1) * EXTENT]
            # Never more than the window beyond what was read.
            assert vol.present_extents <= e + 1 + DEFAULT_WINDOW
        settle(vol)
        assert vol._readahead.fetched >= N - 3  # all but the first misses came ahead
        assert bs.ctx.cache.fetched_count == N + PAGES  # and each extent was fetched once
    finally:
        vol.close()


def test_volume_readahead_random_reader_fetches_only_what_it_reads(
    written: tuple[Deployment, bytes],
) -> None:
    dep, data = written
    bs = dep.node("reader")
    vol = bs.open("v")
    try:
        order = [(5 * i) % N for i in range(N)]  # never the extent after the last one
        for e in order[: N // 2]:
            assert vol.read(e * EXTENT + 100, 4096) == data[e * EXTENT + 100 : e * EXTENT + 4196]
        settle(vol)
        assert vol._readahead.fetched == 0
        assert bs.ctx.cache.fetched_count == N // 2 + PAGES
        # Two adjacent misses (16 and 17 were not read) start a window, 18..25, and only
        # its absent extents are fetched: 19, 21, 22 and 24 (18, 20, 23, 25 were read).
        before = bs.ctx.cache.fetched_count
        vol.read(16 * EXTENT, 10)
        vol.read(17 * EXTENT, 10)
        settle(vol)
        assert DEFAULT_WINDOW == 8 and vol._readahead.fetched == 4
        assert bs.ctx.cache.fetched_count - before == 2 + 4
        assert vol.read(0, N * EXTENT) == data
    finally:
        vol.close()


def test_volume_readahead_close_waits_for_fetches_under_way(
    written: tuple[Deployment, bytes],
) -> None:
    dep, _ = written
    vol = dep.node("reader").open("v")
    vol.read(0, 10)
    vol.read(EXTENT, 10)  # sequential: a window of fetches starts
    vol.close()  # and must not write into a closed file
    assert not vol._readahead.in_flight
