"""Fencing of a stale writer, on a SQLite and on a PostgreSQL catalog.

Writer A (node a) holds the lease with a 1 s TTL. A stops renewing (its renewals are
frozen: the fault injected here), B (node b) takes the volume over once the lease has
expired, through the public API. Then: A's writes and flushes are refused from its own
deadline on (before B could take over), A's commit fails, B sees exactly what A had
committed, nothing of A's appears in the head afterwards, and A's uncommitted work ends up
in the orphan fork ``NAME.orphan-<epoch>`` when A is closed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from bsfixtures import EXTENT, MIB, Deployment

from loft.blockstore import Blockstore, LeaseLost, Volume, VolumeBusy

TTL = 1.0
MARGIN = 0.2
KINDS = ["sqlite-file", "pg-file"]

pytestmark = pytest.mark.timeout(60)


def fill(tag: int, n: int = EXTENT) -> bytes:
    return bytes([tag]) * n


def take_over(bs: Blockstore, name: str, timeout: float = 20.0) -> tuple[Volume, float]:
    """B's side: retry the public open until A's lease has expired. Returns the volume and
    the monotonic time the successful attempt started."""
    deadline = time.monotonic() + timeout
    while True:
        started = time.monotonic()
        try:
            return bs.open(name, lease_ttl=TTL, lease_margin=MARGIN), started
        except VolumeBusy:
            assert time.monotonic() < deadline, "the lease never expired"
            time.sleep(0.05)


def freeze_renewals(vol: Volume) -> None:
    """Fault injection: A's lease renewals silently stop reaching the catalog."""
    vol.lease.renew = lambda: None  # type: ignore[method-assign]


def setup_writer(dep: Deployment) -> tuple[Blockstore, Blockstore, Volume]:
    a, b = dep.node("a"), dep.node("b")
    # A long commit interval: A commits only when asked, so its lease is never extended
    # by a background commit once renewals are frozen.
    a.create("v", size=MIB, extent_size=EXTENT, commit_interval=60.0)
    vol_a = a.open("v", lease_ttl=TTL, lease_margin=MARGIN)
    vol_a.write(0, fill(1))
    vol_a.commit()
    return a, b, vol_a


@pytest.mark.parametrize("kind", KINDS)
def test_stale_writer_is_fenced(kind: str, deployment_of: Callable[[str], Deployment]) -> None:
    dep = deployment_of(kind)
    _a, b, vol_a = setup_writer(dep)
    epoch_a = vol_a.record.epoch
    freeze_renewals(vol_a)
    vol_a.write(EXTENT, fill(2))  # acknowledged and flushed on node a, never committed
    vol_a.flush()

    # A keeps writing until it refuses to; every write it acknowledged is timestamped.
    acked: list[float] = []
    refused: list[BaseException] = []

    def keep_writing() -> None:
        i = 0
        while True:
            try:
                vol_a.write(2 * EXTENT + (i % 16) * 4096, fill(3, 4096))
            except LeaseLost as e:
                refused.append(e)
                return
            acked.append(time.monotonic())
            i += 1
            time.sleep(0.01)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    vol_b, takeover_started = take_over(b, "v")
    writer.join(10)
    assert refused, "A kept acknowledging writes after B took over"
    assert acked and acked[-1] < takeover_started, "A acknowledged a write after the takeover"
    assert vol_b.record.epoch > epoch_a

    # B sees exactly A's last commit: A's flushed-but-uncommitted data is not merged.
    assert vol_b.read(0, EXTENT) == fill(1)
    assert vol_b.read(EXTENT, 2 * EXTENT) == bytes(2 * EXTENT)

    # A can neither write, flush nor commit any more.
    with pytest.raises(LeaseLost):
        vol_a.write(5 * EXTENT, fill(4))
    with pytest.raises(LeaseLost):
        vol_a.flush()
    with pytest.raises(LeaseLost):
        vol_a.commit()

    # B works normally and its data is intact after A is closed.
    vol_b.write(0, fill(9))
    vol_b.commit()
    with pytest.raises(LeaseLost):
        vol_a.close()
    head = b.view("v")
    assert head.read(0, EXTENT) == fill(9)
    assert head.read(EXTENT, 4 * EXTENT) == bytes(4 * EXTENT)

    # A's uncommitted work survives as an orphan fork on top of A's last commit.
    orphan = f"v.orphan-{epoch_a}"
    assert orphan in {v.name for v in b.volumes()}, "A's working copy was not kept"
    view = b.view(orphan)
    assert view.read(0, EXTENT) == fill(1)
    assert view.read(EXTENT, EXTENT) == fill(2)
    assert view.read(2 * EXTENT, 4096) == fill(3, 4096)
    vol_b.close()
    assert b.view("v").read(0, EXTENT) == fill(9)


@pytest.mark.parametrize("kind", KINDS)
def test_commit_in_flight_during_takeover_fails(
    kind: str, deployment_of: Callable[[str], Deployment]
) -> None:
    """A's commit is uploading when B takes over: its compare-and-swap must fail."""
    dep = deployment_of(kind)
    a, b, vol_a = setup_writer(dep)
    epoch_a = vol_a.record.epoch
    freeze_renewals(vol_a)
    vol_a.write(EXTENT, fill(5))

    # Fault injection: A's uploads stall until B has taken the volume over.
    taken = threading.Event()
    real_put_many = a.ctx.store.put_many

    def stalled_put_many(items):  # type: ignore[no-untyped-def]
        taken.wait(30)
        return real_put_many(items)

    a.ctx.store.put_many = stalled_put_many  # type: ignore[method-assign]
    result: list[BaseException | None] = []

    def commit_a() -> None:
        try:
            vol_a.commit()
            result.append(None)
        except BaseException as e:
            result.append(e)

    committer = threading.Thread(target=commit_a)
    committer.start()
    vol_b, _ = take_over(b, "v")
    taken.set()
    committer.join(30)
    assert len(result) == 1 and isinstance(result[0], LeaseLost), result
    assert vol_a.fenced

    # Nothing of A's commit reached the head.
    assert b.get("v").epoch == vol_b.record.epoch
    assert vol_b.read(0, 2 * EXTENT) == fill(1) + bytes(EXTENT)
    vol_b.write(3 * EXTENT, fill(7))
    vol_b.commit()
    a.ctx.store.put_many = real_put_many  # type: ignore[method-assign]
    vol_a.close()  # fenced: salvages instead of committing
    view = b.view(f"v.orphan-{epoch_a}")
    assert view.read(0, 2 * EXTENT) == fill(1) + fill(5)
    assert view.read(3 * EXTENT, EXTENT) == bytes(EXTENT)
    vol_b.close()
    head = b.view("v")
    assert head.read(0, 4 * EXTENT) == fill(1) + bytes(2 * EXTENT) + fill(7)


@pytest.mark.parametrize("kind", KINDS)
def test_takeover_refused_while_lease_is_live(
    kind: str, deployment_of: Callable[[str], Deployment]
) -> None:
    """A renewing writer keeps its volume: B is refused well past the TTL. (A longer TTL
    than elsewhere: this checks liveness, and a loaded machine can delay a renewal.)"""
    dep = deployment_of(kind)
    a, b = dep.node("a"), dep.node("b")
    a.create("v", size=MIB, extent_size=EXTENT, commit_interval=60.0)
    vol_a = a.open("v", lease_ttl=2.0, lease_margin=0.4)
    vol_a.write(0, fill(1))
    until = time.monotonic() + 4.0
    while time.monotonic() < until:
        with pytest.raises(VolumeBusy):
            b.open("v", lease_ttl=TTL, lease_margin=MARGIN)
        vol_a.write(EXTENT, fill(6))  # A still acknowledges writes
        time.sleep(0.2)
    vol_a.close()
    vol_b = b.open("v", lease_ttl=TTL, lease_margin=MARGIN)
    assert vol_b.read(0, 2 * EXTENT) == fill(1) + fill(6)
    vol_b.close()
    assert not [v.name for v in b.volumes() if ".orphan-" in v.name]


def test_slow_commit_keeps_lease(deployment_of: Callable[[str], Deployment]) -> None:
    """A commit that takes longer than the lease TTL must not fence its own writer."""
    dep = deployment_of("sqlite-file")
    a = dep.node("a")
    a.create("v", size=MIB, extent_size=EXTENT, commit_interval=60.0)
    vol = a.open("v", lease_ttl=1.5, lease_margin=0.3)
    real_put_many = a.ctx.store.put_many

    def slow_put_many(items):  # type: ignore[no-untyped-def]
        time.sleep(4.5)  # a big commit on a slow store: three lease TTLs
        return real_put_many(items)

    a.ctx.store.put_many = slow_put_many  # type: ignore[method-assign]
    vol.write(0, fill(1))
    committer = threading.Thread(target=vol.commit)
    committer.start()
    try:
        time.sleep(3.0)
        vol.write(EXTENT, fill(2))  # nobody took over: this must be acknowledged
    finally:
        committer.join(30)
        a.ctx.store.put_many = real_put_many  # type: ignore[method-assign]
        vol.close()
