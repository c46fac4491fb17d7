"""The copy-on-write manifest tree: random updates against a dict model, page sharing
between versions, multi-level trees, and corrupt pages."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loft.blockstore.chunks import ZERO_HASH
from loft.blockstore.errors import VolumeIOError
from loft.blockstore.manifest import FANOUT, NEVER, Manifest, height_for


class PageStore:
    """Pages by hash, counting loads (the manifest is pure; storing pages is ours)."""

    def __init__(self) -> None:
        self.pages: dict[bytes, bytes] = {}
        self.loads = 0

    def load(self, digest: bytes) -> bytes:
        self.loads += 1
        return self.pages[digest]

    def add(self, pages: list[tuple[bytes, bytes]]) -> None:
        for digest, raw in pages:
            assert hash_page(raw) == digest
            self.pages[digest] = raw


def hash_page(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=32).digest()


def entry(n: int, tag: int = 1) -> bytes:
    """A 40-byte leaf entry: a fake chunk hash (ZERO_HASH for n == 0) and a writer tag."""
    digest = ZERO_HASH if n == 0 else hashlib.sha256(str(n).encode()).digest()
    return digest + tag.to_bytes(8, "big")


N_EXTENTS = [5, 256, 257, 3 * FANOUT + 7, FANOUT * FANOUT + 3]
updates = st.lists(
    st.dictionaries(st.integers(0, 10**9), st.integers(0, 50), max_size=12), max_size=8
)


@settings(max_examples=40)
@given(n_index=st.integers(0, len(N_EXTENTS) - 1), batches=updates)
def test_random_updates_match_a_dict(n_index: int, batches: list[dict[int, int]]) -> None:
    n = N_EXTENTS[n_index]
    store = PageStore()
    m = Manifest(ZERO_HASH, n, store.load)
    model: dict[int, bytes] = {}
    versions: list[tuple[Manifest, dict[int, bytes]]] = [(m, {})]
    for batch in batches:
        changes = {k % n: entry(v) for k, v in batch.items()}
        m, pages = m.updated(changes, hash_page)
        store.add(pages)
        model.update(changes)
        versions.append((m, dict(model)))
    # Every version, reloaded from its root alone, reads as its model did then.
    for manifest, snapshot in versions:
        fresh = Manifest(manifest.root, n, store.load)
        for i in {*snapshot, 0, n - 1}:
            assert fresh.entry(i) == snapshot.get(i, NEVER)
        assert dict(fresh.entries()) == {i: e for i, e in snapshot.items() if e != NEVER}
        reachable = set(fresh.page_hashes())
        assert reachable <= set(store.pages)
        assert (fresh.root == ZERO_HASH) == (not reachable)


def test_versions_share_unchanged_pages() -> None:
    n = FANOUT * FANOUT + 3  # two levels of interior pages
    assert height_for(n) == 2
    store = PageStore()
    base, pages = Manifest(ZERO_HASH, n, store.load).updated(
        {i: entry(i + 1) for i in range(0, n, 97)}, hash_page
    )
    store.add(pages)
    # One extent changes: exactly one page per level is new, the rest is shared.
    child, new_pages = base.updated({12345: entry(999)}, hash_page)
    store.add(new_pages)
    assert len(new_pages) == height_for(n) + 1
    old, new = set(base.page_hashes()), set(child.page_hashes())
    assert len(new - old) == len(new_pages)
    assert len(old & new) == len(old) - len(new_pages)
    assert child.entry(12345) == entry(999) and base.entry(12345) == NEVER
    # The same change applied twice gives the same root (content addressing).
    again, _ = base.updated({12345: entry(999)}, hash_page)
    assert again.root == child.root


def test_never_written_pages_are_not_stored() -> None:
    store = PageStore()
    m, pages = Manifest(ZERO_HASH, 10 * FANOUT, store.load).updated(
        {3 * FANOUT + 1: entry(7)}, hash_page
    )
    assert len(pages) == 2  # one leaf, one root: empty subtrees are ZERO_HASH
    store.add(pages)
    cleared, pages = m.updated({3 * FANOUT + 1: NEVER}, hash_page)
    assert cleared.root == ZERO_HASH and pages == []


def test_lookups_load_only_the_path() -> None:
    n = FANOUT * FANOUT + 3
    store = PageStore()
    m, pages = Manifest(ZERO_HASH, n, store.load).updated(
        {i: entry(i + 1) for i in range(0, n, 50)}, hash_page
    )
    store.add(pages)
    fresh = Manifest(m.root, n, store.load)
    fresh.entry(60000)
    assert store.loads == height_for(n) + 1


def test_corrupt_and_misplaced_pages_are_detected() -> None:
    store = PageStore()
    n = 3 * FANOUT
    m, pages = Manifest(ZERO_HASH, n, store.load).updated({1: entry(1)}, hash_page)
    store.add(pages)
    leaf = next(d for d, raw in pages if raw[5] == 0)
    good = store.pages[leaf]
    store.pages[leaf] = good[:-1]  # truncated
    with pytest.raises(VolumeIOError, match="corrupt"):
        Manifest(m.root, n, store.load).entry(1)
    store.pages[leaf] = b"XXXX" + good[4:]  # bad magic
    with pytest.raises(VolumeIOError, match="corrupt"):
        Manifest(m.root, n, store.load).entry(1)
    # A leaf where the root should be: the wrong level.
    with pytest.raises(VolumeIOError):
        Manifest(leaf, n, store.load).entry(1)


def test_bad_updates_are_refused() -> None:
    m = Manifest(ZERO_HASH, 10, PageStore().load)
    with pytest.raises(IndexError):
        m.updated({10: entry(1)}, hash_page)
    with pytest.raises(ValueError):
        m.updated({1: b"short"}, hash_page)
