"""Outbound networking (``nat``): a connection to an allowed address goes out through the
userspace stack; the host's loopback, private and link-local ranges and the deployment's
own endpoints are refused from inside, even where they are reachable.

The "outside" is made here: a network namespace for the stack (``egress``) joined by a veth
pair to one holding a server (``upstream``), on a documentation range (203.0.113.0/24);
``upstream`` also answers on private and metadata addresses routed to it, so a refusal is
the policy's doing, not a missing route. No packet leaves the machine."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_support import Workspaces, example, needs_runc, workspaces

from loft.runtime.egress import egress_ruleset
from loft.runtime.sandbox import SandboxRuntime
from loft.runtime.spec import ExecRequest, Network, WorkspaceSpec

pytestmark = [pytest.mark.serial, needs_runc, pytest.mark.timeout(600)]
ALLOWED = "203.0.113.2"
BEHIND = ["10.77.0.1", "192.168.77.1", "169.254.169.254", "198.51.100.7"]  # the last: spec.deny


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def outside() -> Iterator[Path]:
    """The egress namespace's path, with a TCP server upstream on port 8080."""
    tag = f"lt{os.getpid() % 100000}"
    egress, upstream = f"{tag}-egress", f"{tag}-up"
    ip("netns", "add", egress)
    ip("netns", "add", upstream)
    server = None
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
        server = subprocess.Popen(
            ["ip", "netns", "exec", upstream, "python3", "-c",
             "import socket\ns = socket.create_server(('0.0.0.0', 8080))\n"
             "while True:\n c, _ = s.accept(); c.sendall(b'upstream'); c.close()"],
        )  # fmt: skip
        time.sleep(0.5)
        yield Path(f"/run/netns/{egress}")
    finally:
        if server is not None:
            server.kill()
            server.wait()
        for ns in (egress, upstream):
            subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, outside: Path) -> Iterator[Workspaces]:
    ex = example(tmp_path_factory)
    with workspaces(ex) as ws:
        ws.runtime = SandboxRuntime(ws.runtime.dirs.data_dir, egress_netns=outside)
        yield ws


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


def test_sandbox_nat_reaches_out_but_not_in(ws: Workspaces) -> None:
    spec = ws.spec()
    spec = WorkspaceSpec(spec.id, spec.rootfs, spec.env, spec.ids, spec.limits, Network.NAT,
                         deny=(ipaddress.ip_network("198.51.100.0/24"),))  # fmt: skip
    ws.specs[-1] = spec
    ws.runtime.start(spec)
    targets = [ALLOWED, *BEHIND, "10.0.2.2", "127.0.0.1"]
    done = ws.runtime.run(spec.id, ExecRequest(("python3", "-c", PROBE, *targets)), timeout=60)
    assert done.status == 0, done.stderr
    got = json.loads(done.stdout)
    assert got[ALLOWED] == "upstream"
    # From the stack's namespace every address behind is reachable: a refusal inside is
    # the policy's.
    egress = ws.runtime.egress_netns
    assert egress is not None
    direct = subprocess.run(["ip", "netns", "exec", egress.name, "python3", "-c", PROBE, *BEHIND],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert direct.returncode == 0, direct.stderr
    assert set(json.loads(direct.stdout).values()) == {"upstream"}
    for addr in [*BEHIND, "10.0.2.2", "127.0.0.1"]:
        assert got[addr].startswith("refused"), (addr, got[addr])
    assert ws.sh(spec, "cat /etc/resolv.conf")[1] == "nameserver 10.0.2.3\n"
    # Root inside cannot lift the policy: no CAP_NET_ADMIN to change nftables with.
    status = ws.sh(spec, "grep CapEff /proc/self/status", user=0)[1].split()[1]
    assert not int(status, 16) & (1 << 12)
    stack = int((ws.runtime.dirs.bundle(spec.id) / "stack.pid").read_text())
    ws.runtime.stop(spec.id, grace=0)
    deadline = time.monotonic() + 10
    while (
        Path(f"/proc/{stack}").exists() and b"slirp" in Path(f"/proc/{stack}/cmdline").read_bytes()
    ):
        assert time.monotonic() < deadline, "the stack outlived its workspace"
        time.sleep(0.05)


def test_sandbox_nat_ruleset_names_every_denied_range() -> None:
    rules = egress_ruleset([ipaddress.ip_network("198.51.100.0/24")])
    for net in (
        "10.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "198.51.100.0/24",
        "fc00::/7",
        "::1/128",
    ):
        assert net in rules
    assert "udp dport 53 accept" in rules
