"""The preview proxy: its throughput against a direct connection to the same port, and
idle -> first byte after a wake through it.

Throughput: ``python3 -m http.server``, a process of its own, serves a 256 MiB file and
stands for a workspace's port; curl downloads it directly and through the proxy (owner's
token, host routing, credentials stripped, h11 on both sides), rounds alternating, side
by side in this run. The proxy runs in this process, which does nothing else meanwhile,
as the control plane is a process of its own under ``loft up`` (a client and a server
in the proxy's own interpreter would share its lock with it). Goal: proxy >= 0.8x
direct. The anchor in the same rounds is haproxy in HTTP mode relaying to the same port
(C, heads parsed, bodies spliced): what one more loopback hop costs a proxy built for
it, on the same two cores; and the floor, a bare relay of the same system calls with no
proxy around them (two threads, each a blocking splice loop from one socket through a
pipe into the other). CPU seconds per GiB of the server and of each relay (user +
system, from /proc) say where the time goes.

Wake: a workspace whose ``[run] command`` is ``python3 -m http.server`` is stopped (as
the idle reaper stops it), then one request through the proxy wakes it; the time to the
first byte of the answer. This is **FakeNode's wake**: its start spawns the command as a
host process, so what is measured is the control plane's path (authorize, start, poll
the port, relay) plus Python's start-up; a real node adds the sandbox's start and the
disk attach (bench/runtime_start.py measures those). Goal (issue 13): <= 1 s.

    .venv/bin/python bench/preview_proxy.py
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _common

sys.path.insert(0, str(_common.ROOT / "tests" / "control"))

from controltool import Harness
from previewtool import free_port

from loft.api import CreateWorkspace, EnvSpec
from loft.control.wake import WakeLimits

BODY = 256 * _common.MIB
ROUNDS = 9
WAKES = 8


def _get(port: int, host: str, path: str, token: str | None) -> tuple[float, float, int]:
    """(seconds to the first byte, seconds to the last, bytes) of one GET answered 200."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n".encode()
    buf = bytearray(1 << 20)
    total = 0
    start = time.perf_counter()
    first = 0.0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(req)
        while n := s.recv_into(buf):
            if not total:
                first = time.perf_counter() - start
                assert buf[:12] == b"HTTP/1.1 200", bytes(buf[:200])
            total += n
    return first, time.perf_counter() - start, total


def _curl(port: int, host: str, token: str | None) -> float:
    """Bytes per second of one download of the body with curl (a client of its own)."""
    auth = ["-H", f"Authorization: Bearer {token}"] if token else []
    out = subprocess.run(
        ["curl", "-s", "-f", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
         "-H", f"Host: {host}", *auth, f"http://127.0.0.1:{port}/body"],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout.split()  # fmt: skip
    size, seconds = int(out[0]), float(out[1])
    assert size == BODY, out
    return size / seconds


HAPROXY_CONFIG = """global
    maxconn 64
defaults
    mode http
    option splice-auto
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend preview
    bind 127.0.0.1:{listen}
    default_backend workspace
backend workspace
    server port 127.0.0.1:{port}
"""


#: The floor: one more loopback hop and nothing else (argv: listen port, target port).
BARE_RELAY = """
import fcntl, os, socket, sys, threading
listen = socket.create_server(("127.0.0.1", int(sys.argv[1])))
def pump(a, b):
    r, w = os.pipe()
    fcntl.fcntl(w, 1031, 1 << 20)
    try:
        while n := os.splice(a.fileno(), w, 1 << 20):
            while n:
                n -= os.splice(r, b.fileno(), n)
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass
while True:
    c, _ = listen.accept()
    u = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
    threading.Thread(target=pump, args=(c, u), daemon=True).start()
    threading.Thread(target=pump, args=(u, c), daemon=True).start()
"""


def _proxy_cpu() -> float:
    """CPU seconds this process has used but its main thread: the proxy's, not the
    main thread's, which runs curl (a fork of this large process costs CPU too). The
    process's figure counts threads that have ended."""
    return _common.cpu_seconds("self") - _common.cpu_seconds("self", os.getpid())


def _relays(port: int, tmp: Path) -> dict[str, tuple[subprocess.Popen[bytes], int]]:
    """haproxy and the bare relay, each on a loopback port of its own relaying to
    ``port``: name -> (process, its port)."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    ports = {"haproxy": free_port(), "bare_relay": free_port()}
    config = tmp / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(listen=ports["haproxy"], port=port))
    argv = {
        "haproxy": [haproxy, "-db", "-f", str(config)],
        "bare_relay": [sys.executable, "-c", BARE_RELAY, str(ports["bare_relay"]), str(port)],
    }
    procs = {name: (subprocess.Popen(argv[name]), ports[name]) for name in ports}
    for p in ports.values():
        _wait_port(p)
    return procs


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on port {port}"
            time.sleep(0.05)


def throughput(h: Harness, token: str, wid: str, site: Path) -> dict[str, object]:
    with open(site / "body", "wb") as f:
        f.truncate(BODY)  # a sparse file: read from memory, as a served file in cache is
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
         "--directory", str(site)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    relays: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    runs: dict[str, list[float]] = {"direct": [], "proxy": [], "haproxy": [], "bare_relay": []}
    cpu = dict.fromkeys(("server", "proxy", "haproxy", "bare_relay"), 0.0)
    try:
        _wait_port(port)
        relays = _relays(port, site)
        host = f"{port}--{wid}.preview.localhost:{h.preview_port}"
        _curl(h.preview_port, host, token)  # warm up
        for _, relay_port in relays.values():
            _curl(relay_port, "127.0.0.1", None)
        for _ in range(ROUNDS):
            runs["direct"].append(_curl(port, "127.0.0.1", None))
            before = _common.cpu_seconds(server.pid), _proxy_cpu()
            runs["proxy"].append(_curl(h.preview_port, host, token))
            cpu["server"] += _common.cpu_seconds(server.pid) - before[0]
            cpu["proxy"] += _proxy_cpu() - before[1]
            for name, (proc, relay_port) in relays.items():
                used = _common.cpu_seconds(proc.pid)
                runs[name].append(_curl(relay_port, "127.0.0.1", None))
                cpu[name] += _common.cpu_seconds(proc.pid) - used
    finally:
        for proc in (server, *(p for p, _ in relays.values())):
            proc.terminate()
            proc.wait(10)
    median = {k: statistics.median(v) for k, v in runs.items()}
    d, p = median["direct"], median["proxy"]
    gib = ROUNDS * BODY / _common.GIB
    return {
        "body_mib": BODY // _common.MIB,
        "rounds": ROUNDS,
        "client": "curl",
        "server": "python3 -m http.server (its own process)",
        "direct_mib_s": round(d / _common.MIB, 1),
        "proxy_mib_s": round(p / _common.MIB, 1),
        "runs_mib_s": {k: [round(x / _common.MIB) for x in v] for k, v in runs.items()},
        "proxy_vs_direct": round(p / d, 3),
        "haproxy_vs_direct": round(median["haproxy"] / d, 3),
        "bare_relay_vs_direct": round(median["bare_relay"] / d, 3),
        "proxy_vs_bare_relay": round(p / median["bare_relay"], 3),
        "cpu_s_per_gib": {k: round(v / gib, 3) for k, v in cpu.items()},
        "goal": ">= 0.8",
    }


def wake(h: Harness, token: str, tmp: Path) -> dict[str, object]:
    site = tmp / "site"  # inside the benchmark's work dir, removed with it
    site.mkdir()
    (site / "index.html").write_text("<h1>awake</h1>\n")
    port = free_port()
    command = f"exec python3 -m http.server {port} --bind 127.0.0.1 --directory {site}"
    spec = f'[env]\ndebian = ["python3"]\n\n[run]\ncommand = "{command}"\n'
    assert h.server.proxy is not None
    # measured here is the wake itself, one after another: no rate limit in the way
    h.server.proxy.waker.limits = WakeLimits(1000, 0.001, client_burst=1000, client_every=0.001)
    client = h.client(token)
    ws = client.create_workspace(CreateWorkspace("web", env=EnvSpec(spec=spec), size=1 << 30))
    host = f"{port}--{ws.id}.preview.localhost:{h.preview_port}"
    firsts, warm = [], []
    for _ in range(WAKES):
        client.stop("web")  # what the idle reaper does (after its snapshot)
        first, _, n = _get(h.preview_port, host, "/", token)
        assert n > 0
        firsts.append(first)
        warm.append(_get(h.preview_port, host, "/", token)[0])
    text = h.raw("GET", "/metrics", h.admin_token).text
    count = re.search(r"^loft_workspace_wake_to_first_byte_seconds_count (\S+)", text, re.M)
    return {
        "node": "FakeNode (the run command is a host process; no sandbox, no disk attach)",
        "idle_to_first_byte": _common.stats_ms(firsts),
        "awake_first_byte": _common.stats_ms(warm),
        "metrics_wake_count": float(count.group(1)) if count else None,
        "goal": "<= 1000 ms",
    }


def main() -> None:
    with _common.workdir("loft-bench-preview-") as tmp:
        h = Harness(f"sqlite:///{tmp / 'catalog.db'}", tmp, preview_listen=("127.0.0.1", 0))
        try:
            token = h.admin().create_user("bench").token
            wid = h.client(token).create_workspace(CreateWorkspace("tp", size=1 << 30)).id
            _common.log("throughput...")
            tp = throughput(h, token, wid, tmp)
            _common.log("wake...")
            wk = wake(h, token, tmp)
        finally:
            h.close()
    _common.emit({"benchmark": "preview_proxy", "throughput": tp, "wake": wk})


if __name__ == "__main__":
    main()
