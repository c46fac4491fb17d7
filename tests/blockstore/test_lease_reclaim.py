"""Dead-holder lease reclaim, on SQLite and PostgreSQL: a lease whose holder is a process
of this node that is gone is taken over at once (through the epoch bump); a live
holder, a holder on another node, in another PID namespace or in an older format still
keeps the volume until its lease expires."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import update

from loft.blockstore.errors import LeaseLost, VolumeBusy
from loft.blockstore.heads import Heads, VolumeRecord
from loft.blockstore.holder import new_holder_id, parse_holder, provably_dead
from loft.catalog import Catalog
from loft.catalog.schema import volumes

pytestmark = pytest.mark.timeout(60)
ROOT1, ROOT2 = b"\x01" * 32, b"\x02" * 32


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


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process of this node that stays alive until the test kills it."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def _volume(heads: Heads) -> VolumeRecord:
    return heads.create(
        "v",
        size=1 << 20,
        extent_size=64 << 10,
        durability="local",
        commit_interval=5.0,
        max_dirty=1 << 20,
    )


def _held_by(heads: Heads, holder: str) -> VolumeRecord:
    """The volume taken by ``holder`` (ttl 30 s), with one commit of its own."""
    _volume(heads)
    rec = heads.takeover("v", holder, ttl=30, margin=1).record
    return heads.cas_head(rec, holder, ROOT1, commit_id=None)


def test_lease_reclaim_of_a_dead_process_of_this_node(
    heads: Heads, sleeper: subprocess.Popen[bytes]
) -> None:
    dead_holder = new_holder_id(sleeper.pid)
    rec = _held_by(heads, dead_holder)
    with pytest.raises(VolumeBusy, match=f"in use by pid {sleeper.pid} on "):
        heads.takeover("v", "B", ttl=30, margin=1)  # alive: refused
    sleeper.kill()
    sleeper.wait(10)
    tk = heads.takeover("v", "B", ttl=30, margin=1)  # 29 s before expiry
    assert tk.unclean and tk.previous_epoch == rec.epoch
    assert tk.record.epoch == rec.epoch + 1 and tk.record.holder == "B"
    # Exactly what an expired takeover leaves: the dead writer's last head kept for its
    # orphan, and its commits fenced.
    assert heads.get_snapshot(tk.record, f"takeover-{rec.epoch}").root == ROOT1
    with pytest.raises(LeaseLost):
        heads.cas_head(rec, dead_holder, ROOT2, commit_id=None)


def test_lease_reclaim_of_a_zombie(heads: Heads, sleeper: subprocess.Popen[bytes]) -> None:
    """A killed process not yet reaped has closed its files: it writes nothing more."""
    _held_by(heads, new_holder_id(sleeper.pid))
    sleeper.kill()
    os.waitid(os.P_PID, sleeper.pid, os.WEXITED | os.WNOWAIT)  # dead, left unreaped
    assert heads.takeover("v", "B", ttl=30, margin=1).unclean


def test_lease_reclaim_refuses_a_live_holder(heads: Heads) -> None:
    me = new_holder_id()
    _held_by(heads, me)
    assert not provably_dead(me)
    with pytest.raises(VolumeBusy):
        heads.takeover("v", "B", ttl=30, margin=1)


def test_lease_reclaim_of_a_reused_pid(heads: Heads) -> None:
    """The PID exists, but started at another time: another process got it again."""
    me = parse_holder(new_holder_id())
    assert me is not None
    _held_by(heads, str(replace(me, start=me.start + 1)))
    assert heads.takeover("v", "B", ttl=30, margin=1).unclean


def test_lease_reclaim_waits_for_a_holder_on_another_node(
    heads: Heads, sleeper: subprocess.Popen[bytes]
) -> None:
    ours = parse_holder(new_holder_id(sleeper.pid))
    assert ours is not None
    sleeper.kill()
    sleeper.wait(10)
    for holder in (
        str(replace(ours, node="0" * 32)),  # another machine, or another boot of this one
        str(replace(ours, pidns=ours.pidns + 1)),  # another PID namespace (a container)
        f"oldhost:{sleeper.pid}:abcd1234",  # what older versions wrote
        "not a holder at all",
    ):
        with heads.catalog.write() as conn:
            conn.execute(update(volumes).values(holder=None, lease_expires=None))
        if heads.find("v") is None:
            _volume(heads)
        heads.takeover("v", holder, ttl=30, margin=1)
        with pytest.raises(VolumeBusy):
            heads.takeover("v", "B", ttl=30, margin=1)
        with heads.catalog.write() as conn:  # once expired, it is taken as before
            now = heads.catalog.now(conn)
            conn.execute(update(volumes).values(lease_expires=now - 60))
        assert heads.takeover("v", "B", ttl=30, margin=1).unclean


def test_holder_string_round_trip_and_width() -> None:
    h = parse_holder(new_holder_id())
    assert h is not None and h.pid == os.getpid() and len(h.node) == 32
    long = replace(h, hostname="h" * 64, pid=2**22, start=2**63, pidns=2**32)
    assert parse_holder(str(long)) == long
    assert len(str(long)) <= 255  # the catalog column
