"""A malformed-request flood on some connections while a real client keeps working."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from nbdtool import DEBIAN_PYTHON, NBDServerProcess, make_image, run

pytestmark = pytest.mark.timeout(180)

REQUEST = struct.Struct(">IHHQQI")
MAGIC = 0x25609513


def _handshake(sock_path: Path) -> socket.socket:
    """A fixed-newstyle handshake by hand: EXPORT_NAME 'disk', no structured replies."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(sock_path))
    assert s.recv(18)[:8] == b"NBDMAGIC"
    s.sendall(struct.pack(">I", 3) + struct.pack(">QII", 0x49484156454F5054, 1, 4) + b"disk")
    got = b""
    while len(got) < 10:
        got += s.recv(10 - len(got))
    return s


def _flood(sock_path: Path, stop: threading.Event, stats: dict[str, int]) -> None:
    rng = random.Random(5)
    while not stop.is_set():
        try:
            s = _handshake(sock_path)
            # Valid framing, invalid content: every one must be answered with an error.
            batch = b"".join(
                REQUEST.pack(
                    MAGIC,
                    rng.randrange(1 << 16),
                    rng.choice([9, 42, 0, 4]),
                    i,
                    (1 << 63) + i,
                    rng.randrange(1, 1 << 32),
                )
                for i in range(2000)
            )
            s.sendall(batch)
            replies = b""
            s.settimeout(5)
            while len(replies) < 16 * 2000:
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                replies += chunk
            errors = [struct.unpack_from(">IIQ", replies, o)[1] for o in range(0, len(replies), 16)]
            stats["answered"] += len(errors)
            stats["bad_errno"] += sum(1 for e in errors if e not in (22, 1, 28))
            # Then garbage: the server drops this connection.
            s.sendall(rng.randbytes(4096))
            stats["dropped"] += s.recv(1 << 16) == b""
            s.close()
        except OSError:
            stats["oserror"] += 1


def test_flood_does_not_starve_a_real_client(tmp_path: Path) -> None:
    img = make_image(tmp_path / "disk.img", 64 << 20)
    with NBDServerProcess(tmp_path, {"disk": img}) as server:
        stop = threading.Event()
        stats = {"answered": 0, "bad_errno": 0, "dropped": 0, "oserror": 0}
        flooders = [
            threading.Thread(target=_flood, args=(server.sock, stop, stats)) for _ in range(2)
        ]
        for t in flooders:
            t.start()
        try:
            time.sleep(0.5)
            script = f"""
import nbd, os, time
h = nbd.NBD()
h.connect_uri({server.uri()!r})
t = time.monotonic()
for i in range(200):
    data = os.urandom(65536)
    h.pwrite(data, i * 65536)
    assert h.pread(65536, i * 65536) == data
h.flush()
print("ok", round(time.monotonic() - t, 2))
"""
            out = run([DEBIAN_PYTHON, "-m", "nbd", "-c", script], timeout=120).stdout
            assert out.startswith("ok"), out
        finally:
            stop.set()
            for t in flooders:
                t.join(30)
        assert server.alive
    assert stats["answered"] >= 2000 and stats["bad_errno"] == 0, stats
    assert stats["dropped"] >= 1, stats
