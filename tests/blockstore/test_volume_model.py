"""Model-based test of volumes: random operation sequences checked against plain bytes.

The model is a bytearray per volume plus a dict of snapshots. Every read (and every
snapshot view, fork, restore, reopen, crash-reopen and GC) is checked against it. The node's
chunk cache is off and the extent budget is tiny, so reads really go to the chunk store and
a chunk GC wrongly deleted shows up as a failed read.

GC runs on the writing node and on another one, with grace 0, interleaved with commits
that rewrite pooled contents: a chunk a commit found (or uploaded) earlier may be garbage
and gone by the next commit of the same bytes, so the writing node's presence index must
never vouch for it (a commit that trusted it would leave the head pointing at nothing, a
failed read here).

Trim is advisory: whole extents and present parts become zeros, parts of absent extents
stay as they were. The model checks each partial piece reads as either its old bytes or
zeros right after the trim, and then adopts what the volume says.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from itertools import count

import pytest
from bsfixtures import EXTENT, KIB, Deployment
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import update

from loft.blockstore import Blockstore, GCRefused, Volume
from loft.catalog.schema import volumes as volumes_table

#: 16 full extents and a 12 KiB tail extent: the odd last extent is an edge worth covering.
SIZE = 16 * EXTENT + 12 * KIB
MAX_VOLUMES = 4
#: Whole-extent contents reused on purpose so commits hit chunks already in the store.
POOL = [random.Random(1000 + i).randbytes(EXTENT) for i in range(4)]
_uniq = count()


def pattern(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def expire_lease(bs: Blockstore, name: str) -> None:
    """Make the crashed holder's lease expired (instead of waiting out its TTL)."""
    with bs.ctx.catalog.write() as conn:
        conn.execute(
            update(volumes_table).where(volumes_table.c.name == name).values(lease_expires=0.0)
        )


offsets = st.integers(0, SIZE - 1)
lengths = st.one_of(
    st.integers(1, 3 * EXTENT),
    st.sampled_from([EXTENT, 2 * EXTENT, 4096, 512, 1]),
)
picks = st.integers(0, 1000)


class VolumeMachine(RuleBasedStateMachine):
    """One deployment node, a few volumes, and the model of what they must read as."""

    def __init__(self, dep: Deployment, bs: Blockstore, collector: Blockstore) -> None:
        super().__init__()
        self.dep = dep
        self.bs = bs
        self.collector = collector
        self.prefix = f"m{next(_uniq)}"
        self.model: dict[str, bytearray] = {}
        self.snaps: dict[tuple[str, str], bytes] = {}
        self.open: dict[str, Volume] = {}
        self.names = count()
        self._create("v", "local")

    # -- helpers ---------------------------------------------------------------------

    def _create(self, suffix: str, durability: str) -> str:
        name = f"{self.prefix}-{suffix}{next(self.names)}"
        self.bs.create(
            name, size=SIZE, extent_size=EXTENT, durability=durability, commit_interval=0.05
        )
        self.model[name] = bytearray(SIZE)
        return name

    def _pick(self, i: int) -> str:
        names = sorted(self.model)
        return names[i % len(names)]

    def _vol(self, name: str) -> Volume:
        vol = self.open.get(name)
        if vol is None:
            vol = self.open[name] = self.bs.open(name)
        return vol

    def _close(self, name: str) -> None:
        vol = self.open.pop(name, None)
        if vol is not None:
            vol.close()

    def _check(self, name: str, offset: int, length: int) -> None:
        got = self._vol(name).read(offset, length)
        want = bytes(self.model[name][offset : offset + length])
        assert got == want, f"{name} differs from the model in {_diff(got, want, offset)}"

    def _check_all(self, name: str) -> None:
        # In pieces smaller than the extent budget (see test_read_larger_than_budget).
        for offset in range(0, SIZE, 4 * EXTENT):
            self._check(name, offset, min(4 * EXTENT, SIZE - offset))

    # -- data path -------------------------------------------------------------------

    @rule(i=picks, offset=offsets, length=lengths, seed=st.integers(0, 2**32), fua=st.booleans())
    def write(self, i: int, offset: int, length: int, seed: int, fua: bool) -> None:
        name = self._pick(i)
        length = min(length, SIZE - offset)
        data = pattern(seed, length)
        self._vol(name).write(offset, data, fua=fua)
        self.model[name][offset : offset + length] = data

    @rule(i=picks, extent=st.integers(0, SIZE // EXTENT - 1), p=st.integers(0, len(POOL) - 1))
    def write_pooled_extent(self, i: int, extent: int, p: int) -> None:
        name = self._pick(i)
        self._vol(name).write(extent * EXTENT, POOL[p])
        self.model[name][extent * EXTENT : (extent + 1) * EXTENT] = POOL[p]

    @rule(i=picks, offset=offsets, length=lengths, fua=st.booleans())
    def zero(self, i: int, offset: int, length: int, fua: bool) -> None:
        name = self._pick(i)
        length = min(length, SIZE - offset)
        self._vol(name).zero(offset, length, fua=fua)
        self.model[name][offset : offset + length] = bytes(length)

    @rule(i=picks, offset=offsets, length=lengths)
    def trim(self, i: int, offset: int, length: int) -> None:
        name = self._pick(i)
        length = min(length, SIZE - offset)
        vol = self._vol(name)
        vol.trim(offset, length)
        model = self.model[name]
        pos, end = offset, offset + length
        while pos < end:
            base = pos // EXTENT * EXTENT
            elen = min(EXTENT, SIZE - base)
            stop = min(end, base + elen)
            if pos == base and stop == base + elen:
                model[pos:stop] = bytes(stop - pos)
            else:
                got = vol.read(pos, stop - pos)
                old = bytes(model[pos:stop])
                assert got in (old, bytes(stop - pos)), (
                    f"trimmed piece {pos}+{stop - pos} of {name} is neither old nor zeros"
                )
                model[pos:stop] = got
            pos = stop

    @rule(i=picks, offset=offsets, length=lengths)
    def read(self, i: int, offset: int, length: int) -> None:
        name = self._pick(i)
        self._check(name, offset, min(length, SIZE - offset))

    @rule(i=picks, offset=offsets, length=lengths)
    def read_inline(self, i: int, offset: int, length: int) -> None:
        """A read as the event loop makes it: read_nowait of any range (fetched bytes from
        memory, or what the page cache holds; None for the rest), else on a worker
        thread."""
        name = self._pick(i)
        vol, length = self._vol(name), min(length, SIZE - offset)
        got = vol.read_nowait(offset, length)
        got = bytes(vol.read(offset, length) if got is None else got)
        want = bytes(self.model[name][offset : offset + length])
        assert got == want, f"{name} differs from the model in {_diff(got, want, offset)}"

    @rule(i=picks, offset=offsets, length=lengths)
    def block_status(self, i: int, offset: int, length: int) -> None:
        name = self._pick(i)
        length = min(length, SIZE - offset)
        pos = offset
        for run, flags in self._vol(name).block_status(offset, length):
            if flags & 2:  # STATE_ZERO: the model must be zeros there
                assert self.model[name][pos : pos + run] == bytes(run), (
                    f"block_status says {pos}+{run} of {name} is zero but it is not"
                )
            pos += run
        assert pos <= offset + length

    @rule(i=picks)
    def read_all(self, i: int) -> None:
        self._check_all(self._pick(i))

    @rule(i=picks)
    def flush(self, i: int) -> None:
        self._vol(self._pick(i)).flush()

    @rule(i=picks)
    def commit(self, i: int) -> None:
        self._vol(self._pick(i)).commit()

    # -- snapshots, forks, restore ---------------------------------------------------

    @rule(i=picks)
    def snapshot(self, i: int) -> None:
        name = self._pick(i)
        snap = f"s{next(self.names)}"
        vol = self.open.get(name)
        if vol is not None:
            rec = vol.commit()
            self.bs.heads.add_snapshot(rec, snap, rec.version, rec.root)
        else:
            self.bs.snapshot(name, snap)
        self.snaps[(name, snap)] = bytes(self.model[name])

    @precondition(lambda self: self.snaps)
    @rule(j=picks)
    def check_snapshot(self, j: int) -> None:
        name, snap = sorted(self.snaps)[j % len(self.snaps)]
        view = self.bs.view(f"{name}@{snap}")
        got = view.read(0, SIZE)
        assert got == self.snaps[(name, snap)], (
            f"{name}@{snap}: {_diff(got, self.snaps[(name, snap)], 0)}"
        )

    @precondition(lambda self: self.snaps and len(self.model) < MAX_VOLUMES)
    @rule(j=picks)
    def fork(self, j: int) -> None:
        name, snap = sorted(self.snaps)[j % len(self.snaps)]
        new = f"{self.prefix}-f{next(self.names)}"
        self.bs.fork(f"{name}@{snap}", new)
        self.model[new] = bytearray(self.snaps[(name, snap)])

    @precondition(lambda self: self.snaps)
    @rule(j=picks)
    def restore(self, j: int) -> None:
        name, snap = sorted(self.snaps)[j % len(self.snaps)]
        self._close(name)
        _, auto = self.bs.restore(name, snap)
        self.snaps[(name, auto)] = bytes(self.model[name])
        self.model[name] = bytearray(self.snaps[(name, snap)])
        # Automatic snapshots may be pruned later; keep only those that still exist.
        existing = {s.name for s in self.bs.snapshots(name)}
        for key in [k for k in self.snaps if k[0] == name and k[1] not in existing]:
            del self.snaps[key]

    @precondition(lambda self: self.snaps)
    @rule(j=picks)
    def remove_snapshot(self, j: int) -> None:
        name, snap = sorted(self.snaps)[j % len(self.snaps)]
        self.bs.remove_snapshot(name, snap)
        del self.snaps[(name, snap)]

    @precondition(lambda self: len(self.model) > 1)
    @rule(i=picks)
    def remove_volume(self, i: int) -> None:
        name = self._pick(i)
        self._close(name)
        self.bs.remove(name)
        del self.model[name]
        for key in [k for k in self.snaps if k[0] == name]:
            del self.snaps[key]

    @precondition(lambda self: len(self.model) < MAX_VOLUMES)
    @rule(durability=st.sampled_from(["local", "remote"]))
    def create(self, durability: str) -> None:
        self._create("v", durability)

    # -- lifecycle -------------------------------------------------------------------

    @rule(i=picks)
    def reopen(self, i: int) -> None:
        name = self._pick(i)
        self._close(name)
        self._check_all(name)

    @rule(i=picks)
    def crash(self, i: int) -> None:
        """Drop the volume without closing: no commit, no release, files left as they are."""
        name = self._pick(i)
        vol = self._vol(name)
        self.open.pop(name)
        wc = vol.detach()
        wc.close()
        expire_lease(self.bs, name)
        self._check_all(name)

    @rule(i=picks, elsewhere=st.booleans())
    def gc(self, i: int, elsewhere: bool) -> None:
        """GC on this node or on another (whose sweep this node's index must notice)."""
        node = self.collector if elsewhere else self.bs
        try:
            node.gc(grace=0)
        except GCRefused as e:
            # A tiny store trips the fraction guard easily; nothing else may refuse.
            assert "would delete" in str(e), str(e)
            node.gc(grace=0, force=True)
        # After a sweep, what the store holds must still serve a volume from scratch.
        self._check_all(self._pick(i))

    @invariant()
    def volumes_listed(self) -> None:
        listed = {v.name for v in self.bs.volumes() if v.name.startswith(self.prefix + "-")}
        assert listed == set(self.model)

    def teardown(self) -> None:
        for name in list(self.open):
            self._close(name)
        for name in list(self.model):
            self.bs.remove(name)


def _diff(got: bytes, want: bytes, base: int) -> str:
    if len(got) != len(want):
        return f"length {len(got)} != {len(want)}"
    first = next(i for i in range(len(got)) if got[i] != want[i])
    last = max(i for i in range(len(got)) if got[i] != want[i])
    return f"bytes {base + first}..{base + last} (extent {(base + first) // EXTENT})"


def _run(dep: Deployment, examples: int, steps: int) -> None:
    dep.chunk_cache_bytes = 0  # every fetch goes to the chunk store
    dep.cache_bytes = 8 * EXTENT  # clean extents get evicted and fetched again
    bs, collector = dep.node("a"), dep.node("gc")
    factory: Callable[[], VolumeMachine] = lambda: VolumeMachine(dep, bs, collector)  # noqa: E731
    run_state_machine_as_test(
        factory,  # type: ignore[arg-type]
        settings=settings(max_examples=examples, stateful_step_count=steps),
    )


@pytest.mark.timeout(240)
def test_model_sqlite_file(deployment_of: Callable[[str], Deployment]) -> None:
    """The full matrix: SQLite catalog, file chunk store."""
    _run(deployment_of("sqlite-file"), examples=15, steps=35)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["sqlite-s3", "pg-file", "pg-s3"])
def test_model_other_combinations(kind: str, deployment_of: Callable[[str], Deployment]) -> None:
    """Shorter runs on the S3 chunk store and on PostgreSQL."""
    _run(deployment_of(kind), examples=4, steps=20)
