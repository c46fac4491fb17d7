"""The "outside" for the outbound networking tests of sandboxes and VMs: a network
namespace for the userspace stack (``egress``) joined by a veth pair to one holding a
server (``upstream``), on a documentation range (203.0.113.0/24). ``upstream`` also
answers on private and metadata addresses routed to it, so a refusal is the policy's
doing, not a missing route. No packet leaves the machine."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ALLOWED = "203.0.113.2"
#: Addresses the policy refuses though upstream serves them; the last: a ``spec.deny``.
BEHIND = ["10.77.0.1", "192.168.77.1", "169.254.169.254", "198.51.100.7"]
DENY = "198.51.100.0/24"
PORT = 8080
#: How many bytes upstream's port :data:`BULK_PORT` sends (an HTTP/1.0 response to any
#: request).
BULK_PORT = 8081
BULK_BYTES = 64 << 20


#: A client (``python3 -c PROBE ADDR...``): what each address's port :data:`PORT` sends,
#: or ``refused ERRNO``, as JSON.
PROBE = r"""
import json, socket, sys
out = {}
for addr in sys.argv[1:]:
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((addr, 8080))
        out[addr] = s.recv(100).decode()
    except OSError as e:
        out[addr] = f"refused {e.errno}"
    finally:
        s.close()
print(json.dumps(out))
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def listen_in(netns: str, host: str, port: int, reply: bytes) -> subprocess.Popen[bytes]:
    """A TCP server in the network namespace ``netns`` (a name or a path) that sends
    ``reply`` to each connection (the caller kills it)."""
    enter = ["ip", "netns", "exec", netns] if "/" not in netns else ["nsenter", f"--net={netns}"]
    code = (
        "import socket, sys\n"
        f"s = socket.create_server(({host!r}, {port}))\n"
        "print('ok', flush=True)\n"
        "while True:\n"
        f" c, _ = s.accept(); c.sendall({reply!r}); c.close()\n"
    )
    proc = subprocess.Popen([*enter, "python3", "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ok\n"
    return proc


@contextmanager
def outside() -> Iterator[Path]:
    """The egress namespace's path, with upstream sending ``upstream`` on :data:`PORT`
    and serving :data:`BULK_BYTES` over HTTP on :data:`BULK_PORT`."""
    tag = f"lt{os.getpid() % 100000}"
    egress, upstream = f"{tag}-egress", f"{tag}-up"
    ip("netns", "add", egress)
    ip("netns", "add", upstream)
    servers: list[subprocess.Popen[bytes]] = []
    try:
        ip("link", "add", f"{tag}a", "netns", egress, "type", "veth", "peer", "name", f"{tag}b",
           "netns", upstream)  # fmt: skip
        for ns, dev, addr in ((egress, f"{tag}a", "203.0.113.1/24"),
                              (upstream, f"{tag}b", f"{ALLOWED}/24")):  # fmt: skip
            ip("-n", ns, "addr", "add", addr, "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        for addr in BEHIND:
            ip("-n", upstream, "addr", "add", f"{addr}/32", "dev", "lo")
            ip("-n", egress, "route", "add", f"{addr}/32", "via", ALLOWED)
        servers.append(listen_in(upstream, "0.0.0.0", PORT, b"upstream"))
        bulk = (  # HTTP/1.0, so busybox's wget in a guest fetches it
            "import socket\n"
            f"s = socket.create_server(('0.0.0.0', {BULK_PORT}))\n"
            "print('ok', flush=True)\n"
            "block = bytes(1 << 20)\n"
            "while True:\n"
            " c, _ = s.accept()\n"
            " try:\n"
            "  c.recv(4096)\n"
            f"  c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: {BULK_BYTES}\\r\\n\\r\\n')\n"
            f"  for _ in range({BULK_BYTES >> 20}): c.sendall(block)\n"
            " except OSError: pass\n"
            " c.close()\n"
        )
        proc = subprocess.Popen(["ip", "netns", "exec", upstream, "python3", "-c", bulk],
                                stdout=subprocess.PIPE)  # fmt: skip
        servers.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == b"ok\n"
        yield Path(f"/run/netns/{egress}")
    finally:
        for server in servers:
            server.kill()
            server.wait()
        for ns in (egress, upstream):
            subprocess.run(["ip", "netns", "del", ns], check=False)
