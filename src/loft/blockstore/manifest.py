"""The manifest: a copy-on-write tree mapping extent index -> (chunk hash, writer).

Pages are chunks too (stored and hashed like extents), so two versions of a volume share
every page they did not change, and a fork or snapshot is just a root hash. A leaf entry is
40 bytes: the chunk hash (``ZERO_HASH`` for an all-zero extent) and an 8-byte writer tag
(which volume wrote it, for ``qemu:allocation-depth``); 40 zero bytes mean "never written".
An interior entry is a child page hash, ``ZERO_HASH`` for a subtree never written.

The tree is pure: pages come in through ``load_page`` and go out as the list returned by
:meth:`Manifest.updated`; storing them is the caller's business.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator, Mapping

from loft.blockstore.chunks import HASH_SIZE, ZERO_HASH
from loft.blockstore.errors import VolumeIOError

FANOUT = 256
WRITER_SIZE = 8
ENTRY_SIZE = HASH_SIZE + WRITER_SIZE
#: A leaf entry for an extent never written in this volume or its ancestors.
NEVER = bytes(ENTRY_SIZE)
FORMAT_VERSION = 1
_HEADER = struct.Struct(">4sBBH")
_MAGIC = b"LFTM"
_LEAF_SIZE = _HEADER.size + FANOUT * ENTRY_SIZE
_INTERIOR_SIZE = _HEADER.size + FANOUT * HASH_SIZE

PageLoader = Callable[[bytes], bytes]
Hasher = Callable[[bytes], bytes]


def height_for(n_extents: int) -> int:
    """Interior levels above the leaves needed to address ``n_extents`` extents."""
    height, span = 0, FANOUT
    while span < n_extents:
        span *= FANOUT
        height += 1
    return height


def entry_of(digest: bytes, writer: bytes) -> bytes:
    """A leaf entry from a chunk hash and an 8-byte writer tag."""
    return digest + writer


def _empty_page(level: int) -> bytearray:
    size = _LEAF_SIZE if level == 0 else _INTERIOR_SIZE
    page = bytearray(size)
    _HEADER.pack_into(page, 0, _MAGIC, FORMAT_VERSION, level, 0)
    return page


class Manifest:
    """One version of a volume's extent map. Immutable; pages are cached on the object."""

    def __init__(self, root: bytes, n_extents: int, load_page: PageLoader) -> None:
        self.root = root
        self.n_extents = n_extents
        self.height = height_for(n_extents)
        self._load = load_page
        self._pages: dict[bytes, bytes] = {}
        self._lock = threading.Lock()

    def _page(self, digest: bytes, level: int) -> bytes:
        page = self._pages.get(digest)
        if page is None:
            page = self._load(digest)
            expected = _LEAF_SIZE if level == 0 else _INTERIOR_SIZE
            if len(page) != expected or page[:4] != _MAGIC or page[4] != FORMAT_VERSION:
                raise VolumeIOError(f"corrupt manifest page {digest.hex()}")
            if page[5] != level:
                raise VolumeIOError(f"manifest page {digest.hex()} is at the wrong level")
            with self._lock:
                self._pages[digest] = page
        return page

    def _leaf(self, leaf_index: int) -> bytes | None:
        """The leaf page holding entries ``leaf_index*FANOUT ...``, None if never written."""
        digest = self.root
        for level in range(self.height, 0, -1):
            if digest == ZERO_HASH:
                return None
            page = self._page(digest, level)
            slot = (leaf_index // FANOUT ** (level - 1)) % FANOUT
            off = _HEADER.size + slot * HASH_SIZE
            digest = page[off : off + HASH_SIZE]
        if digest == ZERO_HASH:
            return None
        return self._page(digest, 0)

    def entry(self, index: int) -> bytes:
        """The 40-byte entry of extent ``index``."""
        leaf = self._leaf(index // FANOUT)
        if leaf is None:
            return NEVER
        off = _HEADER.size + (index % FANOUT) * ENTRY_SIZE
        return leaf[off : off + ENTRY_SIZE]

    def entries(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, bytes]]:
        """``(index, entry)`` for every extent in ``[start, stop)`` that was ever written."""
        stop = self.n_extents if stop is None else min(stop, self.n_extents)
        yield from self._walk(self.root, self.height, 0, start, stop)

    def _walk(
        self, digest: bytes, level: int, base: int, start: int, stop: int
    ) -> Iterator[tuple[int, bytes]]:
        if digest == ZERO_HASH:
            return
        span = FANOUT**level
        page = self._page(digest, level)
        first = max(0, (start - base) // span)
        last = min(FANOUT, -(-(stop - base) // span))
        for slot in range(first, last):
            if level == 0:
                off = _HEADER.size + slot * ENTRY_SIZE
                entry = page[off : off + ENTRY_SIZE]
                if entry != NEVER:
                    yield base + slot, entry
            else:
                off = _HEADER.size + slot * HASH_SIZE
                child = page[off : off + HASH_SIZE]
                yield from self._walk(child, level - 1, base + slot * span, start, stop)

    def page_hashes(self) -> Iterator[bytes]:
        """Every page reachable from the root (for GC marking)."""
        if self.root == ZERO_HASH:
            return
        stack = [(self.root, self.height)]
        while stack:
            digest, level = stack.pop()
            yield digest
            if level == 0:
                continue
            page = self._page(digest, level)
            for slot in range(FANOUT):
                off = _HEADER.size + slot * HASH_SIZE
                child = page[off : off + HASH_SIZE]
                if child != ZERO_HASH:
                    stack.append((child, level - 1))

    def updated(
        self, changes: Mapping[int, bytes], hasher: Hasher
    ) -> tuple[Manifest, list[tuple[bytes, bytes]]]:
        """A new manifest with ``changes`` (index -> entry) applied, plus the new pages
        ``(hash, raw page)`` that must be stored before the new root is published."""
        if not changes:
            return self, []
        new_pages: list[tuple[bytes, bytes]] = []
        # Level 0: rewrite each touched leaf.
        touched: dict[int, bytes] = {}
        by_leaf: dict[int, list[int]] = {}
        for index in changes:
            if not 0 <= index < self.n_extents:
                raise IndexError(index)
            by_leaf.setdefault(index // FANOUT, []).append(index)
        for leaf_index, indexes in by_leaf.items():
            old = self._leaf(leaf_index)
            page = bytearray(old) if old is not None else _empty_page(0)
            for index in indexes:
                entry = changes[index]
                if len(entry) != ENTRY_SIZE:
                    raise ValueError("manifest entries are 40 bytes")
                off = _HEADER.size + (index % FANOUT) * ENTRY_SIZE
                page[off : off + ENTRY_SIZE] = entry
            touched[leaf_index] = self._store(page, 0, new_pages, hasher)
        # Interior levels: rewrite the parents of what changed, up to the root.
        for level in range(1, self.height + 1):
            parents: dict[int, bytes] = {}
            by_parent: dict[int, list[int]] = {}
            for child_index in touched:
                by_parent.setdefault(child_index // FANOUT, []).append(child_index)
            for parent_index, children in by_parent.items():
                old_digest = self._node_digest(parent_index, level)
                page = (
                    bytearray(self._page(old_digest, level))
                    if old_digest != ZERO_HASH
                    else _empty_page(level)
                )
                for child_index in children:
                    off = _HEADER.size + (child_index % FANOUT) * HASH_SIZE
                    page[off : off + HASH_SIZE] = touched[child_index]
                parents[parent_index] = self._store(page, level, new_pages, hasher)
            touched = parents
        (root,) = touched.values()
        result = Manifest(root, self.n_extents, self._load)
        with self._lock:
            result._pages.update(self._pages)
        result._pages.update(new_pages)
        return result, new_pages

    def _node_digest(self, node_index: int, level: int) -> bytes:
        """The hash of the page at ``level`` covering node ``node_index`` (ZERO if none)."""
        digest = self.root
        for lvl in range(self.height, level, -1):
            if digest == ZERO_HASH:
                return ZERO_HASH
            page = self._page(digest, lvl)
            slot = (node_index // FANOUT ** (lvl - level - 1)) % FANOUT
            off = _HEADER.size + slot * HASH_SIZE
            digest = page[off : off + HASH_SIZE]
        return digest

    @staticmethod
    def _store(
        page: bytearray, level: int, out: list[tuple[bytes, bytes]], hasher: Hasher
    ) -> bytes:
        if page.count(0, _HEADER.size) == len(page) - _HEADER.size:
            # An all-"never" page is the empty subtree.
            return ZERO_HASH
        raw = bytes(page)
        digest = hasher(raw)
        out.append((digest, raw))
        return digest
