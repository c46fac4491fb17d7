"""Idle -> first byte through the preview proxy, over a real node.

Against ``loft up`` (disk service, node agent, control plane with its preview proxy;
real runc, nbdfuse, loop, ext4): a workspace whose ``[run] command`` is ``python3 -m
http.server`` is stopped (snapshotted first, as the idle reaper does), then one request
through the proxy with its owner's token wakes it; the time from sending the request to
the first byte of the answer. Each wake is the whole of it: admission, the disk's
attach, the sandbox's start, the server's start and bind, the proxy's poll of the port
and the relay. Anchor in the same run: the same request to the awake workspace.
Goal (issue 13): <= 1 s; anchors: e2b resume ~1 s, Fly "a few hundred ms".

Wakes are paced at the proxy's limit (3 at once, then one per 10 s per workspace), so
the run takes ~10 s per wake. LOFT_BENCH_N (default 8) sets the wakes. Needs root, runc
and catatonit. Prints JSON.
"""

from __future__ import annotations

import os
import socket
import time

from _common import emit, log, stats_ms
from _loftup import loft_up
from loft.api import CreateWorkspace, EnvSpec, Limits
from loft.client import Client

N = int(os.environ.get("LOFT_BENCH_N", "8"))
SPEC = '[env]\ndebian = ["python3"]\n\n[run]\ncommand = "python3 -m http.server 8000"\n'
PAGE = b"<h1>awake</h1>\n"
#: Seconds between wakes past the burst (the proxy's per-workspace refill).
WAKE_EVERY = 10.5


def first_byte(port: int, host: str, token: str) -> tuple[float, bytes]:
    """Seconds from sending a GET through the proxy to its answer's first byte, and the
    whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        request = (
            f"GET / HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        start = time.perf_counter()
        s.sendall(request)
        answer = s.recv(65536)
        took = time.perf_counter() - start
        while more := s.recv(65536):
            answer += more
    return took, answer


def main() -> None:
    with loft_up() as up, Client(up.url, up.admin_token, timeout=600) as admin:
        req = CreateWorkspace(
            "web", env=EnvSpec(spec=SPEC), size=1 << 30, limits=Limits(256 << 20), idle_timeout=0
        )
        ws = admin.create_workspace(req)
        admin.write_file("web", "/home/runner/index.html", PAGE)
        host = f"8000--{ws.id}.preview.localhost"
        deadline = time.monotonic() + 60
        while b" 200 " not in first_byte(up.preview_port, host, up.admin_token)[1][:20]:
            if time.monotonic() > deadline:
                raise SystemExit("the workspace's server never answered")
            time.sleep(0.2)
        awake, woken = [], []
        last = 0.0
        for i in range(N):
            if i >= 3:  # the proxy's wake limit: three in a burst, then one per 10 s
                time.sleep(max(0.0, last + WAKE_EVERY - time.monotonic()))
            last = time.monotonic()
            awake.append(first_byte(up.preview_port, host, up.admin_token)[0])
            admin.snapshot("web", f"idle-{i}")
            admin.stop("web")
            took, answer = first_byte(up.preview_port, host, up.admin_token)
            if not answer.endswith(PAGE):
                raise SystemExit(f"wake {i} answered {answer[:200]!r}")
            woken.append(took)
            log(f"wake {i}: {took * 1000:.0f} ms")
        emit(
            {
                "benchmark": "wake_real_node",
                "node": "loft up: runc, nbdfuse + loop + ext4, [run] python3 -m http.server",
                "idle_to_first_byte": stats_ms(woken),
                "awake_first_byte": stats_ms(awake),
                "goal": "<= 1000 ms",
                "anchors": {"e2b_resume_ms": 1000, "fly_autostart": "a few hundred ms"},
            }
        )


if __name__ == "__main__":
    main()
