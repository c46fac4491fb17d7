"""Recovery of a working copy after an unclean stop on the same node: dirty extents are kept
and committed, clean ones are re-fetched, and a small extent budget changes nothing."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from bsfixtures import EXTENT, KIB, Deployment
from sqlalchemy import update

from loft.blockstore import Blockstore, InvalidArgument
from loft.catalog.schema import volumes as volumes_table

pytestmark = pytest.mark.timeout(60)
SIZE = 16 * EXTENT + 12 * KIB


def crash(bs: Blockstore, vol: object) -> None:
    """Drop the volume without closing it, and let its lease lapse at once."""
    wc = vol.detach()  # type: ignore[attr-defined]
    wc.close()
    with bs.ctx.catalog.write() as conn:
        conn.execute(
            update(volumes_table)
            .where(volumes_table.c.name == vol.name)  # type: ignore[attr-defined]
            .values(lease_expires=0.0)
        )


def read_all(vol: object) -> bytes:
    read = vol.read  # type: ignore[attr-defined]
    return b"".join(read(o, min(4 * EXTENT, SIZE - o)) for o in range(0, SIZE, 4 * EXTENT))


@pytest.mark.parametrize("budget", [8, 1024])
def test_crash_then_partial_read_then_reopen(
    budget: int, deployment_of: Callable[[str], Deployment]
) -> None:
    """Found by the model test: a crash, a read across two clean extents, a clean reopen."""
    dep = deployment_of("sqlite-file")
    dep.cache_bytes = budget * EXTENT
    dep.chunk_cache_bytes = 0
    bs = dep.node("a")
    bs.create("v", size=SIZE, extent_size=EXTENT, commit_interval=0.05)
    data = random.Random(1000).randbytes(EXTENT)
    model = bytearray(SIZE)
    model[:EXTENT] = data
    vol = bs.open("v")
    vol.write(0, data)
    crash(bs, vol)
    vol = bs.open("v")
    assert vol.read(EXTENT + 1, EXTENT) == bytes(model[EXTENT + 1 : 2 * EXTENT + 1])
    vol.close()
    vol = bs.open("v")
    assert read_all(vol) == bytes(model)
    vol.close()
    assert dep.node("fresh").view("v").read(0, SIZE) == bytes(model)


def test_crash_keeps_dirty_and_refetches_clean(deployment_of: Callable[[str], Deployment]) -> None:
    dep = deployment_of("sqlite-file")
    bs = dep.node("a")
    bs.create("v", size=SIZE, extent_size=EXTENT, commit_interval=60.0)
    vol = bs.open("v")
    committed = random.Random(1).randbytes(4 * EXTENT)
    vol.write(0, committed)
    vol.commit()
    vol.write(2 * EXTENT, b"dirty")  # flushed, not committed
    vol.flush()
    # A clean extent whose working-copy bytes were changed behind the engine's back
    # (as an unflushed write racing a crash could): recovery must not trust them.
    import os

    os.pwrite(vol._fd, b"garbage", 0)
    crash(bs, vol)
    vol = bs.open("v")
    want = bytearray(committed)
    want[2 * EXTENT : 2 * EXTENT + 5] = b"dirty"
    assert vol.read(0, 4 * EXTENT) == bytes(want)
    vol.close()
    assert dep.node("fresh").view("v").read(0, 4 * EXTENT) == bytes(want)
    # The unclean takeover kept the head the crashed writer had committed.
    snaps = {s.name: s for s in bs.snapshots("v")}
    assert any(n.startswith("takeover-") for n in snaps)


def test_orphan_of_a_long_named_volume_is_reachable(
    deployment_of: Callable[[str], Deployment],
) -> None:
    dep = deployment_of("sqlite-file")
    a, b = dep.node("a"), dep.node("b")
    name = "v" * 128
    a.create(name, size=SIZE, extent_size=EXTENT, commit_interval=60.0)
    vol = a.open(name)
    vol.write(0, b"unsaved")
    crash(a, vol)  # node a stops; b takes over
    b.open(name).close()
    a.open(name).close()  # a's stale working copy is salvaged as an orphan
    orphans = [v.name for v in b.volumes() if ".orphan-" in v.name]
    assert len(orphans) == 1
    assert b.view(orphans[0]).read(0, 7) == b"unsaved"
    b.remove(orphans[0])


def test_user_snapshot_named_like_an_automatic_one(
    deployment_of: Callable[[str], Deployment],
) -> None:
    """``takeover-<epoch>`` and ``restore-...`` are reserved: a user snapshot with such a
    name would make the unclean takeover that needs it fail for good (and give an orphan
    the wrong base)."""
    dep = deployment_of("sqlite-file")
    bs = dep.node("a")
    bs.create("v", size=SIZE, extent_size=EXTENT)
    vol = bs.open("v")
    vol.write(0, b"kept")
    vol.close()
    epoch = bs.get("v").epoch + 1
    for name in (f"takeover-{epoch}", "restore-20260101T000000-v1"):
        with pytest.raises(InvalidArgument, match="reserved"):
            bs.snapshot("v", name)
    bs.snapshot("v", "takeover")  # only the prefixes are reserved
    vol = bs.open("v")
    assert vol.record.epoch == epoch
    vol.write(0, b"more")
    crash(bs, vol)
    vol = bs.open("v")
    assert vol.read(0, 4) == b"more"
    vol.close()
    assert bs.view(f"v@takeover-{epoch}").read(0, 4) == b"kept"
