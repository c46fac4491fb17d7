"""A working copy's bytes are checked before they are trusted after a restart.

The working copy lives on the node's disk, which may rot, or be changed, while no service
holds the volume. Every clean extent kept from before a start is checked against its
chunk digest on first use (a read, a partial write or zero, a prefetch, an import's
partial last extent); one that does not match is counted, logged and fetched again, so
its bad bytes are neither served nor built into the next commit. Extents this run
fetched or wrote are trusted. Bytes changed while the volume is open are out of scope.
"""

from __future__ import annotations

import io
import logging
import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from bsfixtures import EXTENT, KIB, Deployment
from test_volume_recovery import crash

from loft.blockstore import STATE_HOLE, STATE_ZERO, Blockstore
from loft.blockstore.chunks import chunk_key
from loft.blockstore.workcopy import HEADER_SIZE, punch_hole

pytestmark = pytest.mark.timeout(60)

#: Extents 0-3 hold data, 4 was written with zeros, 5-8 were never written; 8 is short.
N_DATA = 4
WRITTEN_ZERO = 4
NEVER_WRITTEN = 5
SIZE = 8 * EXTENT + 12 * KIB
ZERO = STATE_HOLE | STATE_ZERO


def _content() -> bytes:
    return random.Random(9).randbytes(N_DATA * EXTENT)


@pytest.fixture
def node(deployment_of: Callable[[str], Deployment]) -> Blockstore:
    """Volume ``v`` written, committed and closed cleanly, with every extent read once
    (so each is clean in the working copy the next open keeps)."""
    bs = deployment_of("sqlite-file").node("a")
    bs.create("v", size=SIZE, extent_size=EXTENT, commit_interval=60.0)
    vol = bs.open("v")
    vol.write(0, _content())
    vol.write(WRITTEN_ZERO * EXTENT, bytes(EXTENT))
    vol.commit()
    vol.read(0, SIZE)
    assert vol.present_extents == 9
    vol.close()
    return bs


def _data_file(bs: Blockstore) -> Path:
    return bs.ctx.volumes_dir / bs.get("v").uid / "data"


@contextmanager
def _opened(bs: Blockstore, name: str = "data") -> Iterator[int]:
    """A file of the working copy, to change while no service holds the volume."""
    fd = os.open(_data_file(bs).with_name(name), os.O_WRONLY)
    try:
        yield fd
    finally:
        os.close(fd)


def _tamper(bs: Blockstore, offset: int, data: bytes = b"\xff", name: str = "data") -> None:
    with _opened(bs, name) as fd:
        os.pwrite(fd, data, offset)


def _committed(bs: Blockstore) -> bytes:
    """The volume's committed head, read from the chunk store (not the working copy)."""
    return bs.view("v").read(0, SIZE)


def _expected() -> bytearray:
    return bytearray(_content()) + bytearray(SIZE - N_DATA * EXTENT)


def test_verify_read_serves_committed_bytes(
    node: Blockstore, caplog: pytest.LogCaptureFixture
) -> None:
    _tamper(node, EXTENT + 5)
    vol = node.open("v")
    try:
        assert not vol.is_resident(EXTENT, 16)  # sent to a worker thread to be checked
        with caplog.at_level(logging.WARNING, logger="loft.blockstore.volume"):
            assert vol.read(EXTENT, 16) == _content()[EXTENT : EXTENT + 16]
        assert vol.corrupt_extents == 1
        assert vol.is_resident(EXTENT, 16)
        # Checked once: the lock-free read serves it from now on, the counter stays.
        assert vol.read(EXTENT + 5, 1) == _content()[EXTENT + 5 : EXTENT + 6]
        assert vol.read(0, EXTENT) == _content()[:EXTENT]  # intact: kept, not counted
        assert vol.corrupt_extents == 1
    finally:
        vol.close()
    digest = node.view("v").digest(1).hex()
    (message,) = [r.getMessage() for r in caplog.records if "extent_corrupt" in r.getMessage()]
    assert message.startswith("volume.extent_corrupt volume=v extent=1 ")
    assert f'expected="{digest[:16]}"' in message


def test_verify_partial_write_commits_the_correct_remainder(node: Blockstore) -> None:
    _tamper(node, 2 * EXTENT + 100, b"rot")
    vol = node.open("v")
    try:
        vol.write(2 * EXTENT + 1000, b"new!")
    finally:
        vol.close()
    want = _expected()
    want[2 * EXTENT + 1000 : 2 * EXTENT + 1004] = b"new!"
    assert _committed(node) == bytes(want)
    assert vol.corrupt_extents == 1


def test_verify_partial_zero_commits_the_correct_remainder(node: Blockstore) -> None:
    _tamper(node, 3 * EXTENT + 5 * KIB, b"rot")
    vol = node.open("v")
    try:
        vol.zero(3 * EXTENT, 4 * KIB)
    finally:
        vol.close()
    want = _expected()
    want[3 * EXTENT : 3 * EXTENT + 4 * KIB] = bytes(4 * KIB)
    assert _committed(node) == bytes(want)
    assert vol.corrupt_extents == 1


def test_verify_partial_trim_leaves_the_extent_to_be_checked(node: Blockstore) -> None:
    """A trim never fetches; of an unchecked extent it drops nothing (it is advisory)."""
    _tamper(node, 3 * EXTENT + 5 * KIB, b"rot")
    vol = node.open("v")
    try:
        vol.trim(3 * EXTENT, 4 * KIB)
        assert vol.dirty_extents == 0
        assert vol.read(3 * EXTENT, EXTENT) == _content()[3 * EXTENT :]
        assert vol.corrupt_extents == 1
    finally:
        vol.close()
    assert _committed(node) == bytes(_expected())


def test_verify_whole_write_needs_no_check(node: Blockstore) -> None:
    """Bytes overwritten whole are never trusted, so they need no check."""
    _tamper(node, EXTENT, b"rot")
    new = random.Random(3).randbytes(EXTENT)
    vol = node.open("v")
    try:
        vol.write(EXTENT, new)
        vol.zero(2 * EXTENT, EXTENT)
    finally:
        vol.close()
    want = _expected()
    want[EXTENT : 3 * EXTENT] = new + bytes(EXTENT)
    assert _committed(node) == bytes(want)
    assert vol.corrupt_extents == 0


def test_verify_cache_fetches_a_corrupt_extent_again(node: Blockstore) -> None:
    _tamper(node, 5)
    vol = node.open("v")
    try:
        vol.cache(0, 2 * EXTENT)
        with open(_data_file(node), "rb") as f:  # the working copy itself is mended
            assert f.read(2 * EXTENT) == _content()[: 2 * EXTENT]
        assert vol.is_resident(0, 2 * EXTENT)
        assert vol.corrupt_extents == 1
    finally:
        vol.close()


@pytest.mark.parametrize("extent", [WRITTEN_ZERO, NEVER_WRITTEN, 8])
def test_verify_zero_extent_filled_with_garbage(node: Blockstore, extent: int) -> None:
    _tamper(node, extent * EXTENT + 4 * KIB, b"garbage")
    vol = node.open("v")
    try:
        elen = min(EXTENT, SIZE - extent * EXTENT)
        # Block status answers from the manifest for an unchecked extent, so a client
        # reading sparsely skips the garbage too.
        assert vol.block_status(extent * EXTENT, elen) == [(elen, ZERO)]
        assert vol.read(extent * EXTENT, elen) == bytes(elen)
        assert vol.corrupt_extents == 1
        assert vol.block_status(extent * EXTENT, elen) == [(elen, ZERO)]
    finally:
        vol.close()


def test_verify_block_status_of_a_data_extent_punched_to_zeros(node: Blockstore) -> None:
    with _opened(node) as fd:
        punch_hole(fd, 2 * EXTENT, EXTENT)
    vol = node.open("v")
    try:
        assert vol.block_status(2 * EXTENT, EXTENT) == [(EXTENT, 0)]
        # Allocation depth never looked at the bytes: it needs no check either.
        assert vol.allocation_depth(2 * EXTENT, EXTENT) == [(EXTENT, 1)]
        assert vol.corrupt_extents == 0
        assert vol.read(2 * EXTENT, EXTENT) == _content()[2 * EXTENT : 3 * EXTENT]
        assert vol.corrupt_extents == 1
    finally:
        vol.close()


def test_verify_several_extents_in_one_read(node: Blockstore) -> None:
    for e in (0, 2, 3, NEVER_WRITTEN):
        _tamper(node, e * EXTENT + e, b"\x5a")
    vol = node.open("v")
    try:
        assert vol.read(0, SIZE) == bytes(_expected())
        assert vol.corrupt_extents == 4
    finally:
        vol.close()


def test_verify_import_keeps_the_correct_tail_of_a_partial_last_extent(
    node: Blockstore,
) -> None:
    _tamper(node, EXTENT + EXTENT // 2 + 10, b"rot")
    image = random.Random(4).randbytes(EXTENT + EXTENT // 2)
    vol = node.open("v")
    try:
        vol.import_image(io.BytesIO(image))
    finally:
        vol.close()
    want = _expected()
    want[: len(image)] = image
    assert _committed(node) == bytes(want)
    assert vol.corrupt_extents == 1


def test_verify_import_drops_unchecked_extents_it_replaces(node: Blockstore) -> None:
    image = random.Random(5).randbytes(2 * EXTENT)
    vol = node.open("v")
    try:
        vol.import_image(io.BytesIO(image))
        assert vol.read(0, 2 * EXTENT) == image
        assert vol.corrupt_extents == 0  # replaced, not mistaken for rot
    finally:
        vol.close()


def test_verify_unchecked_extents_are_kept_across_restarts(node: Blockstore) -> None:
    """A start that never touched an extent keeps it clean on disk, to be checked by
    the next start: what a restart does not verify it neither trusts nor drops."""
    vol = node.open("v")
    vol.read(0, EXTENT)
    vol.close()
    _tamper(node, 3 * EXTENT + 7)
    fetched = node.ctx.cache.fetched_count
    vol = node.open("v")
    try:
        assert vol.present_extents == 9
        assert vol.read(EXTENT, 2 * EXTENT) == _content()[EXTENT : 3 * EXTENT]
        assert node.ctx.cache.fetched_count == fetched  # matched: nothing fetched
        assert vol.read(3 * EXTENT, EXTENT) == _content()[3 * EXTENT :]
        assert vol.corrupt_extents == 1
    finally:
        vol.close()


def test_verify_state_byte_that_is_no_state(node: Blockstore) -> None:
    """The state file rots too: an unknown state is read as absent (fetched)."""
    _tamper(node, EXTENT, b"rot")
    _tamper(node, HEADER_SIZE + 1, b"\x07", "state")
    vol = node.open("v")
    try:
        assert vol.read(0, SIZE) == bytes(_expected())
    finally:
        vol.close()


def test_verify_truncated_data_file(node: Blockstore) -> None:
    os.truncate(_data_file(node), 2 * EXTENT + 100)
    vol = node.open("v")
    try:
        assert vol.read(0, SIZE) == bytes(_expected())
        assert vol.corrupt_extents == 2  # extents 2 and 3 held data; the rest are zeros
    finally:
        vol.close()
    assert _data_file(node).stat().st_size == SIZE


def test_verify_absent_zero_extent_filled_with_garbage(
    deployment_of: Callable[[str], Deployment],
) -> None:
    """An absent extent is a hole by rule: a fetch of a zero extent makes sure."""
    bs = deployment_of("sqlite-file").node("a")
    bs.create("v", size=SIZE, extent_size=EXTENT)
    bs.open("v").close()
    _tamper(bs, 2 * EXTENT, b"garbage")
    vol = bs.open("v")
    try:
        assert vol.read(2 * EXTENT, 16) == bytes(16)
    finally:
        vol.close()


def test_verify_unclean_stop_discards_clean_extents(node: Blockstore) -> None:
    crash(node, node.open("v"))
    _tamper(node, EXTENT)
    vol = node.open("v")
    try:
        assert vol.present_extents == 0  # nothing kept, so nothing to check
        assert vol.read(0, SIZE) == bytes(_expected())
        assert vol.corrupt_extents == 0
    finally:
        vol.close()


@pytest.mark.parametrize("fetch", ["verify", "download"])
def test_verify_import_during_a_fetch_wins(node: Blockstore, fetch: str) -> None:
    """An import that replaces an extent while it is being fetched (or checked) leaves
    it absent: the fetch must not mark the replaced chunk's bytes clean."""
    if fetch == "download":
        _tamper(node, 0)  # checked, found bad, then fetched
    digest = node.view("v").digest(0)
    image = random.Random(6).randbytes(EXTENT)
    vol = node.open("v")
    hooked = vol._verify if fetch == "verify" else node.ctx.cache.get_many
    calls = []

    def import_first(*args: object) -> object:
        if not calls and (fetch == "verify" or digest in args[0]):  # type: ignore[operator]
            calls.append(1)
            vol.import_image(io.BytesIO(image))
        return hooked(*args)  # type: ignore[operator]

    try:
        if fetch == "verify":
            vol._verify = import_first  # type: ignore[method-assign]
        else:
            node.ctx.cache.get_many = import_first  # type: ignore[method-assign]
        assert vol.read(0, EXTENT) == image
        assert calls
    finally:
        vol.close()


def test_verify_refetch_past_a_corrupt_chunk_cache(node: Blockstore) -> None:
    """The node's chunk cache is on the same disk: a value it kept that fails its check
    is dropped and fetched from the chunk store, not served nor failed on forever."""
    digest = node.view("v").digest(1)
    good = node.ctx.store.get(chunk_key(digest))
    node.view("v").read(EXTENT, EXTENT)  # now kept in the node's chunk cache
    cached = node.ctx.settings.data_dir / "chunk-cache" / digest.hex()
    assert cached.read_bytes() == good
    cached.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    _tamper(node, EXTENT + 5)
    vol = node.open("v")
    try:
        assert vol.read(EXTENT, EXTENT) == _content()[EXTENT : 2 * EXTENT]
        assert vol.corrupt_extents == 1
    finally:
        vol.close()
    assert cached.read_bytes() == good
    cached.write_bytes(b"rot")
    assert node.view("v").read(EXTENT, EXTENT) == _content()[EXTENT : 2 * EXTENT]
