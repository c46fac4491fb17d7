"""Write-behind: large writes start their writeback before the client's flush."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from bsfixtures import EXTENT, Deployment

from loft.blockstore import writebehind
from loft.blockstore.writebehind import LARGE_WRITE, WriteBehind

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20


class Spans:
    """Fault injection (recording only): the spans handed to the kernel, then passed on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: OSError | None = None) -> None:
        self.spans: list[tuple[int, int, int]] = []
        self.event = threading.Event()
        real = writebehind.start_writeback

        def record(fd: int, offset: int, length: int) -> None:
            self.spans.append((fd, offset, length))
            self.event.set()
            if fail is not None:
                raise fail
            real(fd, offset, length)

        monkeypatch.setattr(writebehind, "start_writeback", record)

    def wait(self, n: int = 1) -> None:
        deadline = time.monotonic() + 10
        while len(self.spans) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.spans) >= n, f"{len(self.spans)} spans started, expected {n}"


def _file(tmp_path: Path, size: int = 64 * MiB) -> int:
    fd = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, size)
    return fd


def test_large_writes_start_writeback_of_the_span_they_covered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spans = Spans(monkeypatch)
    fd = _file(tmp_path)
    behind = WriteBehind(fd, threshold=4 * MiB)
    behind.flushed()  # a client that flushes
    try:
        for i in range(3):  # 3 MiB: below the threshold, nothing yet
            os.pwrite(fd, b"a" * MiB, (8 + i) * MiB)
            behind.wrote((8 + i) * MiB, MiB)
        for _ in range(100):  # small writes never count, however many
            behind.wrote(0, LARGE_WRITE - 1)
        time.sleep(0.1)
        assert spans.spans == []
        os.pwrite(fd, b"a" * MiB, 2 * MiB)  # the fourth, below the others: the span grows
        behind.wrote(2 * MiB, MiB)
        spans.wait()
        assert spans.spans == [(fd, 2 * MiB, 9 * MiB)]
        # A flush wrote back what had accumulated: counting starts again.
        behind.wrote(40 * MiB, 3 * MiB)
        behind.flushed()
        behind.wrote(50 * MiB, 3 * MiB)
        time.sleep(0.1)
        assert len(spans.spans) == 1
        behind.wrote(53 * MiB, MiB)
        spans.wait(2)
        assert spans.spans[1] == (fd, 50 * MiB, 4 * MiB)
    finally:
        behind.close()
        os.close(fd)


def test_only_a_client_that_flushed_lately_gets_write_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that never flushes, or not for FLUSHED_WITHIN, is left to the kernel's
    writeback: rewriting one range over and over, it would have every pass written."""
    spans = Spans(monkeypatch)
    monkeypatch.setattr(writebehind, "FLUSHED_WITHIN", 0.3)
    fd = _file(tmp_path)
    behind = WriteBehind(fd, threshold=2 * MiB)
    try:
        for _ in range(8):  # never flushed: four thresholds' worth, nothing started
            behind.wrote(0, MiB)
        time.sleep(0.1)
        assert spans.spans == []
        behind.flushed()
        behind.wrote(0, MiB)
        behind.wrote(MiB, MiB)
        spans.wait()
        assert [s[1:] for s in spans.spans] == [(0, 2 * MiB)]
        time.sleep(0.4)  # no flush for longer than FLUSHED_WITHIN
        for _ in range(8):
            behind.wrote(0, MiB)
        time.sleep(0.1)
        assert len(spans.spans) == 1
        behind.flushed()  # flushing again turns it back on
        behind.wrote(4 * MiB, 2 * MiB)
        spans.wait(2)
        assert spans.spans[1][1:] == (4 * MiB, 2 * MiB)
    finally:
        behind.close()
        os.close(fd)


def test_a_failing_kernel_turns_write_behind_off_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spans = Spans(monkeypatch, fail=OSError(22, "not here"))
    fd = _file(tmp_path)
    behind = WriteBehind(fd, threshold=MiB)
    behind.flushed()
    try:
        os.pwrite(fd, b"b" * MiB, 0)
        behind.wrote(0, MiB)
        spans.wait()
        for i in range(1, 4):  # off now: no more spans, writes go on as ever
            os.pwrite(fd, b"b" * MiB, i * MiB)
            behind.wrote(i * MiB, MiB)
        time.sleep(0.1)
        assert len(spans.spans) == 1
        assert os.pread(fd, 4 * MiB, 0) == b"b" * 4 * MiB
    finally:
        behind.close()
        os.close(fd)


class _CacheStat(ctypes.Structure):
    _fields_ = [
        ("cache", ctypes.c_uint64),
        ("dirty", ctypes.c_uint64),
        ("writeback", ctypes.c_uint64),
        ("evicted", ctypes.c_uint64),
        ("recently_evicted", ctypes.c_uint64),
    ]


class _CacheStatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


def _dirty_pages(fd: int, length: int) -> int:
    """Pages of ``fd`` still dirty in the page cache (cachestat(2), Linux 6.5+)."""
    libc = ctypes.CDLL(None, use_errno=True)
    rng, stat = _CacheStatRange(0, length), _CacheStat()
    if libc.syscall(451, fd, ctypes.byref(rng), ctypes.byref(stat), 0) != 0:
        pytest.skip(f"no cachestat here: {os.strerror(ctypes.get_errno())}")
    return int(stat.dirty)


def test_the_kernel_writes_the_span_back_before_any_flush(tmp_path: Path) -> None:
    """Against the real kernel: the written pages stop being dirty without an fsync."""
    size = 32 * MiB
    fd = _file(tmp_path, size)
    behind = WriteBehind(fd, threshold=size)
    behind.flushed()
    try:
        for i in range(size // MiB):
            os.pwrite(fd, os.urandom(MiB), i * MiB)
        assert _dirty_pages(fd, size) > 0  # the kernel's own writeback waits ~30 s
        for i in range(size // MiB):
            behind.wrote(i * MiB, MiB)
        deadline = time.monotonic() + 20
        while _dirty_pages(fd, size) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _dirty_pages(fd, size) == 0
    finally:
        behind.close()
        os.close(fd)


def test_a_volume_streaming_writes_starts_their_writeback(
    deployment_of: Callable[[str], Deployment], monkeypatch: pytest.MonkeyPatch
) -> None:
    spans = Spans(monkeypatch)
    large = 4 * EXTENT  # at least LARGE_WRITE
    assert large >= LARGE_WRITE
    monkeypatch.setattr(writebehind, "WRITE_BEHIND_BYTES", 2 * large)
    bs = deployment_of("sqlite-file").node("a")
    bs.create("v", size=32 * EXTENT, extent_size=EXTENT, commit_interval=60.0)
    vol = bs.open("v")
    vol.flush()  # a client that flushes
    try:
        small = os.urandom(4096)
        for i in range(2 * large // 4096 + 1):  # as many bytes in small writes: nothing
            vol.write((i * 4096) % (32 * EXTENT), small)
        time.sleep(0.1)
        assert spans.spans == []
        data = os.urandom(2 * large)
        vol.write(8 * EXTENT, data[:large])
        vol.write(8 * EXTENT + large, data[large:])
        spans.wait()
        assert [s[1:] for s in spans.spans] == [(8 * EXTENT, 2 * large)]
        assert vol.read(8 * EXTENT, 2 * large) == data
        vol.flush()
    finally:
        vol.close()
    assert bs.view("v").read(8 * EXTENT, 2 * large) == data


def test_the_flush_of_a_disconnecting_client_does_not_turn_write_behind_on(
    deployment_of: Callable[[str], Deployment], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server flushes for a client that disconnects (flush(closing=True)): durable
    as any flush, but the next writes come from another client, which has flushed
    nothing (fio's runs, one after another, each end with that flush)."""
    spans = Spans(monkeypatch)
    large = 4 * EXTENT
    monkeypatch.setattr(writebehind, "WRITE_BEHIND_BYTES", 2 * large)
    bs = deployment_of("sqlite-file").node("a")
    bs.create("v", size=32 * EXTENT, extent_size=EXTENT, commit_interval=60.0)
    vol = bs.open("v")
    try:
        data = os.urandom(2 * large)
        vol.write(0, data)
        vol.flush(closing=True)
        for _ in range(3):
            vol.write(8 * EXTENT, data)
        time.sleep(0.1)
        assert spans.spans == []
        vol.flush()  # a client's own flush
        vol.write(8 * EXTENT, data)
        spans.wait()
        assert [s[1:] for s in spans.spans] == [(8 * EXTENT, 2 * large)]
    finally:
        vol.close()
    assert bs.view("v").read(0, 2 * large) == data  # the closing flush was a flush
