"""How much memory does loft's NBD server hold for idle connections, and for clients that
send requests but never read the replies?

Each scenario starts its own ``loft disk serve-file`` (a Unix socket, and TCP with TLS
and client certificates; glibc keeps freed heap, so scenarios must not share a process)
and reads the server's VmRSS (``/proc/PID/status``):

- ``unix_idle``: N Unix-socket clients that finish the handshake (GO) and go quiet;
- ``tcp_handshake``: N TCP clients that read the greeting and send nothing more;
- ``tls_idle``: N TCP clients that STARTTLS with a client certificate, GO, and go quiet;
- ``greedy_K``: K clients, each sending R READs of 32 MiB at once and reading no reply,
  for a few seconds (peak RSS). Meanwhile another client's 4 KiB reads must keep
  working: their count and worst latency are reported;
- ``trickle_K``: K clients, each announcing a 32 MiB WRITE and sending 1 MiB of it.

Idle scenarios report RSS a second after the connections are open, again once they have
been idle for two of the server's sweeps, and after they are closed. Connections the
server refuses (over its caps) are counted, not retried. The image lives on tmpfs when
there is one (``/dev/shm``): tmpfs has no RWF_NOWAIT, so every READ is served by a
worker thread, as a volume's reads of extents not yet fetched are, and at memory speed.

    python bench/nbd_memory.py [--connections 1000] [--clients 1,8] [--src DIR]
                               [--server-args '--max-connections 4000']

``--src`` runs the server from another source tree's ``src`` (a checkout of an older
commit) to compare before and after on one machine; ``--server-args`` adds options to
every server's command line. A server past ``--rss-limit`` is killed (and reported).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _common import ROOT

sys.path.insert(0, str(ROOT / "tests" / "interop"))
sys.path.insert(0, str(ROOT / "tests" / "nbd"))

from nbd_helpers import Client
from nbdtool import NBDServerProcess
from pki import PKI

from loft.nbd import protocol as p

MIB = 1 << 20
IMAGE_SIZE = 256 * MIB
REQUEST_SIZE = 32 * MIB
#: Seconds for two of the server's sweeps of idle connections (SWEEP_INTERVAL is 5 s).
TWO_SWEEPS = 11.0
_REQUEST = struct.Struct(">IHHQQI")
_MAGIC = 0x25609513


class Bench:
    """The image, certificates and options every scenario shares."""

    def __init__(self, work: Path, image: Path, args: argparse.Namespace) -> None:
        self.work = work
        self.image = image
        self.args = args
        (work / "pki").mkdir(mode=0o700)
        self.pki = PKI(work / "pki")
        certs = self.pki.client_dir("bench")
        (work / "authz.json").write_text(json.dumps({"clients": {"bench": ["disk"]}}))
        self.tls = ssl.create_default_context(cafile=str(certs / "ca-cert.pem"))
        self.tls.load_cert_chain(certs / "client-cert.pem", certs / "client-key.pem")
        self.port = 0

    @contextlib.contextmanager
    def server(self) -> Iterator[NBDServerProcess]:
        """A fresh server: --listen with TLS and --authz, then --server-args."""
        extra = ["--listen", "127.0.0.1:0", *self.pki.server_args()]
        extra += ["--authz", str(self.work / "authz.json"), *shlex.split(self.args.server_args)]
        with NBDServerProcess(self.work, {"disk": self.image}, extra=extra) as server:
            self.port = server.tcp_port()
            time.sleep(0.5)
            yield server

    def unix_client(self, server: NBDServerProcess) -> Client:
        c = Client(server.sock)
        c.handshake("disk", structured=False)
        return c

    def tls_client(self, server: NBDServerProcess) -> Client:
        c = Client(sock=socket.create_connection(("127.0.0.1", self.port), timeout=30))
        c.handshake("disk", structured=False, tls=self.tls)
        return c

    def greeted(self, server: NBDServerProcess) -> Client:
        """A TCP client that reads the greeting and sends nothing."""
        c = Client(sock=socket.create_connection(("127.0.0.1", self.port), timeout=30))
        assert isinstance(c.next(), p.Greeting)
        return c


def idle_scenario(bench: Bench, make: Callable[[NBDServerProcess], Client]) -> dict[str, Any]:
    with bench.server() as server:
        before = server.rss_mib()
        kept: list[Client] = []
        refused = 0
        for _ in range(bench.args.connections):
            try:
                kept.append(make(server))
            except (ConnectionError, OSError, ssl.SSLError, AssertionError, p.ProtocolError):
                refused += 1
        time.sleep(1.0)
        opened_rss = server.rss_mib()
        time.sleep(TWO_SWEEPS)
        idle_rss = server.rss_mib()
        for c in kept:
            c.close()
        time.sleep(1.0)
        n = max(len(kept), 1)
        return {
            "connections": len(kept),
            "refused": refused,
            "rss_before_mib": round(before, 1),
            "rss_open_mib": round(opened_rss, 1),
            "rss_idle_mib": round(idle_rss, 1),
            "rss_after_close_mib": round(server.rss_mib(), 1),
            "kib_per_connection_open": round((opened_rss - before) * 1024 / n, 1),
            "kib_per_connection_idle": round((idle_rss - before) * 1024 / n, 1),
        }


def greedy_scenario(bench: Bench, clients: int) -> dict[str, Any]:
    args = bench.args
    with bench.server() as server:
        before = server.rss_mib()
        greedy = []
        for _ in range(clients):
            c = bench.unix_client(server)
            # Every request at once, no reply ever read: the server must stop reading
            # from this client rather than queue every reply.
            c.sock.sendall(
                b"".join(
                    _REQUEST.pack(
                        _MAGIC, 0, 0, i + 1, (i * REQUEST_SIZE) % IMAGE_SIZE, REQUEST_SIZE
                    )
                    for i in range(args.reads)
                )
            )
            greedy.append(c)
        stop = threading.Event()
        honest: dict[str, Any] = {"reads": 0, "worst_ms": 0.0, "error": ""}

        def serve_honest() -> None:
            try:
                h = bench.unix_client(server)
                while not stop.is_set():
                    t = time.monotonic()
                    h.read((honest["reads"] * 4096) % IMAGE_SIZE, 4096)
                    honest["worst_ms"] = max(honest["worst_ms"], (time.monotonic() - t) * 1e3)
                    honest["reads"] += 1
                h.close()
            except Exception as e:  # reported, not raised: the RSS numbers still count
                honest["error"] = repr(e)

        thread = threading.Thread(target=serve_honest)
        thread.start()
        peak = before
        killed = False
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            peak = max(peak, server.rss_mib())
            if peak > args.rss_limit:  # protect the machine: stop this server now
                assert server.proc is not None
                os.kill(server.proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.05)
        stop.set()
        thread.join(60)
        for c in greedy:
            c.close()
        return {
            "clients": clients,
            "reads_each": args.reads,
            "rss_before_mib": round(before, 1),
            "rss_peak_mib": round(peak, 1),
            "killed_at_rss_limit": killed,
            "honest_4k_reads": honest["reads"],
            "honest_worst_ms": round(float(honest["worst_ms"]), 1),
            "honest_error": honest["error"],
        }


def trickle_scenario(bench: Bench, clients: int) -> dict[str, Any]:
    with bench.server() as server:
        before = server.rss_mib()
        kept = []
        for i in range(clients):
            c = bench.unix_client(server)
            # What the socket takes: once the server stops reading, the rest would block.
            c.sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.sock.send(_REQUEST.pack(_MAGIC, 0, 1, i + 1, 0, REQUEST_SIZE) + bytes(MIB))
            kept.append(c)
        time.sleep(2.0)
        rss = server.rss_mib()
        for c in kept:
            c.close()
        return {"clients": clients, "rss_before_mib": round(before, 1), "rss_mib": round(rss, 1)}


@contextlib.contextmanager
def image_dir() -> Iterator[Path]:
    shm = Path("/dev/shm")
    where = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="loft-bench-nbdmem-", dir=where))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--connections", type=int, default=1000, help="idle connections")
    ap.add_argument("--clients", default="1,8", help="numbers of greedy/trickling clients")
    ap.add_argument("--reads", type=int, default=64, help="32 MiB READs each greedy client sends")
    ap.add_argument("--seconds", type=float, default=4.0, help="how long greedy clients stay")
    ap.add_argument("--rss-limit", type=float, default=4096, help="kill a server past this (MiB)")
    ap.add_argument("--src", help="serve from this source tree instead of the installed loft")
    ap.add_argument("--server-args", default="", help="extra serve-file options")
    ap.add_argument("--scenarios", default="unix_idle,tcp_handshake,tls_idle,greedy,trickle")
    args = ap.parse_args()
    if args.src:  # the server process imports loft from there
        os.environ["PYTHONPATH"] = str(Path(args.src) / "src")
    wanted = args.scenarios.split(",")
    results: dict[str, Any] = {}

    def report(name: str, result: dict[str, Any]) -> None:
        results[name] = result
        print(json.dumps({name: result}), file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="loft-bench-nbdmem-") as tmp, image_dir() as idir:
        image = idir / "disk.img"
        with open(image, "wb") as f:  # data, not holes: replies carry bytes
            block = os.urandom(MIB)
            for _ in range(IMAGE_SIZE // MIB):
                f.write(block)
        bench = Bench(Path(tmp), image, args)
        idle: dict[str, Callable[[NBDServerProcess], Client]] = {
            "unix_idle": bench.unix_client,
            "tcp_handshake": bench.greeted,
            "tls_idle": bench.tls_client,
        }
        for name, make in idle.items():
            if name in wanted:
                report(name, idle_scenario(bench, make))
        for k in (int(x) for x in args.clients.split(",")):
            if "greedy" in wanted:
                report(f"greedy_{k}", greedy_scenario(bench, k))
            if "trickle" in wanted:
                report(f"trickle_{k}", trickle_scenario(bench, k))
    print(
        json.dumps(
            {
                "question": "NBD server memory: idle connections, clients that do not read",
                "src": args.src or "installed",
                "server_args": args.server_args,
                "connections": args.connections,
                "loadavg_1m": round(os.getloadavg()[0], 2),
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
