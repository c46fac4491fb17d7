"""GC's safety: what it keeps, when it refuses, and the interleavings that must not lose data.

- a commit whose head advances while GC reads the catalog keeps its chunks (on PostgreSQL
  the reads must come from one consistent snapshot, not statement by statement);
- a catalog that lacks heads the store has (emptied, or restored from an old backup) makes
  GC refuse; ``force`` overrides it;
- GC refuses to delete more than ``max_fraction`` of the chunks unless forced;
- young unreferenced chunks survive the grace period; dry runs delete nothing.
"""

from __future__ import annotations

import random
import shutil
import threading
from collections.abc import Callable

import pytest
from bsfixtures import EXTENT, MIB, Deployment

from loft.blockstore import Blockstore, GCRefused
from loft.blockstore.chunks import CHUNK_PREFIX

pytestmark = pytest.mark.timeout(60)


def data(n: int) -> bytes:
    return random.Random(n).randbytes(EXTENT)


def n_chunks(bs: Blockstore) -> int:
    return sum(1 for _ in bs.ctx.store.list(CHUNK_PREFIX))


@pytest.mark.parametrize("kind", ["sqlite-file", "pg-file"])
def test_head_advancing_during_gc_read_keeps_its_chunks(
    kind: str, deployment_of: Callable[[str], Deployment]
) -> None:
    """A commit has registered and uploaded its chunks; its head CAS lands right after GC
    read the heads but before it read the in-flight registrations. GC must still keep them
    (either it saw the new head or the registrations: never neither)."""
    dep = deployment_of(kind)
    w, g = dep.node("w"), dep.node("gc")
    w.create("v", size=MIB, extent_size=EXTENT)
    vol = w.open("v")
    vol.write(0, data(1))
    vol.commit()

    # Fault injection (timing only): the writer's CAS waits until GC has read the roots;
    # GC then gives the CAS a moment to land before it reads the registrations.
    at_cas, may_cas, cas_done = threading.Event(), threading.Event(), threading.Event()
    real_cas, real_roots = w.heads.cas_head, g.heads.all_roots

    def held_cas(*args, **kwargs):  # type: ignore[no-untyped-def]
        at_cas.set()
        may_cas.wait(10)
        try:
            return real_cas(*args, **kwargs)
        finally:
            cas_done.set()

    def roots_then_cas(conn):  # type: ignore[no-untyped-def]
        roots = real_roots(conn)
        may_cas.set()
        cas_done.wait(2)  # on SQLite the CAS waits for GC's transaction: no need to wait
        return roots

    w.heads.cas_head = held_cas  # type: ignore[method-assign]
    g.heads.all_roots = roots_then_cas  # type: ignore[method-assign]
    vol.write(EXTENT, data(2))
    committer = threading.Thread(target=vol.commit)
    committer.start()
    assert at_cas.wait(20)  # registered and uploaded, about to advance the head
    assert _registered(w)
    g.gc(grace=0, max_fraction=1.0)
    committer.join(20)
    w.heads.cas_head = real_cas  # type: ignore[method-assign]
    vol.close()

    fresh = dep.node("fresh")
    assert fresh.view("v").read(0, 2 * EXTENT) == data(1) + data(2), "GC deleted a new chunk"


def _registered(bs: Blockstore) -> bool:
    from sqlalchemy import func, select

    from loft.catalog.schema import inflight_chunks

    with bs.ctx.catalog.read() as conn:
        n = conn.execute(select(func.count()).select_from(inflight_chunks)).scalar_one()
    return bool(n)


def _volume_with_garbage(bs: Blockstore, n: int = 6) -> None:
    """A volume whose first commit wrote n distinct extents, all overwritten since."""
    bs.create("v", size=MIB, extent_size=EXTENT)
    vol = bs.open("v")
    for i in range(n):
        vol.write(i * EXTENT, data(100 + i))
    vol.commit()
    vol.write(0, data(1))
    vol.zero(EXTENT, (n - 1) * EXTENT)
    vol.close()


@pytest.mark.parametrize("kind", ["sqlite-file", "sqlite-s3"])
def test_gc_frees_garbage_and_keeps_what_is_referenced(
    kind: str, deployment_of: Callable[[str], Deployment]
) -> None:
    dep = deployment_of(kind)
    bs = dep.node("a")
    _volume_with_garbage(bs)
    before = n_chunks(bs)
    # Young garbage survives the (default) grace period; a dry run deletes nothing.
    assert bs.gc().chunks_freed == 0
    dry = bs.gc(grace=0, max_fraction=1.0, dry_run=True)
    assert dry.dry_run and dry.chunks_freed >= 6 and n_chunks(bs) == before
    rep = bs.gc(grace=0, max_fraction=1.0)
    assert rep.chunks_freed == dry.chunks_freed
    assert rep.bytes_freed > 0
    assert n_chunks(bs) == before - rep.chunks_freed
    assert dep.node("fresh").view("v").read(0, 2 * EXTENT) == data(1) + bytes(EXTENT)
    assert bs.gc(grace=0).chunks_freed == 0


@pytest.mark.parametrize("kind", ["sqlite-file", "pg-s3"])
def test_gc_refuses_beyond_max_fraction_unless_forced(
    kind: str, deployment_of: Callable[[str], Deployment]
) -> None:
    dep = deployment_of(kind)
    bs = dep.node("a")
    _volume_with_garbage(bs)
    before = n_chunks(bs)
    with pytest.raises(GCRefused, match="would delete"):
        bs.gc(grace=0, max_fraction=0.2)
    assert n_chunks(bs) == before
    rep = bs.gc(grace=0, max_fraction=0.2, force=True)
    assert rep.forced and rep.chunks_freed > 0.2 * before
    assert dep.node("fresh").view("v").read(0, EXTENT) == data(1)


@pytest.mark.parametrize("kind", ["sqlite-file", "sqlite-s3"])
def test_gc_refuses_with_an_empty_catalog(
    kind: str, deployment_of: Callable[[str], Deployment]
) -> None:
    """A fresh catalog pointed at a store full of data must never erase it."""
    dep = deployment_of(kind)
    bs = dep.node("a")
    bs.create("v", size=MIB, extent_size=EXTENT)
    vol = bs.open("v")
    vol.write(0, data(5))
    vol.close()
    before = n_chunks(bs)

    lost = Deployment(
        dep.kind, dep.root / "lost", f"sqlite:///{dep.root / 'empty.db'}", dep.chunks_url
    )
    stranger = lost.node("x")
    try:
        for kwargs in ({}, {"grace": 0.0}, {"grace": 0.0, "max_fraction": 1.0}):
            with pytest.raises(GCRefused, match="catalog"):
                stranger.gc(**kwargs)  # type: ignore[arg-type]
        assert n_chunks(bs) == before
    finally:
        lost.close()
    assert dep.node("fresh").view("v").read(0, EXTENT) == data(5)


def test_gc_refuses_with_a_stale_catalog(deployment_of: Callable[[str], Deployment]) -> None:
    """A catalog restored from an older backup is behind the store's head records."""
    dep = deployment_of("sqlite-file")
    bs = dep.node("a")
    bs.create("v", size=MIB, extent_size=EXTENT)
    vol = bs.open("v")
    vol.write(0, data(7))
    vol.close()
    db = dep.root / "catalog" / "catalog.db"
    backup = dep.root / "backup.db"
    bs.close()
    dep._open.remove(bs)
    shutil.copy(db, backup)

    bs = dep.node("a")
    vol = bs.open("v")
    vol.write(0, data(8))
    vol.close()
    bs.gc(grace=0, max_fraction=1.0)  # the live catalog is fine
    old = Deployment(dep.kind, dep.root / "old", f"sqlite:///{backup}", dep.chunks_url)
    try:
        with pytest.raises(GCRefused, match="version"):
            old.node("x").gc(grace=0, max_fraction=1.0)
    finally:
        old.close()
    assert dep.node("fresh").view("v").read(0, EXTENT) == data(8)


def test_head_check_is_not_fooled_by_commits_and_removals_meanwhile(
    deployment_of: Callable[[str], Deployment],
) -> None:
    """GC compares the store's head records with the catalog. A commit (catalog first, then
    its record) or a removal (record first, then the catalog row) landing while GC looks
    must not make it refuse: under steady commit traffic it would never run."""
    dep = deployment_of("sqlite-file")
    w, g = dep.node("w"), dep.node("gc")
    for name in ("busy", "doomed"):
        w.create(name, size=MIB, extent_size=EXTENT)
        vol = w.open(name)
        vol.write(0, data(hash(name) % 1000))
        vol.close()
    busy = w.open("busy")

    real_all, real_list = g.heads.all, g.ctx.store.list
    done: set[str] = set()

    def all_then_interfere():  # type: ignore[no-untyped-def]
        result = real_all()
        if "commit" not in done:
            done.add("commit")
            busy.write(EXTENT, data(77))  # the head and its record advance
            busy.commit()
        return result

    def list_then_remove(prefix: str):  # type: ignore[no-untyped-def]
        listed = list(real_list(prefix))
        if prefix.startswith("heads/") and "remove" not in done:
            done.add("remove")
            w.remove("doomed")  # its record goes first, then its catalog row
        return iter(listed)

    g.heads.all = all_then_interfere  # type: ignore[method-assign]
    g.ctx.store.list = list_then_remove  # type: ignore[method-assign]
    g.gc(grace=0, max_fraction=1.0)
    assert done == {"commit", "remove"}
    busy.close()
    assert dep.node("fresh").view("busy").read(EXTENT, EXTENT) == data(77)
