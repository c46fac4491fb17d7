"""The presence index: what it may claim (only within one GC sweep count, only while fresh,
bounded), and what a hash-first commit does with it: ask the store nothing for chunks it
knows, ask again after any node's GC sweep, and upload again what GC deleted."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest
from bsfixtures import EXTENT, Deployment

from loft.blockstore import Blockstore
from loft.blockstore.chunks import chunk_key
from loft.blockstore.commit import TOUCH_AGE
from loft.blockstore.presence import PresenceIndex
from loft.objstore import ObjectInfo

pytestmark = pytest.mark.timeout(60)

A, B, C, D = (bytes([i]) * 32 for i in range(1, 5))


def test_presence_index_trusts_only_its_sweep_count() -> None:
    idx = PresenceIndex()
    idx.add({A: 100.0, B: 100.0}, sweeps=3)
    assert idx.known([A, B, C], 3, fresh_after=50.0) == {A, B}
    # A commit that registered after a fourth sweep started: nothing recorded before
    # counts, and the index forgets it.
    assert idx.known([A, B], 4, fresh_after=50.0) == set()
    assert len(idx) == 0
    # A commit that registered before that sweep and records late is not believed.
    idx.add({C: 100.0}, sweeps=3)
    assert idx.known([C], 4, fresh_after=50.0) == set()
    idx.add({D: 100.0}, sweeps=4)
    assert idx.known([C, D], 4, fresh_after=50.0) == {D}
    assert idx.known([D], 3, fresh_after=50.0) == set()  # an older count trusts nothing


def test_presence_index_trusts_only_fresh_entries() -> None:
    idx = PresenceIndex()
    idx.add({A: 100.0, B: 200.0}, sweeps=0)
    assert idx.known([A, B], 0, fresh_after=150.0) == {B}
    idx.add({A: 300.0}, sweeps=0)  # touched since
    assert idx.known([A, B], 0, fresh_after=250.0) == {A}


def test_presence_index_is_bounded() -> None:
    idx = PresenceIndex(max_entries=3)
    idx.add({A: 1.0, B: 1.0, C: 1.0}, sweeps=0)
    idx.add({A: 2.0}, sweeps=0)  # recorded again: now the newest
    idx.add({D: 1.0}, sweeps=0)
    assert len(idx) == 3
    assert idx.known([A, B, C, D], 0, fresh_after=0.0) == {A, C, D}


class CountingStats:
    """Wraps a store's stat_many to count the keys asked about."""

    def __init__(self, bs: Blockstore) -> None:
        self.asked: list[str] = []
        store = bs.ctx.store
        inner = store.stat_many

        def stat_many(keys: list[str]) -> dict[str, ObjectInfo | None]:
            self.asked += keys
            return inner(keys)

        store.stat_many = stat_many  # type: ignore[method-assign]


def test_presence_commit_asks_the_store_only_for_what_it_does_not_know(
    deployment_of: Callable[[str], Deployment],
) -> None:
    dep = deployment_of("sqlite-file")
    bs, other = dep.node("a"), dep.node("b")
    data = random.Random(1).randbytes(4 * EXTENT)
    for name in ("x", "y", "z"):
        bs.create(name, size=8 * EXTENT, extent_size=EXTENT)
    stats = CountingStats(bs)

    vol = bs.open("x")
    vol.write(0, data)
    vol.commit()
    assert vol.last_commit is not None and vol.last_commit.uploaded_chunks == 4 + 1
    vol.close()
    data_keys = {
        chunk_key(bs.ctx.codec.hash(data[i * EXTENT : (i + 1) * EXTENT])) for i in range(4)
    }
    assert data_keys <= set(stats.asked)

    stats.asked.clear()
    vol = bs.open("y")
    vol.write(0, data)  # the same four chunks: hashed, known, nothing asked or sent
    vol.commit()
    assert vol.last_commit is not None
    assert vol.last_commit.uploaded_chunks == 1  # its own manifest page
    assert not data_keys & set(stats.asked)
    vol.close()

    # A sweep on another node: every node's index stops vouching for what it recorded.
    other.gc(grace=3600.0)
    stats.asked.clear()
    vol = bs.open("z")
    vol.write(0, data)
    vol.commit()
    assert data_keys <= set(stats.asked)
    vol.close()


def test_presence_chunk_deleted_by_gc_is_uploaded_again(
    deployment_of: Callable[[str], Deployment],
) -> None:
    """The case an index without GC's count would get wrong: a chunk this node uploaded
    becomes garbage, another node's GC (grace 0) deletes it, and the same data is
    written again: it must be uploaded again, and read back from a fresh node."""
    dep = deployment_of("sqlite-file")
    bs, collector = dep.node("a"), dep.node("b")
    bs.create("v", size=4 * EXTENT, extent_size=EXTENT)
    x = random.Random(2).randbytes(EXTENT)
    vol = bs.open("v")
    vol.write(0, x)
    vol.commit()
    vol.write(0, random.Random(3).randbytes(EXTENT))
    vol.commit()  # x is now referenced by nothing
    report = collector.gc(grace=0.0, max_fraction=1.0)
    assert report.chunks_freed >= 1
    vol.write(0, x)
    vol.commit()
    assert vol.last_commit is not None and vol.last_commit.uploaded_chunks >= 2
    vol.close()
    assert dep.node("fresh").view("v").read(0, EXTENT) == x


def test_presence_old_entries_are_checked_and_touched(
    deployment_of: Callable[[str], Deployment],
) -> None:
    """An entry older than the touch age is not trusted: the store is asked and the old
    chunk refreshed, as a commit without an index would."""
    dep = deployment_of("sqlite-file")
    bs = dep.node("a")
    store = bs.ctx.store
    for name in ("x", "y"):
        bs.create(name, size=4 * EXTENT, extent_size=EXTENT)
    data = random.Random(4).randbytes(EXTENT)
    vol = bs.open("x")
    vol.write(0, data)
    vol.commit()
    vol.close()
    digest = bs.ctx.codec.hash(data)
    assert bs.ctx.presence.known([digest], 0, time.time() - 60) == {digest}
    key = chunk_key(digest)
    past = time.time() - 2 * TOUCH_AGE
    store.set_mtime(key, past)  # type: ignore[attr-defined]
    bs.ctx.presence.add({digest: past}, sweeps=0)
    stats = CountingStats(bs)
    vol = bs.open("y")
    vol.write(0, data)
    vol.commit()
    vol.close()
    assert key in stats.asked
    info = store.stat(key)
    assert info is not None and info.mtime > time.time() - 60  # touched
