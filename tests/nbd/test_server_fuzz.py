"""Socket-level fuzzing: random and mutated handshakes and requests against a live server.

The server must never crash, never stall other connections, and answer every bad
request with one of the spec's errors -- or drop that one connection.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from nbd_helpers import Client, ServerThread

from loft.nbd import protocol as p
from loft.nbd.backends.file import FileBackend
from loft.nbd.server import ExportRegistry

SIZE = 4 << 20
SPEC_ERRNOS = {int(e) for e in p.Errno}
pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    img = tmp_path / "disk.img"
    img.write_bytes(b"\x5a" * SIZE)
    backend = FileBackend(img)
    reg = ExportRegistry()
    reg.add("disk", backend)
    with ServerThread(reg, tmp_path / "run" / "nbd.sock") as st:
        yield st
    backend.close()


def _raw(server: ServerThread) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(server.sock))
    return s


def _send_quietly(s: socket.socket, data: bytes) -> None:
    try:
        s.sendall(data)
    except OSError:
        pass  # the server dropped this connection: allowed


def _drain(s: socket.socket, quiet: float = 0.2) -> bytes:
    """Read until EOF or ``quiet`` seconds without data."""
    out = bytearray()
    s.settimeout(quiet)
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return bytes(out)


def _valid_handshake(rng: random.Random) -> bytes:
    c = p.Connection(p.CLIENT)
    c.receive_data(p.Connection(p.SERVER).send(p.Greeting()))
    c.next_event()
    wire = c.send(p.ClientFlags())
    wire += c.send(rng.choice([p.GoOption("disk", (1, 3)), p.ListOption(), p.InfoOption("x")]))
    return wire


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            del b[rng.randrange(len(b)) :]
        elif op == 2:
            pos = rng.randrange(len(b) + 1)
            b[pos:pos] = rng.randbytes(rng.randint(1, 40))
        elif b:
            pos = rng.randrange(len(b))
            b[pos : pos + 4] = struct.pack(">I", rng.choice([0, 0xFFFFFFFF, 1 << 31, 65]))
    return bytes(b)


def test_random_and_mutated_handshakes(server: ServerThread) -> None:
    rng = random.Random(1234)
    healthy = Client(server.sock)
    healthy.handshake("disk")
    for i in range(120):
        s = _raw(server)
        greeting = s.recv(18)
        assert greeting[:8] == b"NBDMAGIC"
        payload = (
            rng.randbytes(rng.randint(0, 300))
            if i % 3 == 0
            else _mutate(rng, _valid_handshake(rng))
        )
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        _drain(s)
        s.close()
        # Another connection is never stalled by the abuse.
        assert healthy.read(i * 4096, 4096) == b"\x5a" * 4096
    assert server.server is not None and server.thread.is_alive()


def test_random_requests_get_spec_errors_or_disconnect(server: ServerThread) -> None:
    rng = random.Random(99)
    healthy = Client(server.sock)
    healthy.handshake("disk", structured=False)
    for round_ in range(40):
        c = Client(server.sock)
        c.handshake("disk", structured=rng.random() < 0.5, contexts=("base:allocation",))
        reqs = []
        for _ in range(rng.randint(1, 12)):
            command = rng.choice([0, 0, 1, 1, 3, 4, 5, 6, 7, 8, 9, 200, 65535])
            flags = rng.choice([0, 0, 1, 2, 4, 8, 16, 32, rng.randrange(1 << 16)])
            offset = rng.choice([0, rng.randrange(SIZE), SIZE - 1, SIZE, (1 << 64) - 1])
            length = rng.choice([0, 1, 4096, rng.randrange(1 << 20), SIZE, (1 << 32) - 1])
            payload = None
            if command == 1:
                length = min(length, 1 << 20)
                payload = rng.randbytes(length)
            elif command == 2:
                continue
            reqs.append(p.Request(command, next(c.handles), offset, length, flags, payload))
        # Send from a thread: like any NBD client, read replies while still sending, or
        # both sides fill their socket buffers and wait on each other.
        wire = b"".join(c.conn.send(r) for r in reqs)
        sender = threading.Thread(target=_send_quietly, args=(c.sock, wire))
        sender.start()
        answered = set()
        try:
            while len(answered) < len(reqs):
                ev = c.next()
                handle = getattr(ev, "handle", None)
                err = getattr(ev, "error", 0)
                assert err == 0 or err in SPEC_ERRNOS, ev
                if isinstance(ev, p.SimpleReply) or getattr(ev, "done", False):
                    answered.add(handle)
        except (p.RemoteProtocolError, ConnectionResetError, TimeoutError):
            pass  # the server may drop a connection that broke the protocol
        sender.join(10)
        c.close()
        assert len(healthy.read(round_ * 4096, 4096)) == 4096  # fuzzed writes change data
    assert server.thread.is_alive()
