"""GC racing commits: one thread collects garbage in a loop while another writes, commits,
snapshots, drops snapshots and rewrites content that GC is about to (or just did) sweep.

The writer draws extents from a small pool of contents, so its commits keep hitting chunks
that were unreferenced a moment ago: dedup hits on old chunks, the case where a commit
trusts a chunk GC is deleting. Afterwards a fresh node (empty caches) reads every head and
snapshot back: no chunk may be lost.

On SeaweedFS object ages cannot be forged, so GC runs with grace 0 (every unreferenced
chunk is fair game at once). On the file store chunks are aged with ``set_mtime`` instead,
so GC runs with a real grace period and dedup hits refresh old chunks (``touch``).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import pytest
from bsfixtures import EXTENT, Deployment

from loft.blockstore import Blockstore, GCRefused, Volume
from loft.blockstore.chunks import CHUNK_PREFIX

SIZE = 8 * EXTENT
POOL = [random.Random(7000 + i).randbytes(EXTENT) for i in range(5)]
RUN_SECONDS = 6.0
MAX_SECONDS = 45.0


class Writer:
    """The writer thread's state: a volume, its model, and the snapshots it keeps."""

    def __init__(self, bs: Blockstore, rng: random.Random, age: Callable[[], None] | None):
        self.bs = bs
        self.rng = rng
        self.age = age
        self.model = bytearray(SIZE)
        self.snaps: dict[str, bytes] = {}
        self.dedup_hits = 0
        self.commits = 0
        self.vol: Volume = bs.open("v")
        self.n = 0
        self.steps = 0

    def step(self) -> None:
        rng = self.rng
        op = rng.random()
        self.steps += 1
        if self.age is not None and self.steps % 6 == 0:
            self.age()
        elif op < 0.55:
            for _ in range(rng.randint(1, 3)):
                e = rng.randrange(SIZE // EXTENT)
                data = POOL[rng.randrange(len(POOL))] if rng.random() < 0.8 else bytes(EXTENT)
                self.vol.write(e * EXTENT, data)
                self.model[e * EXTENT : (e + 1) * EXTENT] = data
            self.vol.commit()
            self.commits += 1
            if self.vol.last_commit is not None:
                self.dedup_hits += self.vol.last_commit.dedup_hits
        elif op < 0.75:
            rec = self.vol.commit()
            name = f"s{self.n}"
            self.n += 1
            self.bs.heads.add_snapshot(rec, name, rec.version, rec.root)
            self.snaps[name] = bytes(self.model)
        elif op < 0.92 and self.snaps:
            name = rng.choice(sorted(self.snaps))
            self.bs.remove_snapshot("v", name)
            del self.snaps[name]
        else:
            self.vol.close()
            self.vol = self.bs.open("v")

    def close(self) -> None:
        self.vol.close()


def race(dep: Deployment, grace: float, age: Callable[[], None] | None) -> None:
    writer_node = dep.node("w")
    gc_node = dep.node("gc")
    writer_node.create("v", size=SIZE, extent_size=EXTENT, commit_interval=0.05)
    writer = Writer(writer_node, random.Random(dep.kind), age)
    stop = threading.Event()
    errors: list[BaseException] = []
    freed: list[int] = []
    refusals: list[str] = []

    def collect() -> None:
        while not stop.is_set():
            try:
                freed.append(gc_node.gc(grace=grace, max_fraction=1.0).chunks_freed)
            except GCRefused as e:
                refusals.append(str(e))
            except BaseException as e:
                errors.append(e)
                return

    collector = threading.Thread(target=collect)
    collector.start()
    try:
        # At least RUN_SECONDS, and on a busy machine (commits run at background
        # priority) on until GC has freed something, within a bound.
        start = time.monotonic()
        while not errors:
            elapsed = time.monotonic() - start
            if elapsed > MAX_SECONDS or (elapsed > RUN_SECONDS and sum(freed) > 0):
                break
            writer.step()
    finally:
        stop.set()
        collector.join(60)
        writer.close()
    assert not errors, errors
    # Commits racing GC's head-record check must not make it refuse.
    assert not refusals, refusals[:3]
    assert len(freed) >= 3, "GC hardly ever ran"
    assert sum(freed) > 0, "GC never freed anything: the race was not exercised"
    assert writer.dedup_hits > 0, "no commit ever hit an existing chunk"

    # One more GC now that nothing races it, then a fresh node reads everything back.
    gc_node.gc(grace=grace, max_fraction=1.0)
    fresh = dep.node("fresh")
    assert fresh.view("v").read(0, SIZE) == bytes(writer.model), "the head lost a chunk"
    for name, want in writer.snaps.items():
        assert fresh.view(f"v@{name}").read(0, SIZE) == want, f"snapshot {name} lost a chunk"
    vol = fresh.open("v")
    assert vol.read(0, SIZE) == bytes(writer.model)
    vol.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["sqlite-s3", "pg-s3"])
def test_gc_races_commits_on_seaweedfs(
    kind: str, deployment_of: Callable[[str], Deployment]
) -> None:
    race(deployment_of(kind), grace=0.0, age=None)


@pytest.mark.timeout(120)
def test_gc_races_commits_with_aged_chunks(deployment_of: Callable[[str], Deployment]) -> None:
    """File store: chunks are aged past the grace period, so dedup hits refresh them."""
    dep = deployment_of("sqlite-file")
    store_bs = dep.node("ager")
    store = store_bs.ctx.store
    past = time.time() - 4 * 3600

    def age() -> None:
        for info in list(store.list(CHUNK_PREFIX)):
            try:
                store.set_mtime(info.key, past)  # type: ignore[attr-defined]
            except FileNotFoundError:
                pass  # GC just deleted it

    race(dep, grace=3600.0, age=age)
