"""Point-in-time commits: a write that lands while a commit is uploading must not leak into
it (copy-aside), and the extent stays dirty for the next commit; a commit is a state the
disk had (at a flush in remote durability, when the interval is up in local)."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from bsfixtures import EXTENT, Deployment

from loft.blockstore.capture import BLOCK, Capture
from loft.blockstore.chunks import HEADER_SIZE

pytestmark = pytest.mark.timeout(60)


def rnd(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def read(cap: Capture, fd: int, extent: int, length: int) -> bytes:
    """The extent as the capture gives it to a commit (in a framed buffer)."""
    buf = cap.read_extent(fd, extent, bytearray(HEADER_SIZE + length))
    return bytes(buf[HEADER_SIZE:])


def test_capture_preserves_bytes_overwritten_after_the_flush(tmp_path: Path) -> None:
    es = 64 * 1024
    path = tmp_path / "data"
    original = rnd(1, 3 * es)
    path.write_bytes(original)
    fd = os.open(path, os.O_RDWR)
    try:
        cap = Capture(1, {0: 1, 1: 1}, tmp_path / "aside", es)  # extent 2 is not captured
        # Unaligned writes, straddling blocks and extents; the second overlaps the first.
        for off, n, seed in [(100, 5000, 2), (es - 10, 30, 3), (50, 200, 4), (2 * es + 7, 9, 5)]:
            cap.preserve(fd, off, n)
            os.pwrite(fd, rnd(seed, n), off)
        assert read(cap, fd, 0, es) == original[:es]
        assert read(cap, fd, 1, es) == original[es : 2 * es]
        # Only touched blocks were copied, each once.
        assert os.path.getsize(tmp_path / "aside") <= 2 * es
        cap.drop(1)
        cap.preserve(fd, es, BLOCK)
        os.pwrite(fd, b"z" * BLOCK, es)
        assert read(cap, fd, 1, es)[:BLOCK] == b"z" * BLOCK  # dropped: not protected
        cap.close()
        assert not (tmp_path / "aside").exists()
    finally:
        os.close(fd)


def test_reused_aside_file_gives_only_what_this_capture_copied(tmp_path: Path) -> None:
    """A capture reuses the aside file of the one before (kept, not truncated): its stale
    slots must never show through, and it is trimmed to the slots the last capture used."""
    es = 64 * 1024
    path = tmp_path / "data"
    original = rnd(30, 4 * es)
    path.write_bytes(original)
    aside = tmp_path / "aside"
    aside.write_bytes(b"\xee" * 8 * es)  # what earlier captures left behind
    fd = os.open(path, os.O_RDWR)
    try:
        cap = Capture(1, {0: 1, 2: 1, 3: 1}, aside, es)
        state = bytearray(original)
        # Extent 2 is copied first (slot 0), then 0 (slot 1); extent 3 never.
        for off, n, seed in [(2 * es + 5000, 3000, 31), (100, es, 32), (2 * es + 1, 10, 33)]:
            cap.preserve(fd, off, n)
            os.pwrite(fd, rnd(seed, n), off)
            state[off : off + n] = rnd(seed, n)
        for e in (0, 2, 3):
            assert read(cap, fd, e, es) == original[e * es : (e + 1) * es]
        cap.close(keep=True)
        assert os.path.getsize(aside) == 2 * es  # two slots used: the rest trimmed
        nxt = Capture(2, {0: 2}, aside, es)  # the next capture: slot 0 holds stale bytes
        nxt.preserve(fd, 4096, 10)
        os.pwrite(fd, b"n" * 10, 4096)
        assert read(nxt, fd, 0, es) == bytes(state[:es])
        nxt.close()
        assert not aside.exists()
    finally:
        os.close(fd)


def _stall_uploads(bs: object) -> tuple[threading.Event, threading.Event]:
    """Fault injection (timing only): uploads stall until released. (stalled, release)"""
    stalled, release = threading.Event(), threading.Event()
    store = bs.ctx.store  # type: ignore[attr-defined]
    real_put_many = store.put_many

    def stalling_put_many(items):  # type: ignore[no-untyped-def]
        stalled.set()
        release.wait(30)
        return real_put_many(items)

    store.put_many = stalling_put_many
    return stalled, release


def test_closing_a_volume_removes_its_aside_files(
    deployment_of: Callable[[str], Deployment],
) -> None:
    dep = deployment_of("sqlite-file")
    bs = dep.node("a")
    bs.create("v", size=4 * EXTENT, extent_size=EXTENT, commit_interval=60.0)
    vol = bs.open("v")
    vol.write(0, rnd(40, 2 * EXTENT))
    stalled, release = _stall_uploads(bs)
    committer = threading.Thread(target=vol.commit)
    committer.start()
    assert stalled.wait(20)
    vol.write(100, rnd(41, 5000))  # copies aside for the capture uploading
    directory = vol._wc.directory
    assert list(directory.glob("aside-*"))
    release.set()
    committer.join(30)
    vol.write(200, rnd(42, 5000))  # no capture alive: nothing copied
    vol.close()
    assert not list(directory.glob("aside-*"))
    assert dep.node("fresh").view("v").read(0, 4 * EXTENT)[200:5200] == rnd(42, 5000)


def test_local_flush_captures_nothing_until_its_commit_is_due(
    deployment_of: Callable[[str], Deployment],
) -> None:
    """In local durability a flush only asks for a commit within the interval: writes
    after it copy nothing aside, and the flushed writes count in the commit lag."""
    dep = deployment_of("sqlite-file")
    bs = dep.node("a")
    bs.create("v", size=4 * EXTENT, extent_size=EXTENT, commit_interval=60.0)
    vol = bs.open("v")
    vol.write(0, rnd(43, 2 * EXTENT))
    vol.flush()
    vol.write(100, rnd(44, EXTENT))  # overwrites flushed, uncommitted extents
    assert not list(vol._wc.directory.glob("aside-*"))
    assert vol.commit_lag > 0
    vol.commit()
    assert vol.commit_lag == 0
    vol.close()


@pytest.mark.parametrize("kind", ["sqlite-file", "sqlite-s3"])
def test_write_during_upload_does_not_leak_into_the_commit(
    kind: str, deployment_of: Callable[[str], Deployment]
) -> None:
    dep = deployment_of(kind)
    bs = dep.node("a")
    n = 24  # three upload batches: some extents are still unread when the writes land
    bs.create("v", size=n * EXTENT, extent_size=EXTENT, commit_interval=60.0)
    vol = bs.open("v")
    state_a = rnd(10, n * EXTENT)
    vol.write(0, state_a)

    stalled, release = _stall_uploads(bs)  # the first upload of the commit waits
    committed: list[object] = []
    committer = threading.Thread(target=lambda: committed.append(vol.commit()))
    committer.start()
    assert stalled.wait(20)
    # Overwrite parts of every captured extent (unaligned, across extent boundaries).
    state_b = bytearray(state_a)
    for i in range(n):
        off = i * EXTENT + 1000 + 37 * i
        data = rnd(100 + i, EXTENT // 2 + 5000)
        vol.write(off, data)
        state_b[off : off + len(data)] = data
    vol.zero(3 * EXTENT, 2 * EXTENT)
    state_b[3 * EXTENT : 5 * EXTENT] = bytes(2 * EXTENT)
    release.set()
    committer.join(30)
    assert committed

    fresh = dep.node("fresh")
    assert fresh.view("v").read(0, n * EXTENT) == state_a, "a later write leaked into the commit"
    assert vol.read(0, n * EXTENT) == bytes(state_b)
    assert vol.dirty_extents == n  # rewritten after the capture: still to be committed
    vol.commit()
    assert dep.node("fresh2").view("v").read(0, n * EXTENT) == bytes(state_b)
    assert vol.dirty_extents == 0
    vol.close()


def test_local_durability_commits_a_state_the_disk_had(
    deployment_of: Callable[[str], Deployment],
) -> None:
    """Write A, flush, write B into the same (dirty) extents before the background commit
    runs: the commit takes the disk as it is when the interval is up, so the head goes
    from the empty disk to A+B, never to B without A (nor to anything else)."""
    dep = deployment_of("sqlite-file")
    bs = dep.node("a")
    bs.create("v", size=8 * EXTENT, extent_size=EXTENT, commit_interval=0.3)
    vol = bs.open("v")
    a = rnd(20, 4 * EXTENT)
    vol.write(0, a)
    vol.flush()
    b = rnd(21, 2 * EXTENT)
    vol.write(EXTENT + 100, b)  # not flushed
    both = bytearray(a + bytes(4 * EXTENT))
    both[EXTENT + 100 : EXTENT + 100 + len(b)] = b
    empty = bytes(8 * EXTENT)
    fresh = dep.node("fresh")
    head = empty
    for _ in range(60):
        head = fresh.view("v").read(0, 8 * EXTENT)
        assert head in (empty, bytes(both)), "the head is not a state the disk had"
        if head != empty:
            break
        threading.Event().wait(0.05)
    assert head == bytes(both), "the flush was not committed within its interval"
    vol.close()


def test_remote_durability_commits_exactly_the_flushed_state(
    deployment_of: Callable[[str], Deployment],
) -> None:
    """In remote durability a flush returns once its own state is committed: what is
    written after it is not in that commit."""
    dep = deployment_of("sqlite-file")
    bs = dep.node("a")
    bs.create("v", size=8 * EXTENT, extent_size=EXTENT, durability="remote")
    vol = bs.open("v")
    a = rnd(22, 4 * EXTENT)
    vol.write(0, a)
    vol.flush()
    vol.write(EXTENT + 100, rnd(23, 2 * EXTENT))  # not flushed
    assert dep.node("fresh").view("v").read(0, 8 * EXTENT) == a + bytes(4 * EXTENT)
    vol.close()


def test_lock_free_read_extent_sees_the_capture_while_writes_race(tmp_path: Path) -> None:
    """The uploader reads extents without the volume's lock while a writer (holding it,
    so one at a time) preserves then overwrites: every read is the captured state."""
    es = 256 * 1024
    path = tmp_path / "data"
    original = rnd(7, 2 * es)
    path.write_bytes(original)
    fd = os.open(path, os.O_RDWR)
    cap = Capture(1, {0: 1, 1: 1}, tmp_path / "aside", es)
    stop = threading.Event()

    def writer() -> None:
        r = random.Random(8)
        while not stop.is_set():
            off = r.randrange(0, 2 * es - 1)
            n = min(r.randrange(1, 3 * BLOCK), 2 * es - off)
            cap.preserve(fd, off, n)
            os.pwrite(fd, r.randbytes(n), off)

    t = threading.Thread(target=writer)
    t.start()
    try:
        for i in range(300):
            e = i % 2
            assert read(cap, fd, e, es) == original[e * es : (e + 1) * es], f"read {i}"
    finally:
        stop.set()
        t.join(10)
        cap.close()
        os.close(fd)
