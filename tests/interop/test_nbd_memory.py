"""The resident memory of a real ``loft disk serve-file`` process under clients that
connect and idle, flood the handshake, or send READs and never read the replies.

RSS is read from /proc (VmRSS) of the server process. Reads that must not be bounded by
luck go to worker threads: the image lives on tmpfs, which has no RWF_NOWAIT, so the
server never reads it inline (as a volume's extents not fetched yet).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nbd_helpers import Client
from nbdtool import DEBIAN_PYTHON, NBDServerProcess, make_image, run
from pki import PKI

pytestmark = pytest.mark.timeout(240)

MIB = 1 << 20
REQUEST = struct.Struct(">IHHQQI")


def peak_rss(server: NBDServerProcess, seconds: float, limit: float) -> float:
    """The server's highest RSS over ``seconds``; stops early once past ``limit`` (MiB)."""
    peak = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and peak <= limit:
        peak = max(peak, server.rss_mib())
        time.sleep(0.05)
    return peak


@pytest.fixture
def tls_setup(tmp_path: Path) -> tuple[PKI, ssl.SSLContext, list[str]]:
    """Certificates, a client context for identity ``alice``, and the server options."""
    (tmp_path / "pki").mkdir(mode=0o700)
    pki = PKI(tmp_path / "pki")
    certs = pki.client_dir("alice")
    ctx = ssl.create_default_context(cafile=str(certs / "ca-cert.pem"))
    ctx.load_cert_chain(certs / "client-cert.pem", certs / "client-key.pem")
    authz = tmp_path / "authz.json"
    authz.write_text('{"clients": {"alice": ["disk"]}}')
    return pki, ctx, ["--listen", "127.0.0.1:0", *pki.server_args(), "--authz", str(authz)]


@pytest.fixture
def tmpfs_image() -> Iterator[Path]:
    """A 256 MiB image on tmpfs (skipped where there is none)."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        pytest.skip("no writable tmpfs at /dev/shm")
    d = Path(tempfile.mkdtemp(prefix="loft-test-", dir=shm))
    try:
        img = d / "disk.img"
        with open(img, "wb") as f:
            for i in range(256):
                f.write(bytes([i]) * MIB)
        yield img
    finally:
        shutil.rmtree(d, ignore_errors=True)


def tls_client(port: int, ctx: ssl.SSLContext) -> Client:
    c = Client(sock=socket.create_connection(("127.0.0.1", port), timeout=30))
    c.handshake("disk", structured=False, tls=ctx)
    return c


def test_idle_unix_connections_cost_a_few_kib(tmp_path: Path) -> None:
    img = make_image(tmp_path / "disk.img", 8 * MIB)
    with NBDServerProcess(tmp_path, {"disk": img}) as server:
        time.sleep(0.5)
        before = server.rss_mib()
        clients = []
        for _ in range(1000):
            c = Client(server.sock)
            c.handshake("disk")
            clients.append(c)
        time.sleep(0.5)
        grown = server.rss_mib() - before
        assert grown < 16, f"{grown:.1f} MiB for 1000 idle connections"  # was 250 MiB
        assert clients[500].read(0, 4096) == bytes(4096)
        for c in clients:
            c.close()


def test_idle_tls_connections_cost_tens_of_kib(
    tmp_path: Path, tls_setup: tuple[PKI, ssl.SSLContext, list[str]]
) -> None:
    _, ctx, extra = tls_setup
    img = make_image(tmp_path / "disk.img", 8 * MIB)
    with NBDServerProcess(tmp_path, {"disk": img}, extra=extra) as server:
        port = server.tcp_port()
        time.sleep(0.5)
        before = server.rss_mib()
        clients = [tls_client(port, ctx) for _ in range(200)]
        time.sleep(0.5)
        grown = server.rss_mib() - before
        assert grown < 200 * 96 / 1024, f"{grown:.1f} MiB for 200 TLS connections"  # was 57
        assert clients[100].read(0, 4096) == bytes(4096)
        for c in clients:
            c.close()


def test_handshake_flood_is_capped_cheap_and_logged(
    tmp_path: Path, tls_setup: tuple[PKI, ssl.SSLContext, list[str]]
) -> None:
    """1000 TCP clients that read the greeting and say nothing: all but the handshake
    cap's worth are closed at once, with a few log lines; an established client keeps
    working through the flood, and a new one gets in once the flood is gone."""
    _, ctx, extra = tls_setup
    img = make_image(tmp_path / "disk.img", 8 * MIB)
    with NBDServerProcess(tmp_path, {"disk": img}, extra=extra) as server:
        port = server.tcp_port()
        established = tls_client(port, ctx)
        time.sleep(0.5)
        before = server.rss_mib()
        flood, refused = [], 0
        for _ in range(1000):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            try:
                greeting = s.recv(18)
            except ConnectionResetError:
                greeting = b""
            if greeting:
                flood.append(s)
            else:
                refused += 1
                s.close()
            if len(flood) % 100 == 1:
                assert established.read(0, 512) == bytes(512)
        grown = server.rss_mib() - before
        assert refused >= 800 and len(flood) <= 200, (refused, len(flood))
        assert grown < 8, f"{grown:.1f} MiB"  # was 250 MiB
        time.sleep(1.2)
        lines = [x for x in server.log.read_text().splitlines() if "nbd.refuse" in x]
        assert 1 <= len(lines) <= 20 and "reason=max_handshakes" in lines[0], lines
        for s in flood:
            s.close()
        time.sleep(0.2)
        later = tls_client(port, ctx)
        assert later.read(0, 4096) == bytes(4096)
        for c in (established, later):
            c.close()
        assert server.alive


def _greedy(sock: Path, reads: int) -> Client:
    c = Client(sock)
    c.handshake("disk", structured=False)
    c.sock.sendall(
        b"".join(
            REQUEST.pack(0x25609513, 0, 0, i + 1, (i * 32 * MIB) % (256 * MIB), 32 * MIB)
            for i in range(reads)
        )
    )
    return c


HONEST = """
import nbd, os
h = nbd.NBD()
h.connect_uri(URI)
for i in range(20):
    data = os.urandom(65536)
    h.pwrite(data, i * 65536)
    assert h.pread(65536, i * 65536) == data
assert h.pread(4096, 200 * 1048576) == bytes([200]) * 4096
h.flush()
print("ok")
"""


@pytest.mark.parametrize(
    ("clients", "extra", "bound"),
    [(1, [], 64 + 32 + 64), (6, ["--max-inflight", "128M"], 128 + 96)],
    ids=["one", "several-share-the-server-budget"],
)
def test_readers_that_read_no_replies_keep_the_server_bounded(
    tmp_path: Path, tmpfs_image: Path, clients: int, extra: list[str], bound: int
) -> None:
    """64 READs of 32 MiB each and no reply read (2 GiB per client): the server holds
    at most its budgets' worth (64 MiB a connection, --max-inflight for all), and a real
    client (libnbd) keeps being served."""
    with NBDServerProcess(tmp_path, {"disk": tmpfs_image}, extra=extra) as server:
        time.sleep(0.5)
        base = server.rss_mib()
        greedy = [_greedy(server.sock, 64) for _ in range(clients)]
        peak = peak_rss(server, 3.0, base + bound)
        assert peak - base < bound, f"{peak - base:.0f} MiB above {base:.0f}"  # was GiBs
        script = HONEST.replace("URI", repr(server.uri()))
        assert run([DEBIAN_PYTHON, "-c", script], timeout=60).stdout.strip() == "ok"
        assert server.alive
        for c in greedy:
            c.close()
