"""Outbound networking of VM workspaces on real QEMU: a ``nat`` VM reaches an allowed
server through its own network namespace and the userspace stack, and its guest, root in
its own kernel, reaches nothing the sandbox's policy refuses (the host's loopback,
10.0.2.2, private and metadata ranges, ``spec.deny``, the namespace itself), whatever it
does to its own network, and after a warm resume or an agent restart; a live fork gets
its own MAC, namespace and machine-id and both keep networking; a ``none`` VM has no NIC.
The "outside" is egress_support.py's network namespaces; no packet leaves the machine.
At most two VMs at once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from egress_support import ALLOWED, BEHIND, DENY, PORT, PROBE, listen_in, outside
from vm_support import GUEST, Vms, needs_qemu, vms

from loft.runtime.errors import WorkspaceError
from loft.runtime.phase import Phase
from loft.runtime.spec import ExecRequest, Network
from loft.runtime.vm import VmRuntime
from loft.runtime.vm_net import GATEWAY, STACK_PID, guest_mac

pytestmark = [pytest.mark.serial, needs_qemu]
#: What each ``ADDR`` gives on ``PORT`` (``probe PORT ADDR...`` in the guest, busybox
#: only): the server's reply, or nc's error.
GUEST_PROBE = (
    'port=$1; shift; for a in "$@"; do '
    'r=$(sleep 2 | nc -w 4 "$a" "$port" 2>&1); echo "$a ${r:-nothing}"; done'
)
SERVED = ("upstream", "namespace", "loopback", "host")


@pytest.fixture(scope="module")
def outside_ns() -> Iterator[Path]:
    with outside() as egress:
        yield egress


@pytest.fixture
def node(tmp_path: Path, outside_ns: Path) -> Iterator[Vms]:
    with vms(tmp_path, outside_ns) as v:
        yield v


def _sh(rt: VmRuntime, ws: str, script: str, *args: str) -> str:
    done = rt.run(ws, ExecRequest(("sh", "-c", script, "sh", *args), user=0, cwd="/"),
                  timeout=90)  # fmt: skip
    assert done.status == 0, (done.status, done.stdout, done.stderr)
    return done.stdout.decode()


def _probe(rt: VmRuntime, ws: str, port: int, *addrs: str) -> dict[str, str]:
    out = _sh(rt, ws, GUEST_PROBE, str(port), *addrs)
    return dict(line.split(" ", 1) for line in out.splitlines())


def _netns(rt: VmRuntime, ws: str) -> str:
    return f"/proc/{rt.status(ws).pid}/ns/net"


def _policy(rt: VmRuntime, ws: str) -> str:
    return subprocess.run(["nsenter", f"--net={_netns(rt, ws)}", "nft", "list", "table", "inet",
                           "loft_egress"], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


def _stack_gone(pid: int) -> bool:
    try:
        return b"slirp4netns" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


@pytest.mark.timeout(240)
def test_vm_nat_reaches_out_but_not_in(node: Vms, outside_ns: Path) -> None:
    rt = node.runtime
    spec = node.spec(network=Network.NAT, deny=DENY)
    rt.start(spec)
    assert _sh(rt, spec.id, "cat /sys/class/net/eth0/address").strip() == guest_mac(spec.id)
    assert _sh(rt, spec.id, "cat /etc/resolv.conf") == "nameserver 10.0.2.3\n"
    # Servers where the guest must not reach: the VM's own namespace (its gateway's side)
    # and the stack's loopback (what 10.0.2.2 is without --disable-host-loopback).
    servers = [listen_in(_netns(rt, spec.id), "0.0.0.0", PORT, b"namespace"),
               listen_in(outside_ns.name, "127.0.0.1", PORT, b"loopback")]  # fmt: skip
    try:
        refused = [*BEHIND, "10.0.2.2", "10.0.2.100", GATEWAY]
        got = _probe(rt, spec.id, PORT, ALLOWED, *refused)
        assert got[ALLOWED] == "upstream"
        for addr in refused:
            assert got[addr] not in SERVED and got[addr].startswith("nc:"), (addr, got[addr])
        # From the stack's namespace every address behind is reachable: a refusal in the
        # guest is the policy's.
        direct = subprocess.run(["ip", "netns", "exec", outside_ns.name, "python3", "-c", PROBE,
                                 *BEHIND], capture_output=True, text=True, check=True)  # fmt: skip
        assert set(json.loads(direct.stdout).values()) == {"upstream"}

        # Root in the guest takes the namespace's addresses and routes every range
        # straight at its gateway: the policy is not in its kernel, so nothing changes.
        before = _policy(rt, spec.id)
        assert "169.254.0.0/16" in before and DENY in before
        _sh(rt, spec.id, "ip addr add 10.0.2.100/24 dev eth0; ip addr add 10.0.2.2/32 dev eth0;"
                         f" for n in 10.0.0.0/8 169.254.0.0/16 192.168.0.0/16 198.51.100.0/24; do"
                         f" ip route replace $n via {GATEWAY} dev eth0; done")  # fmt: skip
        got = _probe(rt, spec.id, PORT, ALLOWED, *BEHIND)
        assert got[ALLOWED] == "upstream"
        for addr in BEHIND:
            assert got[addr] not in SERVED, (addr, got[addr])
        assert _policy(rt, spec.id) == before
    finally:
        for server in servers:
            server.kill()
            server.wait()

    # a warm suspend ends the namespace and its stack; the resume makes new ones
    stack = int((rt.dir(spec.id) / STACK_PID).read_text())
    rt.suspend(spec.id)
    assert _stack_gone(stack)
    rt.resume(spec.id)
    assert _probe(rt, spec.id, PORT, ALLOWED)[ALLOWED] == "upstream"

    # an agent restart: the old runtime's connections close, QEMU and its stack stay,
    # and the new runtime's VM reaches out as before; its stop ends the stack
    for vm in rt._live.values():
        vm.release()
    rt._live.clear()
    rt = node.runtime = VmRuntime(rt.root.parents[1], rt.disk, guest=GUEST, bs=node.node.bs,
                                  egress_netns=outside_ns)  # fmt: skip
    assert [s.id for s in rt.adopt()] == [spec.id]
    assert _probe(rt, spec.id, PORT, ALLOWED)[ALLOWED] == "upstream"
    stack = int((rt.dir(spec.id) / STACK_PID).read_text())
    rt.stop(spec.id)
    assert _stack_gone(stack)


@pytest.mark.timeout(240)
def test_vm_nat_live_fork_has_its_own_mac_and_both_keep_networking(node: Vms) -> None:
    rt = node.runtime
    src = node.spec(network=Network.NAT)
    rt.start(src)
    _sh(rt, src.id, "mkdir -p /etc; echo 0123456789abcdef0123456789abcdef > /etc/machine-id")
    rt.freeze(src.id)
    snap = rt.snapshot(src.id)
    node.node.node.loft("volume", "snapshot", src.id, "f")
    node.node.node.loft("volume", "fork", f"{src.id}@f", "nfork")
    rt.thaw(src.id)
    fork = node.spec(name="nfork", volume=False, network=Network.NAT)
    # the NIC is a device of the saved machine: no restore into a machine without one
    with pytest.raises(WorkspaceError, match="loading the VM's state failed"):
        rt.restore(replace(fork, network=Network.NONE), snap, fork=True)
    assert rt.status(fork.id).phase is Phase.STOPPED and not rt.dir(fork.id).exists()
    rt.restore(fork, snap, fork=True, new_machine_id=True)

    mac = "cat /sys/class/net/eth0/address"
    assert _sh(rt, src.id, mac).strip() == guest_mac(src.id)
    assert _sh(rt, fork.id, mac).strip() == guest_mac(fork.id) != guest_mac(src.id)
    assert os.stat(_netns(rt, src.id)).st_ino != os.stat(_netns(rt, fork.id)).st_ino
    for ws in (src.id, fork.id):
        assert _probe(rt, ws, PORT, ALLOWED, "169.254.169.254")[ALLOWED] == "upstream"
    ids = [_sh(rt, ws, "cat /etc/machine-id").strip() for ws in (src.id, fork.id)]
    assert ids[0] == "0123456789abcdef0123456789abcdef"
    assert len(ids[1]) == 32 and ids[1] != ids[0]
    rt.stop(fork.id)
    rt.stop(src.id)
    rt.remove_snapshot(snap)


@pytest.mark.timeout(240)
def test_vm_nat_host_loopback_and_no_nic_without_nat(node: Vms) -> None:
    # The stack in the agent's own namespace, as a node runs it by default: a service on
    # the host's loopback is what 10.0.2.2 would reach.
    rt = VmRuntime(node.runtime.root.parents[1], node.runtime.disk, guest=GUEST, bs=node.node.bs)
    host = socket.create_server(("127.0.0.1", 0))
    port = host.getsockname()[1]
    host.settimeout(0.1)
    nat, none = node.spec(network=Network.NAT), node.spec()
    try:
        rt.start(nat)
        got = _probe(rt, nat.id, port, "10.0.2.2", "10.0.2.100", GATEWAY)
        for addr, reply in got.items():
            assert reply.startswith("nc:"), (addr, reply)
        with pytest.raises(TimeoutError):
            host.accept()  # nothing of the guest's arrived
        rt.stop(nat.id)

        rt.start(none)
        assert _sh(rt, none.id, "ls /sys/class/net").split() == ["lo"]
        assert not (rt.dir(none.id) / STACK_PID).exists()
        rt.stop(none.id)
    finally:
        host.close()
