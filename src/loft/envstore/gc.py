"""Garbage collection of the environment store.

Roots are the store's in-use table (:meth:`Store.add_root`, e.g. a running workspace's
env), the temp roots of live processes (every path a process added, so a build in
progress never loses a package to a concurrent GC), plus whatever the caller passes
(every generation of every profile). The live set is the closure of the roots plus the
artefacts live paths were made from (a recipe's ``"from"``: the fixed-output copy of a
.deb, wheel or tarball, which the registry may no longer serve), so a lock in use stays
rebuildable. Every other valid path is dead and is deleted referrers-first, so the store's
invariant (a valid path's references are valid) holds after each single deletion.
Unregistered leftovers of interrupted adds and scratch directories of dead processes are
removed too. The collector holds the store's GC lock exclusively, so no add can race it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from loft.envstore.binary_cache import topo_levels
from loft.envstore.fs import disk_usage, force_rmtree
from loft.envstore.store import Store

__all__ = ["GCReport", "collect", "live_set"]


@dataclass
class GCReport:
    """What a collection found and (unless a dry run) removed."""

    dry_run: bool
    roots: list[str] = field(default_factory=list)
    live: int = 0
    deleted: list[str] = field(default_factory=list)
    garbage: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    seconds: float = 0.0


def _sources(store: Store, path: str) -> list[str]:
    """Store paths a path was made from, as its recipe records them (``"from"``)."""
    info = store.query(path)
    src = info.recipe.get("from") if info is not None and info.recipe else None
    items = [src] if isinstance(src, str) else src if isinstance(src, list) else []
    return [s for s in items if isinstance(s, str) and store.is_valid(s)]


def live_set(store: Store, roots: Iterable[str], *, keep_sources: bool = True) -> set[str]:
    """Closure of ``roots``; with ``keep_sources`` also the artefacts live paths came from."""
    live = store.closure(roots)
    frontier = set(live)
    while keep_sources and frontier:
        found = {s for p in frontier for s in _sources(store, p)} - live
        frontier = store.closure(found) - live
        live |= frontier
    return live


def collect(
    store: Store,
    extra_roots: Iterable[str] = (),
    *,
    dry_run: bool = False,
    keep_sources: bool = True,
) -> GCReport:
    """Delete every valid path outside the closure of the roots; see the module docstring."""
    t0 = time.monotonic()
    report = GCReport(dry_run=dry_run)
    with store.gc_lock(exclusive=True):
        roots = sorted({*store.roots().values(), *store.temp_roots(), *extra_roots})
        # A root that is not valid (already pulled elsewhere, or never built) protects nothing.
        valid_roots = [r for r in roots if store.is_valid(r)]
        report.roots = valid_roots
        live = live_set(store, valid_roots, keep_sources=keep_sources)
        report.live = len(live)
        dead = [p for p in store.all_paths() if p not in live]
        refs = {}
        for p in dead:
            info = store.query(p)
            assert info is not None
            refs[p] = info.references
        for level in reversed(topo_levels(refs)):
            for p in level:
                report.freed_bytes += disk_usage(store.physical(p))
                if not dry_run:
                    store.delete(p)
                report.deleted.append(p)
        for entry in [*store.unregistered_entries(), *store.stale_tmpdirs()]:
            report.freed_bytes += disk_usage(entry) if os.path.lexists(entry) else 0
            report.garbage.append(str(entry))
            if not dry_run:
                force_rmtree(entry)
    report.seconds = time.monotonic() - t0
    return report
