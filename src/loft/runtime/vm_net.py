"""A VM's outbound network (``nat``): a network namespace of its own between the guest's
NIC and the userspace stack, where the egress policy holds out of the guest's reach.

The tenant is root in the guest's kernel, so no policy can live in the guest. Each
``nat`` VM gets a network namespace, made here before its QEMU starts and held by that
QEMU (which runs in it; its Unix sockets are paths and unaffected), with:

- :data:`TAP`, a tap device QEMU opens (``-netdev tap``): the guest's ``eth0`` is its
  other end, and this end is the guest's gateway, :data:`GATEWAY`, with a fixed MAC (a
  restored guest's ARP cache holds it, and every namespace made for that guest is new);
- ``tap0``, slirp4netns's uplink, exactly as a sandbox's
  (:func:`loft.runtime.egress.start_stack`: ``--disable-host-loopback``, sandboxed,
  seccomp, in the operator's ``egress_netns``);
- IPv4 forwarding from :data:`TAP` to ``tap0``, masqueraded behind slirp's address,
  under :func:`loft.runtime.egress.forward_ruleset`: the sandbox's policy (no host
  loopback, private, link-local, multicast range or ``spec.deny``, DNS to the forwarder
  allowed) on the forward hook, and nothing of the namespace's own reachable from the
  guest. The table is loaded before QEMU exists, so the guest's first packet meets it.

The guest's side is one fixed plan for every VM (each has a link of its own), given on
the kernel command line (:data:`KERNEL_ARG`) and applied by ``guest/init``. A namespace
lives as long as the QEMU in it: a suspend that ends QEMU ends it, and a resume, restore
or fork gets a new one with the same plan (open connections do not survive that).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

from loft import libc
from loft.runtime.egress import (
    NAMESERVER,
    binary,
    forward_ruleset,
    in_own_thread,
    start_stack,
    stop_stack,
)
from loft.runtime.errors import WorkspaceError

__all__ = [
    "GATEWAY",
    "GATEWAY_MAC",
    "GUEST_ADDRESS",
    "KERNEL_ARG",
    "STACK_PID",
    "TAP",
    "guest_mac",
    "mac_bytes",
    "open_network",
    "stop_recorded_stack",
]

#: The guest's address and its gateway (the namespace's end of the tap): a link of its
#: own per VM, inside 10.0.0.0/8, which the policy denies as a destination anyway.
GUEST_ADDRESS = "10.0.3.2"
GATEWAY = "10.0.3.1"
_PREFIX = 24
#: Fixed, so a guest restored into a new namespace still reaches its gateway at once; a
#: first octet of 06 never equals a guest's (:func:`guest_mac`, 02).
GATEWAY_MAC = "06:00:00:00:00:01"
#: The tap device QEMU opens, in the VM's namespace.
TAP = "guest0"
#: The network plan on the guest kernel's command line, read by ``guest/init``.
KERNEL_ARG = f"loft.net={GUEST_ADDRESS}/{_PREFIX},{GATEWAY},{NAMESERVER}"
#: slirp4netns's pid in the VM's directory, so a restarted agent still stops it.
STACK_PID = "stack.pid"


def guest_mac(workspace: str) -> str:
    """The MAC of ``workspace``'s NIC: locally administered, unicast, derived from its id
    (so a boot and a restore of it agree, and a fork, another workspace, has its own)."""
    digest = hashlib.sha256(f"loft-vm-mac:{workspace}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def mac_bytes(mac: str) -> bytes:
    """The six bytes of ``mac`` (``aa:bb:cc:dd:ee:ff``)."""
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"bad MAC {mac!r}")
    return raw


def _run(argv: list[str], script: str) -> None:
    r = subprocess.run(argv, input=script, text=True, capture_output=True, timeout=30,
                       check=False)  # fmt: skip
    if r.returncode != 0:
        raise WorkspaceError(f"setting up the VM's network failed ({argv[0]}): "
                             f"{r.stderr.strip()[:500]}")  # fmt: skip


def _make_namespace(deny: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> int:
    """In a thread of its own (a namespace is per thread until exec): a new network
    namespace, configured, its policy loaded; a descriptor of it."""
    ip, nft = binary("ip", "iproute2"), binary("nft", "nftables")
    batch = "\n".join([
        "link set lo up",
        f"tuntap add dev {TAP} mode tap",
        f"link set {TAP} address {GATEWAY_MAC}",
        f"addr add {GATEWAY}/{_PREFIX} dev {TAP}",
        f"link set {TAP} up",
        "",
    ])  # fmt: skip

    def inside() -> int:
        libc.unshare(libc.CLONE_NEWNET, "unshare(CLONE_NEWNET)")
        fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            # the sysctl and the children are this thread's namespace's
            Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
            _run([ip, "-batch", "-"], batch)
            _run([nft, "-f", "-"], forward_ruleset(TAP, "tap0", deny))
        except BaseException:
            os.close(fd)
            raise
        return fd

    return in_own_thread(inside)


def open_network(
    deny: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
    directory: Path,
    egress_netns: Path | None,
) -> tuple[int, subprocess.Popen[bytes]]:
    """A VM's network namespace, ready for its QEMU: a descriptor of it (the caller
    closes it once QEMU runs in it) and its stack, whose pid is recorded in
    ``directory``."""
    netns = _make_namespace(tuple(deny))
    stack = None
    try:
        stack = start_stack(None, directory / "stack.log", egress_netns, netns=netns)
        (directory / STACK_PID).write_text(str(stack.pid))
    except BaseException:
        if stack is not None:
            stack.kill()
            stack.wait()
        os.close(netns)
        raise
    return netns, stack


def stop_recorded_stack(directory: Path) -> None:
    """Stop the stack recorded in ``directory`` (one a previous runtime started)."""
    with contextlib.suppress(OSError, ValueError):
        stop_stack(int((directory / STACK_PID).read_text()))
    (directory / STACK_PID).unlink(missing_ok=True)
