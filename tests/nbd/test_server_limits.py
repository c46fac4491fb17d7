"""What bounds the server's memory: byte budgets for requests and replies in flight (per
connection and per server), caps on connections, idle connections without buffers.

Memory is measured with tracemalloc (every Python allocation of the process, the
server's threads included), so the numbers are exact and independent of what the heap
kept from earlier tests. Reads go to worker threads (``WorkerBackend``), where nothing
but the budgets stops a client that sends READs and never reads the replies.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nbd_helpers import Client, ServerThread
from pki import PKI

from loft.nbd import protocol as p
from loft.nbd.backends.file import FileBackend
from loft.nbd.server import (
    DEFAULT_MAX_CONNECTION_BYTES,
    GUARANTEED_BYTES,
    Authorizer,
    ExportRegistry,
    make_server_ssl_context,
)

C = p.Command
MIB = 1 << 20
SIZE = 64 * MIB
pytestmark = pytest.mark.timeout(120)


class WorkerBackend(FileBackend):
    """A file served from worker threads only (as a volume's extents not fetched yet)."""

    def __init__(self, path: Path, write_delay: float = 0.0) -> None:
        super().__init__(path)
        self.write_delay = write_delay

    def is_resident(self, offset: int, length: int) -> bool:
        return False

    def pwrite(self, offset: int, data: object, fua: bool = False) -> None:  # type: ignore[override]
        time.sleep(self.write_delay)
        super().pwrite(offset, data, fua)  # type: ignore[arg-type]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        for i in range(SIZE // MIB):
            f.write(bytes([i]) * MIB)
    return img


@contextlib.contextmanager
def serving(
    tmp_path: Path, image: Path, write_delay: float = 0.0, **kw: object
) -> Iterator[ServerThread]:
    backend = WorkerBackend(image, write_delay)
    registry = ExportRegistry()
    registry.add("disk", backend)
    try:
        with ServerThread(registry, tmp_path / "run" / "nbd.sock", **kw) as st:
            yield st
    finally:
        backend.close()


@contextlib.contextmanager
def traced() -> Iterator[Callable[[], int]]:
    """The process's peak Python memory above where it started, while in the block."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield lambda: tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def quiet(seconds: float = 0.3, limit: float = 20.0) -> None:
    """Wait until traced memory stops changing (the server has done what it will)."""
    deadline = time.monotonic() + limit
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = tracemalloc.get_traced_memory()[0]
        if abs(now - last) > 64 * 1024:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return
        time.sleep(0.05)


def wait_for(cond: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def connect(server: ServerThread, structured: bool = False) -> Client:
    c = Client(server.sock)
    c.handshake("disk", structured=structured)
    return c


def send_reads(c: Client, n: int, length: int) -> list[int]:
    """Send ``n`` READs at once, without reading a reply; returns their handles."""
    reqs = [p.Request(C.READ, next(c.handles), (i * length) % SIZE, length) for i in range(n)]
    c.sock.sendall(b"".join(c.conn.send(r) for r in reqs))
    return [r.handle for r in reqs]


def read_replies(c: Client, handles: list[int], length: int) -> None:
    """Read the replies to ``handles`` (in any order, simple or structured) and check
    that each carries ``length`` bytes."""
    got = dict.fromkeys(handles, 0)
    c.sock.settimeout(30)
    while got:
        e = c.next()
        if isinstance(e, p.SimpleReply):
            assert e.error == 0 and e.data is not None, e
            got[e.handle] += len(e.data)
        else:
            assert isinstance(e, p.OffsetDataChunk), e
            got[e.handle] += len(e.data)
        if isinstance(e, p.SimpleReply) or e.done:
            assert got.pop(e.handle) == length


def check_honest(server: ServerThread, tag: int) -> None:
    """Another client writes, reads back, and is answered promptly."""
    h = connect(server)
    t = time.monotonic()
    data = bytes([tag]) * 4096
    assert h.error_of(h.request(C.WRITE, 8192 * tag, payload=data)) == 0
    assert h.read(8192 * tag, 4096) == data
    assert h.read(0, 4096) == bytes([0]) * 4096
    assert time.monotonic() - t < 5
    h.close()


def sweep_twice(server: ServerThread) -> None:
    """Run the server's sweep of idle connections twice (on its loop), as 10 s would."""

    async def sweep() -> None:
        assert server.server is not None
        server.server._sweep()

    server.call(sweep())
    server.call(sweep())


def all_released(server: ServerThread) -> None:
    """Once every client is gone, nothing is left charged or waiting."""
    assert server.server is not None
    wait_for(lambda: not server.server.connections())  # type: ignore[union-attr]
    wait_for(lambda: server.server.budget.in_flight == 0)  # type: ignore[union-attr]
    assert server.server.budget.waiting == 0


@pytest.mark.parametrize("structured", [False, True])
def test_reader_that_reads_no_replies_is_bounded_and_others_are_served(
    tmp_path: Path, image: Path, structured: bool
) -> None:
    """64 READs of 4 MiB and no reply read: the server stops at the connection's budget
    (64 MiB) instead of holding all 256 MiB of replies, and other clients go on."""
    with serving(tmp_path, image) as server, traced() as peak:
        greedy = connect(server, structured)
        handles = send_reads(greedy, 64, 4 * MIB)
        quiet()
        assert peak() < DEFAULT_MAX_CONNECTION_BYTES + 16 * MIB, peak()
        check_honest(server, 1)
        # Reading the replies lets the server go on to the end.
        read_replies(greedy, handles, 4 * MIB)
        greedy.close()
        all_released(server)


def test_writer_whose_writes_queue_is_bounded(tmp_path: Path, image: Path) -> None:
    """WRITEs of 4 MiB faster than a slow disk takes them: the payloads wait in the
    client (the server reads no further) instead of in the server's memory."""
    with serving(tmp_path, image, write_delay=0.2) as server:
        c = connect(server)
        wire = b"".join(
            c.conn.send(
                p.Request(C.WRITE, i + 1, i * 4 * MIB % SIZE, 4 * MIB, 0, bytes([i]) * 4 * MIB)
            )
            for i in range(48)
        )
        with traced() as peak:
            sender = threading.Thread(target=c.sock.sendall, args=(wire,))
            sender.start()
            sender.join(60)
            for _ in range(48):
                e = c.next()
                assert isinstance(e, p.SimpleReply) and e.error == 0
            assert peak() < DEFAULT_MAX_CONNECTION_BYTES + 16 * MIB, peak()  # was ~190 MiB
        assert c.read(47 * 4 * MIB % SIZE, 4096) == bytes([47]) * 4096
        c.close()
        all_released(server)


def test_trickled_write_payloads_share_the_server_budget(tmp_path: Path, image: Path) -> None:
    """16 clients announce a 4 MiB WRITE and send 64 KiB of it: the server allocates
    payloads for its budget's worth (16 MiB) and holds the others' headers; as admitted
    writes finish, the held ones are woken and admitted in turn."""
    budget = 16 * MIB
    with serving(tmp_path, image, max_bytes_in_flight=budget) as server:
        clients = [connect(server) for _ in range(16)]
        wires = [
            c.conn.send(p.Request(C.WRITE, 1, i * 4 * MIB, 4 * MIB, 0, bytes([i + 1]) * 4 * MIB))
            for i, c in enumerate(clients)
        ]
        with traced() as peak:
            for c, wire in zip(clients, wires, strict=True):
                c.sock.sendall(wire[: 28 + 65536])
            assert server.server is not None
            wait_for(
                lambda: sum(c._deferred is not None for c in server.server._connections) == 12  # type: ignore[union-attr]
            )
            quiet()
            assert peak() < budget + 8 * MIB, peak()  # was 16 payloads: 64 MiB
        wires = [w[28 + 65536 :] for w in wires]
        senders = [
            threading.Thread(target=c.sock.sendall, args=(w,))
            for c, w in zip(clients, wires, strict=True)
        ]
        for t in senders:
            t.start()
        for c in clients:
            e = c.next()
            assert isinstance(e, p.SimpleReply) and e.error == 0, e
        for t in senders:
            t.join(30)
        check = connect(server)
        for i in range(16):
            assert check.read(i * 4 * MIB + 4 * MIB - 1, 1) == bytes([i + 1])
        for c in [*clients, check]:
            c.close()
        all_released(server)


def test_readers_that_read_no_replies_share_the_server_budget(tmp_path: Path, image: Path) -> None:
    """Six such readers with a 24 MiB server budget: together they hold no more than
    the budget. Small requests of other clients are still served (each connection may
    hold GUARANTEED_BYTES); a large one waits until the greedy clients let go."""
    budget = 24 * MIB
    with (
        serving(
            tmp_path, image, max_bytes_in_flight=budget, max_connection_bytes=16 * MIB
        ) as server,
        traced() as peak,
    ):
        assert server.server is not None
        greedy = [connect(server) for _ in range(6)]
        for c in greedy:
            send_reads(c, 16, 4 * MIB)
        quiet()
        assert server.server.budget.in_flight <= budget + 4 * MIB
        assert peak() < budget + 16 * MIB, peak()  # was 6 x 64 MiB
        h = connect(server)
        assert h.read(4096, GUARANTEED_BYTES // 2) == bytes([0]) * (GUARANTEED_BYTES // 2)
        big: dict[str, bytes] = {}
        waiter = threading.Thread(target=lambda: big.setdefault("data", h.read(8 * MIB, 4 * MIB)))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive()  # no room for 4 MiB while the greedy hold everything
        for c in greedy:
            c.close()
        waiter.join(20)
        assert big["data"] == b"".join(bytes([8 + i]) * MIB for i in range(4))
        h.close()
        all_released(server)


@pytest.mark.parametrize("worker", [True, False])
def test_request_larger_than_every_budget_is_served(
    tmp_path: Path, image: Path, worker: bool
) -> None:
    """Budgets far below one 32 MiB request: it still goes through, one at a time."""
    backend: FileBackend = WorkerBackend(image) if worker else FileBackend(image)
    registry = ExportRegistry()
    registry.add("disk", backend)
    kw = {"max_bytes_in_flight": 2 * MIB, "max_connection_bytes": 1 * MIB}
    with ServerThread(registry, tmp_path / "run" / "nbd.sock", **kw) as server:
        c = connect(server)
        data = bytes(range(256)) * (128 * 1024)  # 32 MiB
        assert c.error_of(c.request(C.WRITE, 0, payload=data)) == 0
        handles = send_reads(c, 3, 32 * MIB)
        read_replies(c, handles, 32 * MIB)
        assert c.read(0, 32 * MIB) == data
        c.close()
        all_released(server)
    backend.close()


def test_reader_over_tls_is_bounded_and_resumes(tmp_path: Path, image: Path) -> None:
    """Under TLS the replies queue in the TCP transport below it, which reports its drain
    to the TLS layer only: the budget holds, and reading resumes once the client reads."""
    (tmp_path / "pki").mkdir(mode=0o700)
    pki = PKI(tmp_path / "pki")
    certs = pki.client_dir("alice")
    server_ctx = make_server_ssl_context(
        tmp_path / "pki" / "server-cert.pem",
        tmp_path / "pki" / "server-key.pem",
        tmp_path / "pki" / "ca-cert.pem",
    )
    client_ctx = ssl.create_default_context(cafile=str(certs / "ca-cert.pem"))
    client_ctx.load_cert_chain(certs / "client-cert.pem", certs / "client-key.pem")
    kw = {
        "listen_tcp": True,
        "ssl_context": server_ctx,
        "authorizer": Authorizer({"alice": ("disk",)}),
    }
    with serving(tmp_path, image, **kw) as server, traced() as peak:
        assert server.tcp is not None
        c = Client(sock=socket.create_connection(server.tcp, timeout=30))
        c.handshake("disk", structured=True, tls=client_ctx)
        handles = send_reads(c, 48, 4 * MIB)
        quiet()
        # Encrypted copies count too: the TLS layer copies each reply once more.
        assert peak() < 2 * DEFAULT_MAX_CONNECTION_BYTES + 16 * MIB, peak()  # was 2 x 192 MiB
        read_replies(c, handles, 4 * MIB)
        c.close()
        all_released(server)


def test_reader_of_many_small_replies_is_bounded(tmp_path: Path, image: Path) -> None:
    """100,000 READs of 4 KiB and no reply read: the transport's high-water mark and
    MAX_INFLIGHT stop it (small requests are never admitted one by one)."""
    header = struct.Struct(">IHHQQI")
    wire = b"".join(
        header.pack(0x25609513, 0, C.READ, i + 1, (i * 4096) % SIZE, 4096) for i in range(100_000)
    )
    with serving(tmp_path, image) as server:
        greedy = connect(server)
        greedy.sock.settimeout(0.5)
        with traced() as peak:
            with contextlib.suppress(TimeoutError):
                greedy.sock.sendall(wire)  # the server stops reading long before the end
            quiet()
            assert peak() < 16 * MIB, peak()
        check_honest(server, 3)
        greedy.close()
        all_released(server)


def test_handshakes_holding_partial_options_are_bounded(tmp_path: Path, image: Path) -> None:
    """Clients that send half of a 64 KiB option and wait: each holds a buffer for the
    option (no more), a sweep leaves it alone, and the option completes later."""
    with serving(tmp_path, image) as server:
        assert server.server is not None
        clients, wires = [], []
        for _ in range(100):
            c = Client(server.sock)
            assert isinstance(c.next(), p.Greeting)
            c.send(p.ClientFlags())
            clients.append(c)
            wires.append(c.conn.send(p.UnknownOption(4242, bytes(p.MAX_OPTION_LENGTH))))
        with traced() as peak:
            for c, wire in zip(clients, wires, strict=True):
                c.sock.sendall(wire[: len(wire) // 2])
            wait_for(lambda: sum(c._proto.buffered for c in server.server._connections) > 0)  # type: ignore[union-attr]
            quiet()
            sweep_twice(server)
            assert peak() < 100 * 96 * 1024, peak()
        for c, wire in zip(clients, wires, strict=True):
            c.sock.sendall(wire[len(wire) // 2 :])
            e = c.next()
            assert isinstance(e, p.OptionError) and e.error == p.OptionReplyType.ERR_UNSUP
            c.close()
        all_released(server)


def test_idle_connections_hold_no_buffers(tmp_path: Path, image: Path) -> None:
    """300 connections in transmission and 50 in the handshake: after a sweep none holds
    a receive buffer, and each costs a few KiB (each used to cost 256 KiB)."""
    with serving(tmp_path, image, max_handshakes=100) as server:
        assert server.server is not None
        with traced() as peak:
            base = tracemalloc.get_traced_memory()[0]
            idle = [connect(server) for _ in range(300)]
            waiting = []
            for _ in range(50):
                w = Client(server.sock)
                assert isinstance(w.next(), p.Greeting)
                waiting.append(w)
            wait_for(lambda: len(server.server.connections()) == 350)  # type: ignore[union-attr]
            for c in idle + waiting:
                c.conn.trim()  # the client ends are measured too: keep them as lean
            sweep_twice(server)
            conns = list(server.server._connections)
            assert all(c._proto.buffered == 0 for c in conns)
            per_connection = (tracemalloc.get_traced_memory()[0] - base) / 350
            assert per_connection < 16 * 1024, per_connection  # both ends of each socket
            assert peak() < 350 * 64 * 1024
        # They still work: a request allocates a buffer again.
        assert idle[7].read(MIB, 4096) == bytes([1]) * 4096
        waiting[3].send(p.ClientFlags())
        assert isinstance(waiting[3].option(p.GoOption("disk"))[-1], p.OptionAck)
        for c in idle + waiting:
            c.close()
        all_released(server)


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("nbd.refuse")]


def _refused(sock_path: Path) -> bool:
    """Connect; True when the server closed at once without a greeting."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(sock_path))
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    finally:
        s.close()


def test_connection_cap_refuses_with_a_log_line_and_frees_on_close(
    tmp_path: Path, image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="loft.nbd")
    with serving(tmp_path, image, max_connections=4) as server:
        clients = [connect(server) for _ in range(3)]
        pending = Client(server.sock)  # the fourth, still in the handshake
        assert isinstance(pending.next(), p.Greeting)
        assert _refused(server.sock)
        [line] = _refusals(caplog)
        assert "reason=max_connections limit=4" in line
        # The others are not disturbed.
        assert clients[0].read(0, 4096) == bytes(4096)
        pending.send(p.ClientFlags())
        assert isinstance(pending.option(p.GoOption("disk"))[-1], p.OptionAck)
        # A closed connection frees its place.
        clients.pop().close()
        wait_for(lambda: len(server.server.connections()) == 3)  # type: ignore[union-attr]
        later = connect(server)
        assert later.read(MIB, 4096) == bytes([1]) * 4096
        for c in [*clients, pending, later]:
            c.close()
        all_released(server)


def test_handshake_cap_counts_only_unfinished_handshakes(
    tmp_path: Path, image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="loft.nbd")
    with serving(tmp_path, image, max_handshakes=2) as server:
        first, second = Client(server.sock), Client(server.sock)
        for c in (first, second):
            assert isinstance(c.next(), p.Greeting)
        assert _refused(server.sock)
        assert "reason=max_handshakes limit=2" in _refusals(caplog)[0]
        # One finishes its handshake: a place in the handshake is free again.
        first.send(p.ClientFlags())
        assert isinstance(first.option(p.GoOption("disk"))[-1], p.OptionAck)
        third = connect(server)
        # One gives up: its place is free too.
        second.close()
        wait_for(lambda: len(server.server.connections()) == 2)  # type: ignore[union-attr]
        fourth = connect(server)
        for c in (first, third, fourth):
            assert c.read(0, 512) == bytes(512)
            c.close()
        all_released(server)


def test_refusals_are_logged_at_most_once_a_second(
    tmp_path: Path, image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="loft.nbd")
    with serving(tmp_path, image, max_connections=1) as server:
        holder = connect(server)
        t = time.monotonic()
        for _ in range(300):
            assert _refused(server.sock)
        elapsed = time.monotonic() - t
        time.sleep(1.2)  # the line counting the unlogged ones
        lines = _refusals(caplog)
        assert len(lines) <= elapsed + 2, lines
        counted = sum(
            1 + int(re.search(r"not_logged=(\d+)", x).group(1)) - ("peer=*" in x) for x in lines
        )  # type: ignore[union-attr]
        assert counted == 300, lines
        assert server.server is not None and server.server.refused == 300
        assert holder.read(0, 512) == bytes(512)
        holder.close()


def test_budget_is_released_when_clients_vanish(tmp_path: Path, image: Path) -> None:
    """Clients that drop with replies queued, READs deferred, or a payload half sent."""
    with serving(tmp_path, image, max_bytes_in_flight=24 * MIB) as server:
        assert server.server is not None
        readers = [connect(server) for _ in range(3)]
        for c in readers:
            send_reads(c, 32, 4 * MIB)
        writer = connect(server)
        wire = writer.conn.send(p.Request(C.WRITE, 1, 0, 8 * MIB, 0, bytes(8 * MIB)))
        writer.sock.settimeout(0.5)
        with contextlib.suppress(TimeoutError):
            writer.sock.sendall(wire[: 4 * MIB])
        wait_for(lambda: server.server.budget.in_flight > 0)  # type: ignore[union-attr]
        for c in [*readers, writer]:
            c.close()
        all_released(server)
        check_honest(server, 2)


def test_cli_limit_defaults_are_the_servers() -> None:
    from click.testing import CliRunner

    from loft.cli.group import main
    from loft.nbd.server import DEFAULT_MAX_BYTES, DEFAULT_MAX_CONNECTIONS

    for command in (["disk", "serve-file"], ["disk", "serve"]):
        out = CliRunner().invoke(main, [*command, "--help"], terminal_width=200).output
        assert f"[default: {DEFAULT_MAX_CONNECTIONS};" in out
        assert f"[default: {DEFAULT_MAX_BYTES >> 20}M]" in out
