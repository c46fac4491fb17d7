"""Point-in-time commits: a write that lands while a commit is uploading must not leak into
it (copy-aside), and the extent stays dirty for the next commit."""

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


def test_closing_a_volume_removes_its_aside_files(
    deployment_of: Callable[[str], Deployment],
) -> None:
    dep = deployment_of("sqlite-file")
    bs = dep.node("a")
    bs.create("v", size=4 * EXTENT, extent_size=EXTENT, commit_interval=60.0)
    vol = bs.open("v")
    vol.write(0, rnd(40, 2 * EXTENT))
    vol.flush()  # captured, waiting for its interval
    vol.write(100, rnd(41, 5000))  # copies aside for the waiting capture
    directory = vol._wc.directory
    assert list(directory.glob("aside-*"))
    vol.commit()
    vol.write(200, rnd(42, 5000))  # no capture alive: nothing copied
    vol.close()
    assert not list(directory.glob("aside-*"))
    assert dep.node("fresh").view("v").read(0, 4 * EXTENT)[200:5200] == rnd(42, 5000)


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

    # Fault injection (timing only): the first upload of the commit stalls until released.
    stalled, release = threading.Event(), threading.Event()
    real_put_many = bs.ctx.store.put_many

    def stalling_put_many(items):  # type: ignore[no-untyped-def]
        stalled.set()
        release.wait(30)
        return real_put_many(items)

    bs.ctx.store.put_many = stalling_put_many  # type: ignore[method-assign]
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
    bs.ctx.store.put_many = real_put_many  # type: ignore[method-assign]
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


def test_local_durability_commits_exactly_the_flushed_state(
    deployment_of: Callable[[str], Deployment],
) -> None:
    """Write A, flush, write B into the same (dirty) extents before the background commit
    runs: the head holds A then A+B, never B without A."""
    dep = deployment_of("sqlite-file")
    bs = dep.node("a")
    bs.create("v", size=8 * EXTENT, extent_size=EXTENT, commit_interval=0.3)
    vol = bs.open("v")
    a = rnd(20, 4 * EXTENT)
    vol.write(0, a)
    vol.flush()
    b = rnd(21, 2 * EXTENT)
    vol.write(EXTENT + 100, b)  # not flushed
    seen = set()
    fresh = dep.node("fresh")
    allowed = {bytes(8 * EXTENT), a + bytes(4 * EXTENT)}
    for _ in range(60):
        head = fresh.view("v").read(0, 8 * EXTENT)
        assert head in allowed, "the head is not the state at a flush"
        seen.add(head)
        if head != bytes(8 * EXTENT):
            break
        threading.Event().wait(0.05)
    assert a + bytes(4 * EXTENT) in seen, "the flushed state was never committed"
    vol.close()
    both = bytearray(a + bytes(4 * EXTENT))
    both[EXTENT + 100 : EXTENT + 100 + len(b)] = b
    assert dep.node("fresh2").view("v").read(0, 8 * EXTENT) == bytes(both)


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
