"""The node-wide budget for clean extents (LOFT_CACHE_BYTES): clean extents are evicted and
fetched again, so a big volume never needs its size in node disk."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from bsfixtures import EXTENT, Deployment

pytestmark = pytest.mark.timeout(60)
N = 16


def prepare(deployment_of: Callable[[str], Deployment], budget_extents: int) -> Deployment:
    dep = deployment_of("sqlite-file")
    dep.cache_bytes = budget_extents * EXTENT
    bs = dep.node("writer")
    bs.create("v", size=N * EXTENT, extent_size=EXTENT)
    vol = bs.open("v")
    vol.write(0, random.Random(1).randbytes(N * EXTENT))
    vol.close()
    return dep


def test_clean_extents_stay_within_the_budget(deployment_of: Callable[[str], Deployment]) -> None:
    dep = prepare(deployment_of, 4)
    want = random.Random(1).randbytes(N * EXTENT)
    bs = dep.node("reader")
    vol = bs.open("v")
    for rounds in range(2):
        for e in range(N):
            assert vol.read(e * EXTENT, EXTENT) == want[e * EXTENT : (e + 1) * EXTENT]
            assert vol.present_extents <= 4, f"round {rounds}: {vol.present_extents} present"
    # Dirty extents are never evicted: they are the only copy.
    for e in range(8):
        vol.write(e * EXTENT, b"d" * 10)
        vol.read(((e + 8) % N) * EXTENT, 10)
    assert vol.dirty_extents == 8
    assert vol.read(0, 10) == b"d" * 10
    vol.close()
    assert bs.ctx.budget.used_bytes == 0


def test_big_read_leaves_nothing_outside_the_budget(
    deployment_of: Callable[[str], Deployment],
) -> None:
    dep = prepare(deployment_of, 4)
    want = random.Random(1).randbytes(N * EXTENT)
    vol = dep.node("reader").open("v")
    try:
        assert vol.read(0, 8 * EXTENT) == want[: 8 * EXTENT]
        for e in range(8, N):
            assert vol.read(e * EXTENT, EXTENT) == want[e * EXTENT : (e + 1) * EXTENT]
        assert vol.present_extents <= 4
    finally:
        vol.close()
