"""The head row, on SQLite and PostgreSQL: compare-and-swap commits, takeovers that bump the
epoch in the row they read, leases judged by the database's clock, snapshots, GC leases."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from loft.blockstore.errors import (
    LeaseLost,
    SnapshotExists,
    SnapshotNotFound,
    VolumeBusy,
    VolumeExists,
    VolumeNotFound,
)
from loft.blockstore.heads import Heads, Registration, VolumeRecord
from loft.catalog import Catalog
from loft.catalog.schema import gc_state

pytestmark = pytest.mark.timeout(60)
ROOT1, ROOT2, ROOT3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


@pytest.fixture(params=["sqlite", "postgres"])
def heads(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Heads]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'catalog.db'}"
    else:
        url = request.getfixturevalue("postgres_db_url")
    cat = Catalog(url)
    try:
        yield Heads(cat)
    finally:
        cat.close()


def new_volume(heads: Heads, name: str = "v") -> VolumeRecord:
    return heads.create(
        name,
        size=1 << 20,
        extent_size=64 << 10,
        durability="local",
        commit_interval=5.0,
        max_dirty=1 << 20,
    )


def test_create_and_names(heads: Heads) -> None:
    rec = new_volume(heads)
    assert (rec.version, rec.epoch, rec.holder) == (0, 0, None)
    assert rec.n_extents == 16 and len(rec.uid) == 32
    with pytest.raises(VolumeExists):
        new_volume(heads)
    with pytest.raises(VolumeNotFound):
        heads.get("nope")
    assert heads.find("nope") is None
    assert [v.name for v in heads.all()] == ["v"]


def test_takeover_bumps_epoch_and_excludes_others(heads: Heads) -> None:
    new_volume(heads)
    tk = heads.takeover("v", "A", ttl=30, margin=1)
    assert tk.record.epoch == 1 and tk.previous_epoch == 0 and not tk.unclean
    assert tk.record.holder == "A" and tk.record.lease_expires is not None
    with pytest.raises(VolumeBusy):
        heads.takeover("v", "B", ttl=30, margin=1)
    heads.release(tk.record.id, tk.record.epoch, "A")
    tk2 = heads.takeover("v", "B", ttl=30, margin=1)
    assert tk2.record.epoch == 2 and not tk2.unclean
    # A released holder cannot release someone else's lease.
    heads.release(tk.record.id, tk.record.epoch, "A")
    assert heads.get("v").holder == "B"


def test_cas_advances_only_from_the_expected_head(heads: Heads) -> None:
    new_volume(heads)
    rec = heads.takeover("v", "A", ttl=30, margin=1).record
    rec1 = heads.cas_head(rec, "A", ROOT1, commit_id=None)
    assert (rec1.version, rec1.root, rec1.epoch) == (1, ROOT1, rec.epoch)
    with pytest.raises(LeaseLost):  # stale version
        heads.cas_head(rec, "A", ROOT2, commit_id=None)
    with pytest.raises(LeaseLost):  # wrong holder
        heads.cas_head(rec1, "B", ROOT2, commit_id=None)
    assert heads.get("v").root == ROOT1
    # A takeover (after expiry) bumps the epoch: the old writer's CAS fails.
    expire(heads, "v")
    tk = heads.takeover("v", "B", ttl=30, margin=1)
    assert tk.unclean and tk.record.epoch == rec.epoch + 1
    with pytest.raises(LeaseLost):
        heads.cas_head(rec1, "A", ROOT2, commit_id=None)
    assert heads.get("v").root == ROOT1
    # The head the fenced writer last committed is kept for its orphan.
    snap = heads.get_snapshot(tk.record, f"takeover-{rec.epoch}")
    assert snap.root == ROOT1 and snap.auto
    rec2 = heads.cas_head(tk.record, "B", ROOT2, commit_id=None)
    assert rec2.version == 2 and rec2.root == ROOT2


def test_concurrent_cas_has_one_winner(heads: Heads) -> None:
    new_volume(heads)
    rec = heads.takeover("v", "A", ttl=30, margin=1).record
    results: list[object] = []
    barrier = threading.Barrier(4)

    def attempt(root: bytes) -> None:
        barrier.wait()
        try:
            results.append(heads.cas_head(rec, "A", root, commit_id=None).root)
        except LeaseLost as e:
            results.append(e)

    threads = [threading.Thread(target=attempt, args=(bytes([i + 1]) * 32,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [r for r in results if isinstance(r, bytes)]
    assert len(results) == 4 and len(winners) == 1
    assert heads.get("v").root == winners[0] and heads.get("v").version == 1


def test_concurrent_takeovers_have_one_winner(heads: Heads) -> None:
    new_volume(heads)
    results: list[object] = []
    barrier = threading.Barrier(4)

    def attempt(holder: str) -> None:
        barrier.wait()
        try:
            results.append(heads.takeover("v", holder, ttl=30, margin=1).record.holder)
        except VolumeBusy as e:
            results.append(e)

    threads = [threading.Thread(target=attempt, args=(f"h{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [r for r in results if isinstance(r, str)]
    assert len(winners) == 1 and heads.get("v").holder == winners[0]
    assert heads.get("v").epoch == 1


def expire(heads: Heads, name: str) -> None:
    with heads.catalog.write() as conn:
        now = heads.catalog.now(conn)
        from loft.catalog.schema import volumes

        conn.execute(update(volumes).where(volumes.c.name == name).values(lease_expires=now - 60))


def test_renew_and_lease_expiry(heads: Heads) -> None:
    new_volume(heads)
    rec = heads.takeover("v", "A", ttl=0.5, margin=0.2).record
    assert heads.renew(rec.id, rec.epoch, "A", 0.5)
    assert not heads.renew(rec.id, rec.epoch, "B", 0.5)
    with pytest.raises(VolumeBusy):
        heads.takeover("v", "B", ttl=0.5, margin=0.2)
    time.sleep(0.8)  # past expiry + margin by the database's clock
    rec_b = heads.takeover("v", "B", ttl=0.5, margin=0.2).record
    assert rec_b.epoch == rec.epoch + 1
    assert not heads.renew(rec.id, rec.epoch, "A", 0.5)  # A's lease is gone for good


def test_database_clock_judges_leases(heads: Heads, monkeypatch: pytest.MonkeyPatch) -> None:
    with heads.catalog.read() as conn:
        t1 = heads.catalog.now(conn)
    with heads.catalog.read() as conn:
        t2 = heads.catalog.now(conn)
    assert abs(t1 - time.time()) < 5 and t2 >= t1
    new_volume(heads)
    heads.takeover("v", "A", ttl=30, margin=1)
    # Fault injection: this node's clock jumps a day ahead. The lease is still live.
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 86400)
    with pytest.raises(VolumeBusy):
        heads.takeover("v", "B", ttl=30, margin=1)
    rec = heads.get("v")
    monkeypatch.setattr(time, "time", real_time)
    assert rec.lease_expires is not None and abs(rec.lease_expires - (t2 + 30)) < 10


def test_snapshots_and_restore(heads: Heads) -> None:
    new_volume(heads)
    rec = heads.takeover("v", "A", ttl=30, margin=1).record
    rec = heads.cas_head(rec, "A", ROOT1, commit_id=None)
    s1 = heads.add_snapshot(rec, "s1", rec.version, rec.root)
    with pytest.raises(SnapshotExists):
        heads.add_snapshot(rec, "s1", rec.version, rec.root)
    rec = heads.cas_head(rec, "A", ROOT2, commit_id=None)
    new = heads.restore_head(rec, "A", s1, "auto-1")
    assert new.root == ROOT1 and new.version == rec.version + 1
    assert new.epoch == rec.epoch + 1 and new.holder is None
    auto = heads.get_snapshot(new, "auto-1")
    assert auto.root == ROOT2 and auto.auto
    with pytest.raises(LeaseLost):  # the epoch moved: nothing restored twice
        heads.restore_head(rec, "A", s1, "auto-2")
    assert [s.name for s in heads.snapshots(new)] == ["s1", "auto-1"]
    heads.delete_snapshot(s1)
    with pytest.raises(SnapshotNotFound):
        heads.get_snapshot(new, "s1")
    other = new_volume(heads, "w")
    heads.add_snapshot(other, "s1", 0, ROOT3)  # names are per volume
    heads.delete(new)
    assert heads.find("v") is None and heads.get_snapshot(other, "s1").root == ROOT3


def test_commit_registrations_and_gc_lease(heads: Heads) -> None:
    rec = new_volume(heads)
    cid = heads.begin_commit(rec.id)
    assert not heads.register_chunks(cid, ["chunks/aa/" + "aa" * 32]).sweeping
    reg = heads.register_chunks(cid, ["chunks/aa/" + "aa" * 32, "chunks/bb/" + "bb" * 32])
    assert reg == Registration(sweeping=False, sweeps=0)
    with heads.catalog.write() as conn:
        now = heads.catalog.now(conn)
        conn.execute(
            update(gc_state)
            .where(gc_state.c.id == 1)
            .values(sweeping_until=now + 0.5, sweeps=gc_state.c.sweeps + 1)
        )
    # A sweep is running, the first ever started.
    reg = heads.register_chunks(cid, ["chunks/cc/" + "cc" * 32])
    assert reg == Registration(sweeping=True, sweeps=1)
    started = time.monotonic()
    assert heads.wait_for_sweep(timeout=10)
    assert 0.2 < time.monotonic() - started < 5
    with heads.catalog.write() as conn:
        conn.execute(update(gc_state).where(gc_state.c.id == 1).values(sweeping_until=now + 60))
    assert not heads.wait_for_sweep(timeout=0.2)  # still sweeping: the caller must not trust
    with heads.catalog.read() as conn:
        assert len(heads.all_roots(conn)) == 1
    heads.end_commit(cid)
