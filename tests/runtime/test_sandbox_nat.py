"""Outbound networking (``nat``): a connection to an allowed address goes out through the
userspace stack; the host's loopback, private and link-local ranges and the deployment's
own endpoints are refused from inside, even where they are reachable (the "outside" is
made in network namespaces by egress_support.py; no packet leaves the machine)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from egress_support import ALLOWED, BEHIND, DENY, PROBE, outside
from runtime_support import Workspaces, example, needs_runc, workspaces

from loft.runtime.egress import egress_ruleset
from loft.runtime.sandbox import SandboxRuntime
from loft.runtime.spec import ExecRequest, Network, WorkspaceSpec

pytestmark = [pytest.mark.serial, needs_runc, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def outside_ns() -> Iterator[Path]:
    with outside() as egress:
        yield egress


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, outside_ns: Path) -> Iterator[Workspaces]:
    ex = example(tmp_path_factory)
    with workspaces(ex) as ws:
        ws.runtime = SandboxRuntime(ws.runtime.dirs.data_dir, egress_netns=outside_ns)
        yield ws


def test_sandbox_nat_reaches_out_but_not_in(ws: Workspaces) -> None:
    spec = ws.spec()
    spec = WorkspaceSpec(spec.id, spec.rootfs, spec.env, spec.ids, spec.limits, Network.NAT,
                         deny=(ipaddress.ip_network(DENY),))  # fmt: skip
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
