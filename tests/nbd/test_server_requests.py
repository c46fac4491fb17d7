"""The server core over a real Unix socket: every command, validation and errors."""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from nbd_helpers import Client, ServerThread

from loft.nbd import protocol as p
from loft.nbd.backends.base import Backend, BackendError, Buffer
from loft.nbd.backends.file import FileBackend
from loft.nbd.server import ExportRegistry
from loft.nbd.server._connection import OFFLOAD_WRITE
from loft.telemetry import NBD

C = p.Command
SIZE = 8 << 20
pytestmark = pytest.mark.timeout(60)


class CountingBackend(FileBackend):
    """A real file backend that counts flushes and can be told to fail or stall."""

    def __init__(self, path: Path, **kw: object) -> None:
        super().__init__(path, **kw)  # type: ignore[arg-type]
        self.flushes = 0
        self.closing_flushes = 0
        self.fail_reads_at: int | None = None
        self.slow_offsets: set[int] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.log: list[tuple[str, int]] = []

    def flush(self) -> None:
        self.flushes += 1
        super().flush()

    def flush_on_close(self) -> None:
        self.closing_flushes += 1
        super().flush_on_close()

    def is_resident(self, offset: int, length: int) -> bool:
        return offset not in self.slow_offsets

    def pread(self, offset: int, length: int) -> bytes:  # type: ignore[override]
        if offset in self.slow_offsets:
            self.gate.wait(10)
        if self.fail_reads_at is not None and offset <= self.fail_reads_at < offset + length:
            raise OSError(errno.EBADMSG, "injected")
        return bytes(super().pread(offset, length))

    def pread_nowait(self, offset: int, length: int) -> bytes:  # type: ignore[override]
        return self.pread(offset, length)

    def pwrite(self, offset: int, data: object, fua: bool = False) -> None:  # type: ignore[override]
        if offset in self.slow_offsets:
            self.gate.wait(10)
        self.log.append(("write", offset))
        super().pwrite(offset, data, fua)  # type: ignore[arg-type]

    def zero(self, offset: int, length: int, **kw: bool) -> None:  # type: ignore[override]
        if offset == 4096 * 7:
            raise BackendError("injected", p.Errno.ENOTSUP)
        super().zero(offset, length, **kw)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(SIZE)
    return img


@pytest.fixture
def backend(image: Path) -> Iterator[CountingBackend]:
    b = CountingBackend(image)
    yield b
    b.close()


@pytest.fixture
def server(tmp_path: Path, backend: CountingBackend, image: Path) -> Iterator[ServerThread]:
    reg = ExportRegistry()
    reg.add("disk", backend)
    ro = FileBackend(image, readonly=True)
    reg.add("disk@snap", ro)
    with ServerThread(reg, tmp_path / "run" / "nbd.sock") as st:
        yield st
    ro.close()


def connect(server: ServerThread, export: str = "disk", **kw: object) -> Client:
    c = Client(server.sock)
    c.handshake(export, **kw)  # type: ignore[arg-type]
    return c


@pytest.mark.parametrize("structured", [True, False])
def test_write_read_flush_round_trip(server: ServerThread, structured: bool) -> None:
    c = connect(server, structured=structured)
    assert c.size == SIZE
    data = os.urandom(100_000)
    assert c.error_of(c.request(C.WRITE, 12345, payload=data)) == 0
    assert c.read(12345, len(data)) == data
    assert c.read(0, 10) == bytes(10)
    assert c.error_of(c.request(C.FLUSH)) == 0
    assert c.error_of(c.request(C.WRITE, 0, payload=b"x", flags=p.CmdFlag.FUA)) == 0
    c.close()


def test_sparse_structured_read_uses_holes(server: ServerThread) -> None:
    c = connect(server)
    c.request(C.WRITE, 1 << 20, payload=b"\xaa" * 4096)
    replies = c.request(C.READ, 0, 2 << 20)
    kinds = [type(r).__name__ for r in replies]
    assert "OffsetHoleChunk" in kinds and "OffsetDataChunk" in kinds
    assert getattr(replies[-1], "done", False)
    covered = sum(
        r.length if isinstance(r, p.OffsetHoleChunk) else len(r.data)  # type: ignore[attr-defined]
        for r in replies
    )
    assert covered == 2 << 20
    data = c.read(0, 2 << 20)
    assert data[1 << 20 : (1 << 20) + 4096] == b"\xaa" * 4096
    assert data.count(0) == (2 << 20) - 4096
    # DF: exactly one content chunk.
    df = c.request(C.READ, 0, 2 << 20, flags=p.CmdFlag.DF)
    assert len(df) == 1 and isinstance(df[0], p.OffsetDataChunk)


def test_flags_advertised(server: ServerThread) -> None:
    tf = p.TransmissionFlag
    c = connect(server)
    for f in (
        tf.HAS_FLAGS,
        tf.SEND_FLUSH,
        tf.SEND_FUA,
        tf.SEND_TRIM,
        tf.SEND_WRITE_ZEROES,
        tf.SEND_FAST_ZERO,
        tf.SEND_DF,
        tf.CAN_MULTI_CONN,
        tf.SEND_CACHE,
    ):
        assert c.flags & f, f
    assert not c.flags & tf.READ_ONLY
    ro = connect(server, "disk@snap", structured=False)
    assert ro.flags & tf.READ_ONLY and not ro.flags & tf.SEND_DF


@pytest.mark.parametrize(
    ("command", "offset", "length", "flags", "want"),
    [
        (C.READ, SIZE - 10, 11, 0, p.Errno.EINVAL),
        (C.READ, 0, 0, 0, p.Errno.EINVAL),
        (C.READ, 0, p.MAX_PAYLOAD + 1, 0, p.Errno.EINVAL),
        (C.TRIM, SIZE, 1, 0, p.Errno.EINVAL),
        (C.WRITE_ZEROES, SIZE - 1, 2, 0, p.Errno.ENOSPC),
        (C.CACHE, SIZE, 4096, 0, p.Errno.EINVAL),
        (42, 0, 1, 0, p.Errno.EINVAL),
        (C.RESIZE, 0, 0, 0, p.Errno.EINVAL),
        (C.READ, 0, 1, 1 << 9, p.Errno.EINVAL),
        (C.READ, 0, 1, p.CmdFlag.REQ_ONE, p.Errno.EINVAL),
        (C.FLUSH, 0, 0, p.CmdFlag.NO_HOLE, p.Errno.EINVAL),
        (C.BLOCK_STATUS, 0, 4096, 0, p.Errno.EINVAL),  # no context selected
        (C.WRITE_ZEROES, 4096 * 7, 4096, p.CmdFlag.FAST_ZERO, p.Errno.ENOTSUP),
    ],
)
def test_invalid_requests_get_errors_and_connection_survives(
    server: ServerThread, command: int, offset: int, length: int, flags: int, want: int
) -> None:
    c = connect(server)
    assert c.error_of(c.request(command, offset, length, flags)) == want
    assert c.read(0, 4) == bytes(4)


def test_failed_write_still_consumes_payload(server: ServerThread) -> None:
    c = connect(server)
    r = c.request(C.WRITE, SIZE - 100, payload=b"z" * 1000)
    assert c.error_of(r) == p.Errno.ENOSPC
    r = c.request(C.WRITE, 0, payload=b"y" * 1000, flags=1 << 9)
    assert c.error_of(r) == p.Errno.EINVAL
    assert c.read(0, 4) == bytes(4)


def test_read_only_export_refuses_writes(server: ServerThread) -> None:
    c = connect(server, "disk@snap")
    assert c.error_of(c.request(C.WRITE, 0, payload=b"abc")) == p.Errno.EPERM
    assert c.error_of(c.request(C.WRITE_ZEROES, 0, 4096)) == p.Errno.EPERM
    assert c.error_of(c.request(C.TRIM, 0, 4096)) == p.Errno.EPERM
    assert c.read(0, 3) == bytes(3)


def test_backend_failure_is_eio_not_a_dead_server(
    server: ServerThread, backend: CountingBackend
) -> None:
    c = connect(server)
    backend.fail_reads_at = 5000
    with pytest.raises(OSError) as ei:
        c.read(4096, 4096)
    assert ei.value.errno == p.Errno.EIO  # EBADMSG never reaches the wire
    simple = connect(server, structured=False)
    assert simple.error_of(simple.request(C.READ, 4096, 4096)) == p.Errno.EIO
    assert c.read(0, 4096) == bytes(4096)


def test_zero_trim_cache_and_block_status(server: ServerThread) -> None:
    c = connect(server, contexts=("base:allocation",))
    c.request(C.WRITE, 0, payload=b"\x11" * (256 << 10))
    assert c.error_of(c.request(C.WRITE_ZEROES, 64 << 10, 64 << 10)) == 0
    assert c.read(64 << 10, 64 << 10) == bytes(64 << 10)
    nohole = c.request(C.WRITE_ZEROES, 0, 4096, flags=p.CmdFlag.NO_HOLE)
    assert c.error_of(nohole) == 0
    assert c.error_of(c.request(C.TRIM, 128 << 10, 64 << 10)) == 0
    assert c.error_of(c.request(C.CACHE, 0, 1 << 20)) == 0
    [bs] = c.request(C.BLOCK_STATUS, 0, 1 << 20)
    assert isinstance(bs, p.BlockStatusChunk) and bs.done and bs.context_id == 1
    assert sum(n for n, _ in bs.extents) <= 1 << 20
    assert bs.extents[0][1] & p.StateFlag.HOLE == 0  # written data first
    assert any(f & p.StateFlag.ZERO for _, f in bs.extents)
    [one] = c.request(C.BLOCK_STATUS, 0, 1 << 20, flags=p.CmdFlag.REQ_ONE)
    assert len(one.extents) == 1  # type: ignore[attr-defined]


def test_meta_context_negotiation(server: ServerThread) -> None:
    c = Client(server.sock)
    assert isinstance(c.next(), p.Greeting)
    c.send(p.ClientFlags())
    [err] = c.option(p.ListMetaContextOption("disk", ()))
    assert isinstance(err, p.OptionError) and err.error == p.OptionReplyType.ERR_INVALID
    c.option(p.StructuredReplyOption())
    listed = c.option(p.ListMetaContextOption("disk", ()))
    names = {r.name for r in listed if isinstance(r, p.OptionMetaContext)}
    assert names == {"base:allocation", "qemu:allocation-depth"}
    chosen = c.option(p.SetMetaContextOption("disk", ("base:", "x-unknown:thing")))
    assert [r.name for r in chosen if isinstance(r, p.OptionMetaContext)] == ["base:allocation"]
    [unk] = c.option(p.SetMetaContextOption("nope", ("base:allocation",)))
    assert isinstance(unk, p.OptionError) and unk.error == p.OptionReplyType.ERR_UNKNOWN
    c.option(p.GoOption("disk"))
    # The failed SET cleared the selection: BLOCK_STATUS is now invalid.
    assert c.error_of(c.request(C.BLOCK_STATUS, 0, 4096)) == p.Errno.EINVAL


def test_allocation_depth_context(server: ServerThread) -> None:
    c = connect(server, contexts=("base:allocation", "qemu:allocation-depth"))
    c.request(C.WRITE, 0, payload=b"\x01" * 4096)
    chunks = c.request(C.BLOCK_STATUS, 0, 1 << 20)
    assert {ch.context_id for ch in chunks} == {1, 2}  # type: ignore[attr-defined]
    depth = next(ch for ch in chunks if ch.context_id == 2)  # type: ignore[attr-defined]
    assert depth.extents[0][1] == 1 and depth.extents[-1][1] == 0
    assert sum(1 for ch in chunks if ch.done) == 1  # type: ignore[attr-defined]


def test_options_list_info_unknown(server: ServerThread) -> None:
    c = Client(server.sock)
    c.next()
    c.send(p.ClientFlags())
    listed = c.option(p.ListOption())
    assert {r.name for r in listed if isinstance(r, p.OptionServer)} == {"disk", "disk@snap"}
    [err] = c.option(p.InfoOption("missing"))
    assert isinstance(err, p.OptionError) and err.error == p.OptionReplyType.ERR_UNKNOWN
    info = c.option(p.InfoOption("", (p.InfoType.NAME, p.InfoType.DESCRIPTION)))
    assert p.OptionInfoName(p.Option.INFO, "disk") in info
    assert isinstance(info[0], p.OptionInfoExport)
    [unsup] = c.option(p.UnknownOption(77, b"abc"))
    assert isinstance(unsup, p.OptionError) and unsup.error == p.OptionReplyType.ERR_UNSUP
    assert unsup.option == 77
    [tls] = c.option(p.StartTLSOption())
    assert isinstance(tls, p.OptionError)  # no TLS configured on this server
    assert c.option(p.AbortOption()) == [p.OptionAck(p.Option.ABORT)]
    assert c.sock.recv(10) == b""


def test_export_name_unknown_disconnects(server: ServerThread) -> None:
    c = Client(server.sock)
    c.next()
    c.send(p.ClientFlags(no_zeroes=False), p.ExportNameOption("missing"))
    assert c.sock.recv(10) == b""
    c2 = Client(server.sock)
    c2.next()
    c2.send(p.ClientFlags(no_zeroes=False), p.ExportNameOption("disk"))
    reply = c2.next()
    assert isinstance(reply, p.ExportNameReply) and reply.size == SIZE


def test_out_of_order_replies_and_overlap_ordering(
    server: ServerThread, backend: CountingBackend
) -> None:
    c = connect(server)
    backend.slow_offsets = {0}
    backend.gate.clear()
    h_slow = next(c.handles)
    c.send(p.Request(C.WRITE, h_slow, 0, 4096, 0, b"A" * 4096))
    # Overlaps the stalled write: must wait behind it.
    h_overlap = next(c.handles)
    c.send(p.Request(C.WRITE, h_overlap, 2048, 4096, 0, b"B" * 4096))
    # Independent: answered while the first is still stalled.
    h_fast = next(c.handles)
    c.send(p.Request(C.READ, h_fast, 1 << 20, 4096))
    first = c.next()
    assert getattr(first, "handle", None) == h_fast
    backend.gate.set()
    got = {getattr(c.next(), "handle", None), getattr(c.next(), "handle", None)}
    assert got == {h_slow, h_overlap}
    assert [o for kind, o in backend.log if kind == "write"][-2:] == [0, 2048]
    assert c.read(0, 2048) == b"A" * 2048 and c.read(2048, 4096) == b"B" * 4096


def test_small_read_behind_an_unfinished_write_of_its_range_sees_it(
    server: ServerThread, backend: CountingBackend
) -> None:
    """The small-READ fast path is taken only when nothing is in flight: a READ of a
    range a stalled WRITE covers waits for it, one elsewhere does not."""
    c = connect(server)
    backend.slow_offsets = {0}
    backend.gate.clear()
    h_write, h_behind, h_free = next(c.handles), next(c.handles), next(c.handles)
    c.send(
        p.Request(C.WRITE, h_write, 0, 4096, 0, b"W" * 4096),
        p.Request(C.READ, h_behind, 1024, 1024),
        p.Request(C.READ, h_free, 8192, 4096),
    )
    first = c.next()
    assert getattr(first, "handle", None) == h_free
    backend.gate.set()
    replies = {getattr(e, "handle", None): e for e in (c.next(), c.next())}
    assert set(replies) == {h_write, h_behind}
    behind = replies[h_behind]
    assert isinstance(behind, p.OffsetDataChunk) and bytes(behind.data) == b"W" * 1024


def test_small_reads_answered_inline_are_timed_and_counted(server: ServerThread) -> None:
    """Small READs answered on the event loop are counted a batch at a time: every one
    is in the read latency count, and its bytes in the bytes read."""
    c = connect(server)
    c.read(0, 4096)  # the connection is warm: the counts below are of these reads only

    def totals() -> tuple[int, float, int]:
        report = NBD.report()
        [read] = [op for op in report.latency if op.op == "read"]
        [moved] = [b.bytes for b in report.bytes if b.direction == "read"]
        return read.count, read.sum, moved

    count, seconds, moved = totals()
    handles = [next(c.handles) for _ in range(20)]
    c.send(*(p.Request(C.READ, h, i * 4096, 4096) for i, h in enumerate(handles)))
    assert {getattr(c.next(), "handle", None) for _ in handles} == set(handles)
    assert c.read(SIZE - 512, 512) == bytes(512)
    count2, seconds2, moved2 = totals()
    assert count2 - count == 21 and moved2 - moved == 20 * 4096 + 512
    assert seconds2 > seconds
    c.close()


def test_disc_finishes_in_flight_and_flushes(
    server: ServerThread, backend: CountingBackend
) -> None:
    c = connect(server)
    c.request(C.WRITE, 0, payload=b"q" * 4096)
    [reply] = c.request(C.FLUSH)  # the client's own: not the disconnect's
    assert isinstance(reply, p.SimpleReply) and reply.error == 0
    c.request(C.WRITE, 0, payload=b"r" * 4096)
    before = backend.flushes
    assert backend.closing_flushes == 0
    c.send(p.Request(C.DISC, next(c.handles)))
    assert c.sock.recv(10) == b""
    deadline = time.monotonic() + 5
    while backend.flushes == before and time.monotonic() < deadline:
        time.sleep(0.01)
    # The disconnect's flush is flush_on_close (a volume's write-behind tells it apart).
    assert backend.flushes == before + 1 and backend.closing_flushes == 1


def test_partial_write_at_drop_is_discarded(server: ServerThread, image: Path) -> None:
    c = connect(server)
    wire = c.conn.send(p.Request(C.WRITE, 1, 8192, 4096, 0, b"P" * 4096))
    c.sock.sendall(wire[:1000])
    c.close()
    time.sleep(0.2)
    c2 = connect(server)
    assert c2.read(8192, 4096) == bytes(4096)


class ColdBackend(FileBackend):
    """Claims every range resident but never has it in memory (RWF_NOWAIT misses)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.nowait_calls = 0

    def pread_nowait(self, offset: int, length: int) -> None:  # type: ignore[override]
        self.nowait_calls += 1
        return None


def test_inline_read_that_would_block_moves_to_a_worker(tmp_path: Path, image: Path) -> None:
    with open(image, "r+b") as f:
        f.write(b"cold" * 1024)
    backend = ColdBackend(image)
    reg = ExportRegistry()
    reg.add("disk", backend)
    with ServerThread(reg, tmp_path / "cold" / "nbd.sock") as st:
        c = Client(st.sock)
        c.handshake("disk")
        assert c.read(0, 4096) == b"cold" * 1024
        assert c.read(0, 1 << 20)[:8] == b"coldcold"  # sparse path too
        assert backend.nowait_calls >= 2
    backend.close()


class OneCallBackend(FileBackend):
    """Offers read_resident, which has nothing at 4096 and fails at 8192."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.calls: list[int] = []
        self.asked_resident = 0
        self.read_resident = self._read_resident

    def _read_resident(self, offset: int, length: int) -> bytes | None:
        self.calls.append(offset)
        if offset == 4096:
            return None
        if offset == 8192:
            raise OSError(errno.EIO, "injected")
        return bytes(self.pread(offset, length))

    def is_resident(self, offset: int, length: int) -> bool:
        self.asked_resident += 1
        return True


def test_small_reads_use_read_resident_alone(tmp_path: Path, image: Path) -> None:
    """With read_resident, a small READ is that one call on the event loop; None or an
    error from it sends the READ to a worker thread, whose read answers it."""
    data = os.urandom(3 * 4096)
    with open(image, "r+b") as f:
        f.write(data)
    backend = OneCallBackend(image)
    reg = ExportRegistry()
    reg.add("disk", backend)
    with ServerThread(reg, tmp_path / "one" / "nbd.sock") as st:
        c = connect(st)
        for offset in (0, 4096, 8192):
            assert c.read(offset, 4096) == data[offset : offset + 4096]
        c.close()
    assert backend.calls == [0, 4096, 8192] and backend.asked_resident == 0
    backend.close()


def test_pipelined_small_reads_are_each_answered_once(tmp_path: Path, image: Path) -> None:
    """A burst of small READs sent at once (more than one batch of replies, a WRITE
    among them, and READs read_resident has nothing for or fails on) gets every
    reply right, each READ asking read_resident once; after the WRITE, its new data."""
    data = bytearray(os.urandom(64 * 4096))
    with open(image, "r+b") as f:
        f.write(data)
    backend = OneCallBackend(image)
    reg = ExportRegistry()
    reg.add("disk", backend)
    offsets = [i * 4096 for i in reversed(range(64))] + [4096, 8192, 12288]
    with ServerThread(reg, tmp_path / "burst" / "nbd.sock") as st:
        c = connect(st)
        reads = {next(c.handles): off for off in offsets[:50]}
        hw = next(c.handles)
        more = {next(c.handles): off for off in offsets[50:]}
        c.send(
            *[p.Request(C.READ, h, off, 4096) for h, off in reads.items()],
            p.Request(C.WRITE, hw, 12288, 4096, 0, b"w" * 4096),
            *[p.Request(C.READ, h, off, 4096) for h, off in more.items()],
        )
        got: dict[int, bytes] = {}
        while len(got) < len(offsets) + 1:
            ev = c.next()
            assert isinstance(ev, p.OffsetDataChunk | p.SimpleReply), ev
            if isinstance(ev, p.SimpleReply):
                assert ev.error == 0
            got[ev.handle] = bytes(ev.data) if isinstance(ev, p.OffsetDataChunk) else b""
        c.close()
    for h, off in reads.items():
        assert got[h] == data[off : off + 4096], off
    data[12288 : 12288 + 4096] = b"w" * 4096
    for h, off in more.items():
        assert got[h] == data[off : off + 4096], off
    # Never asked twice for one READ; asked for each, in order, up to the first it
    # failed on (8192, the 62nd); what came after took the general path or a burst.
    assert not Counter(backend.calls) - Counter(offsets)
    assert backend.calls[:62] == offsets[:62]
    backend.close()


class BrokenResidentBackend(FileBackend):
    """read_resident hands back something that is not bytes at offset 0 (a bug)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.read_resident = self._read_resident

    def _read_resident(self, offset: int, length: int) -> object:
        return 42 if offset == 0 else bytes(self.pread(offset, length))


def test_a_bug_in_a_burst_of_reads_drops_that_client_only(
    tmp_path: Path, image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Caught and logged as the server's bug (not left to the event loop), the client
    dropped, the others served."""
    caplog.set_level(logging.ERROR, logger="loft.nbd")
    backend = BrokenResidentBackend(image)
    reg = ExportRegistry()
    reg.add("disk", backend)
    with ServerThread(reg, tmp_path / "bug" / "nbd.sock") as st:
        c = connect(st)
        c.send(*[p.Request(C.READ, next(c.handles), off, 4096) for off in (4096, 0, 8192)])
        c.sock.settimeout(10)
        got = b""
        while chunk := c.sock.recv(1 << 16):  # whatever replies came, then the drop
            got += chunk
        assert len(got) < 3 * 4096
        other = connect(st)
        assert other.read(4096, 4096) == image.read_bytes()[4096:8192]
        other.close()
    backend.close()
    assert "nbd.internal_error" in caplog.text and "TypeError" in caplog.text


def test_large_write_then_pipelined_overlapping_read(server: ServerThread) -> None:
    """A READ of a range sent right behind a big WRITE to it (without waiting for the
    WRITE's reply, the payload arriving in pieces) must see the written data."""
    c = connect(server)
    data = os.urandom(2 << 20)
    hw, hr = next(c.handles), next(c.handles)
    c.send(
        p.Request(C.WRITE, hw, 1 << 20, len(data), 0, data),
        p.Request(C.READ, hr, (1 << 20) + 4096, 8192, p.CmdFlag.DF),
    )
    got: dict[int, object] = {}
    while len(got) < 2:
        ev = c.next()
        got[getattr(ev, "handle", -1)] = ev
    assert isinstance(got[hw], p.SimpleReply) and got[hw].error == 0
    chunk = got[hr]
    assert isinstance(chunk, p.OffsetDataChunk)
    assert bytes(chunk.data) == data[4096 : 4096 + 8192]


class KeepingBackend(Backend):
    """Keeps every write buffer it is given, as is (copies_writes stays False)."""

    def __init__(self) -> None:
        self.size = 8 << 20
        self.kept: list[tuple[object, bytes]] = []

    def pread(self, offset: int, length: int) -> bytes:
        return bytes(length)

    def pwrite(self, offset: int, data: object, fua: bool = False) -> None:  # type: ignore[override]
        self.kept.append((data, bytes(data)))  # type: ignore[call-overload]


@pytest.mark.parametrize("copies", [False, True])
def test_write_buffers_are_reused_only_when_the_backend_copies(
    tmp_path: Path, copies: bool
) -> None:
    backend = KeepingBackend()
    backend.copies_writes = copies
    reg = ExportRegistry()
    reg.add("disk", backend)
    with ServerThread(reg, tmp_path / "run" / "nbd.sock") as st:
        c = connect(st)
        for i in range(6):
            data = bytes([i]) * (1 << 20)
            [reply] = c.request(C.WRITE, i << 20, payload=data)
            assert isinstance(reply, p.SimpleReply) and reply.error == 0
        c.close()
    buffers = [id(buf) for buf, _ in backend.kept]
    if copies:  # the server reused payload buffers once the backend was done with them
        assert len(set(buffers)) < len(buffers)
    else:  # every buffer the backend kept still holds what was written into it
        assert all(bytes(buf) == seen for buf, seen in backend.kept)  # type: ignore[call-overload]
        assert len(set(buffers)) == len(buffers)


class ThreadNotingBackend(KeepingBackend):
    """Notes the thread each write runs on."""

    copies_writes = True

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[tuple[int, int]] = []

    def pwrite(self, offset: int, data: object, fua: bool = False) -> None:  # type: ignore[override]
        self.threads.append((len(data), threading.get_ident()))  # type: ignore[arg-type]


class FailingWriteBackend(FileBackend):
    """A real file backend whose WRITEs at chosen offsets fail with ENOSPC."""

    def __init__(self, path: Path, fail_at: set[int]) -> None:
        super().__init__(path)
        self.fail_at = fail_at

    def pwrite(self, offset: int, data: Buffer, fua: bool = False) -> None:
        if offset in self.fail_at:
            raise OSError(errno.ENOSPC, "injected")
        super().pwrite(offset, data, fua)


def test_pipelined_large_writes_are_each_answered_once_in_effect_order(
    tmp_path: Path, image: Path
) -> None:
    """Twenty large WRITEs sent at once (through the connection's lane): rewrites of one
    range take effect in arrival order, a failing WRITE gets its errno and changes
    nothing, every other gets 0, each exactly once; the connection then goes on."""
    backend = FailingWriteBackend(image, {3 << 20})
    reg = ExportRegistry()
    reg.add("disk", backend)
    mib = 1 << 20
    writes = [(i % 6 * mib, bytes([i + 1]) * mib) for i in range(20)]
    writes += [(3 << 20, b"x" * OFFLOAD_WRITE), (6 << 20, b"y" * OFFLOAD_WRITE)]
    with ServerThread(reg, tmp_path / "lane" / "nbd.sock") as st:
        c = connect(st)
        handles = [next(c.handles) for _ in writes]
        c.send(
            *[
                p.Request(C.WRITE, h, off, len(d), 0, d)
                for h, (off, d) in zip(handles, writes, strict=True)
            ]
        )
        errors: dict[int, int] = {}
        while len(errors) < len(writes):
            ev = c.next()
            assert isinstance(ev, p.SimpleReply) and ev.handle not in errors, ev
            errors[ev.handle] = ev.error
        got = c.read(0, 7 * mib)
        c.close()
    expected = bytearray(7 * mib)
    for h, (off, d) in zip(handles, writes, strict=True):
        if off == 3 << 20:
            assert errors[h] == errno.ENOSPC
        else:
            assert errors[h] == 0
            expected[off : off + len(d)] = d
    assert got == bytes(expected)
    backend.close()


class MeetingBackend(FileBackend):
    """Large WRITEs wait for each other at a barrier; ranges from ``cold`` on are not
    resident (as a volume's extents that need a fetch are not)."""

    def __init__(self, path: Path, cold: int, parties: int) -> None:
        super().__init__(path)
        self.cold = cold
        self.barrier = threading.Barrier(parties, timeout=5)

    def is_resident(self, offset: int, length: int) -> bool:
        return offset < self.cold

    def pwrite(self, offset: int, data: Buffer, fua: bool = False) -> None:
        if len(memoryview(data)) >= OFFLOAD_WRITE:
            self.barrier.wait()
        super().pwrite(offset, data, fua)


@pytest.mark.parametrize("kind", ["not resident", "FUA"])
def test_large_writes_that_wait_run_side_by_side(tmp_path: Path, image: Path, kind: str) -> None:
    """A connection's large WRITEs that must wait (for a fetch, or FUA's sync) do not
    queue behind each other in its lane: two of them are under way at once."""
    cold = 4 << 20 if kind == "not resident" else SIZE
    flags = p.CmdFlag.FUA if kind == "FUA" else 0
    backend = MeetingBackend(image, cold, 2)
    reg = ExportRegistry()
    reg.add("disk", backend)
    with ServerThread(reg, tmp_path / "meet" / "nbd.sock") as st:
        c = connect(st)
        h1, h2 = next(c.handles), next(c.handles)
        c.send(
            p.Request(C.WRITE, h1, 4 << 20, 1 << 20, flags, b"a" * (1 << 20)),
            p.Request(C.WRITE, h2, 6 << 20, 1 << 20, flags, b"b" * (1 << 20)),
        )
        replies = [c.next(), c.next()]
        c.close()
    got = {r.handle: r.error for r in replies if isinstance(r, p.SimpleReply)}
    assert got == {h1: 0, h2: 0}
    backend.close()


def test_large_writes_run_on_a_worker_and_smaller_ones_inline(tmp_path: Path) -> None:
    """A resident WRITE of OFFLOAD_WRITE bytes or more leaves the event loop (which goes on
    receiving the next payload meanwhile); anything smaller is written on the loop."""
    backend = ThreadNotingBackend()
    reg = ExportRegistry()
    reg.add("disk", backend)
    sizes = [4096, OFFLOAD_WRITE - 4096, OFFLOAD_WRITE, 1 << 20, 8192]
    with ServerThread(reg, tmp_path / "run" / "nbd.sock") as st:
        c = connect(st)
        for n in sizes:
            [reply] = c.request(C.WRITE, 0, payload=bytes(n))
            assert isinstance(reply, p.SimpleReply) and reply.error == 0
        c.close()
    loop = {t for n, t in backend.threads if n < OFFLOAD_WRITE}
    workers = {t for n, t in backend.threads if n >= OFFLOAD_WRITE}
    assert [n for n, _ in backend.threads] == sizes
    assert len(loop) == 1 and loop.isdisjoint(workers)
