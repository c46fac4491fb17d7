"""max_dirty: a writer that would take a volume's uncommitted data past it waits (it does
not fail) until a commit makes room, and resumes; the commit needs no flush from the
client: the volume makes its own flush point."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence

import pytest
from bsfixtures import EXTENT, Deployment

from loft.blockstore.errors import InvalidArgument, LeaseLost

pytestmark = pytest.mark.timeout(60)

LIMIT = 4  # extents


def test_volume_max_dirty_throttles_a_writer_until_a_commit(
    deployment_of: Callable[[str], Deployment],
) -> None:
    dep = deployment_of("sqlite-file")
    bs = dep.node("a")
    # An hour's commit interval: only the throttle can start a commit here.
    bs.create(
        "t",
        size=16 * EXTENT,
        extent_size=EXTENT,
        commit_interval=3600.0,
        max_dirty=LIMIT * EXTENT,
    )
    vol = bs.open("t")
    store = vol.ctx.store
    uploads = threading.Event()
    gate = threading.Event()
    put_many = store.put_many

    def gated(items: Sequence[tuple[str, bytes | bytearray]]) -> None:
        uploads.set()
        assert gate.wait(30)
        put_many(items)

    store.put_many = gated  # type: ignore[method-assign]
    rng = random.Random(5)
    data = [rng.randbytes(EXTENT) for _ in range(LIMIT + 1)]
    try:
        for e in range(LIMIT):
            vol.write(e * EXTENT, data[e])  # up to the limit: no wait
        assert vol.dirty_extents == LIMIT and vol.throttled_writes == 0
        # near the limit: an extent not dirty yet goes off the event loop, a dirty one not
        assert not vol.is_resident(LIMIT * EXTENT, EXTENT)
        assert vol.is_resident(0, EXTENT) and not vol.is_resident(0, 2 * LIMIT * EXTENT)

        done: list[BaseException | None] = []

        def writer() -> None:
            try:
                vol.write(LIMIT * EXTENT, data[LIMIT])  # one extent more than allowed
                done.append(None)
            except BaseException as e:
                done.append(e)

        t = threading.Thread(target=writer)
        t.start()
        # Waiting, not failed: and it started a commit although nobody flushed.
        assert uploads.wait(10), "the throttled write started no commit"
        t.join(0.3)
        assert t.is_alive() and not done
        assert vol.throttled_writes == 1
        vol.write(0, data[0][::-1])  # an extent already dirty never waits
        gate.set()
        t.join(30)
        assert done == [None]
    finally:
        gate.set()
    assert vol.dirty_extents <= LIMIT
    assert vol.read(LIMIT * EXTENT, EXTENT) == data[LIMIT]
    assert vol.read(0, EXTENT) == data[0][::-1]
    # What the volume committed on its own is the disk at one instant: extents 1..3 as
    # written (extent 0 may hold either of its two writes, the point came between them).
    view = dep.node("fresh").view("t")
    for e in range(1, LIMIT):
        assert view.read(e * EXTENT, EXTENT) == data[e]
    assert view.read(0, EXTENT) in (data[0], data[0][::-1])
    assert vol.max_commit_lag > 0
    vol.close()


def test_volume_max_dirty_waits_end_when_the_volume_closes(
    deployment_of: Callable[[str], Deployment],
) -> None:
    """A writer waiting for room fails once the volume is fenced or closed, never hangs."""
    dep = deployment_of("sqlite-file")
    bs = dep.node("a")
    bs.create("t", size=8 * EXTENT, extent_size=EXTENT, max_dirty=EXTENT)
    vol = bs.open("t")
    gate = threading.Event()
    put_many = vol.ctx.store.put_many

    def stuck(items: Sequence[tuple[str, bytes | bytearray]]) -> None:
        gate.wait(30)
        put_many(items)

    vol.ctx.store.put_many = stuck  # type: ignore[method-assign]
    vol.write(0, b"x" * EXTENT)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            vol.write(EXTENT, b"y" * EXTENT)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    t.join(0.3)
    assert t.is_alive()
    vol.lease.fence(LeaseLost("fenced by the test"))
    t.join(30)
    assert not t.is_alive(), "the waiting writer hangs"
    assert len(errors) == 1 and isinstance(errors[0], LeaseLost)
    gate.set()
    vol.close()  # a fenced volume keeps its work as an orphan fork


def test_volume_max_dirty_below_one_extent_is_refused(
    deployment_of: Callable[[str], Deployment],
) -> None:
    bs = deployment_of("sqlite-file").node("a")
    with pytest.raises(InvalidArgument, match="at least one extent"):
        bs.create("t", size=8 * EXTENT, extent_size=EXTENT, max_dirty=EXTENT - 1)
