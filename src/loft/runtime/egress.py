"""Outbound networking (``nat``): a userspace stack, and a policy on where packets may go.

The workspace keeps its own network namespace; ``slirp4netns`` (one per workspace, a host
process) gives it a ``tap0`` (10.0.2.100/24, gateway 10.0.2.2, DNS forwarder 10.0.2.3)
and turns its connections into ordinary sockets of its own on the host side. It runs with
``--disable-host-loopback`` (10.0.2.2 never reaches the host's 127.0.0.1),
``--enable-sandbox`` (its own mount namespace, capabilities dropped) and
``--enable-seccomp``. slirp4netns cannot filter by destination, so the policy is an
nftables table *inside the workspace's network namespace*, loaded by the host between
``runc create`` and ``runc start`` — before anything of the tenant's runs — and out of
the tenant's reach: nothing in a workspace holds CAP_NET_ADMIN (or CAP_NET_RAW, so no
packet socket slips past netfilter), and seccomp refuses a new network namespace. It
rejects every packet to the host's loopback, the private, shared, link-local (cloud
metadata) and multicast ranges, and the deployment's own endpoints (``spec.deny``),
except DNS to slirp's forwarder.

A VM's guest is root in a kernel of its own, so the same policy holds one hop further
out: in a network namespace between the guest's NIC and the stack
(:mod:`loft.runtime.vm_net`), on the forward path (:func:`forward_ruleset`).

The stack may run in a network namespace of the operator's choosing (``egress_netns``:
its own routes and firewall), else in the agent's.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from loft import libc
from loft.runtime.errors import WorkspaceError

__all__ = [
    "DENIED_V4",
    "DENIED_V6",
    "NAMESERVER",
    "apply_ruleset",
    "binary",
    "egress_ruleset",
    "enter_netns",
    "forward_ruleset",
    "in_own_thread",
    "start_stack",
    "stop_stack",
]

#: slirp4netns's DNS forwarder inside the workspace.
NAMESERVER = "10.0.2.3"
#: Where no packet of a workspace may go (besides ``spec.deny``): "this" network, private,
#: shared (CGNAT), loopback, link-local (169.254.169.254: cloud metadata), IETF protocol
#: assignments, benchmarking, multicast and reserved.
DENIED_V4 = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
             "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15",
             "224.0.0.0/4", "240.0.0.0/4")  # fmt: skip
#: The same for IPv6: loopback, IPv4-mapped, unique local (fd00:ec2::254 among them),
#: link-local, multicast.
DENIED_V6 = ("::1/128", "::ffff:0:0/96", "fc00::/7", "fe80::/10", "ff00::/8")
_Net = ipaddress.IPv4Network | ipaddress.IPv6Network
_READY_TIMEOUT = 10.0


def _policy(deny: Iterable[_Net]) -> list[str]:
    """The rules every packet of a workspace passes: DNS to the forwarder, then no
    denied range."""
    deny = list(deny)
    v4 = [*DENIED_V4, *(str(n) for n in deny if n.version == 4)]
    v6 = [*DENIED_V6, *(str(n) for n in deny if n.version == 6)]
    return [
        f"    ip daddr {NAMESERVER} udp dport 53 accept",
        f"    ip daddr {NAMESERVER} tcp dport 53 accept",
        f"    ip daddr {{ {', '.join(v4)} }} reject with icmpx type admin-prohibited",
        f"    ip6 daddr {{ {', '.join(v6)} }} reject with icmpx type admin-prohibited",
    ]


def egress_ruleset(deny: Iterable[_Net] = ()) -> str:
    """The nftables script of a workspace's egress policy (pure)."""
    return "\n".join([
        "table inet loft_egress {",
        "  chain output {",
        "    type filter hook output priority 0; policy accept;",
        '    oifname "lo" accept',
        *_policy(deny),
        "  }",
        "}",
        "",
    ])  # fmt: skip


def forward_ruleset(inside: str, uplink: str, deny: Iterable[_Net] = ()) -> str:
    """The same policy for packets routed from the interface ``inside`` (a VM's tap) to
    ``uplink`` (the stack's ``tap0``), masqueraded there (pure). Only replies come back
    the other way, and nothing of the namespace's own is reachable from ``inside``."""
    return "\n".join([
        "table inet loft_egress {",
        "  chain guest {",
        *_policy(deny),
        f'    oifname "{uplink}" accept',
        "    drop",
        "  }",
        "  chain forward {",
        "    type filter hook forward priority 0; policy drop;",
        f'    iifname "{inside}" jump guest',
        f'    iifname "{uplink}" oifname "{inside}" ct state established,related accept',
        "  }",
        "  chain input {",
        "    type filter hook input priority 0; policy accept;",
        f'    iifname "{inside}" reject with icmpx type admin-prohibited',
        "  }",
        "}",
        "table ip loft_nat {",
        "  chain postrouting {",
        "    type nat hook postrouting priority 100; policy accept;",
        f'    oifname "{uplink}" masquerade',
        "  }",
        "}",
        "",
    ])  # fmt: skip


def binary(name: str, package: str) -> str:
    """The path of program ``name`` (from Debian's ``package``); WorkspaceError naming
    the package when it is not installed."""
    exe = shutil.which(name)
    if exe is None:
        raise WorkspaceError(f"{name} is not installed", hint=f"run `make deps` ({package})")
    return exe


_T = TypeVar("_T")


def in_own_thread(fn: Callable[[], _T]) -> _T:
    """``fn()`` on a short thread of its own, its result returned (or its exception
    raised) here: a network namespace that thread makes or enters stays its own, so the
    caller's thread never changes namespace."""
    result: list[_T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # handed to the caller's thread
            error.append(e)

    thread = threading.Thread(target=run, name="loft-netns")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def enter_netns(fd: int) -> None:
    """Join the network namespace of descriptor ``fd`` (between fork and exec: system
    calls only)."""
    libc.setns(fd, libc.CLONE_NEWNET, "setns(CLONE_NEWNET)")


def _private_mounts() -> None:
    """A mount namespace of the stack's own, receiving nothing and sending nothing back:
    slirp4netns's ``--enable-sandbox`` rearranges mounts, and from the host's namespace
    its unmounts propagated to shared mounts of the host (it took ``/run/netns/NAME``
    away, measured)."""
    libc.unshare(libc.CLONE_NEWNS, "unshare(CLONE_NEWNS)")
    libc.mount(None, b"/", None, libc.MS_REC | libc.MS_PRIVATE, what="mount --make-rprivate /")


def apply_ruleset(netns: int, script: str) -> None:
    """Load ``script`` with ``nft`` in the network namespace ``netns`` (a descriptor)."""
    r = subprocess.run([binary("nft", "nftables"), "-f", "-"], input=script, text=True,
                       capture_output=True, pass_fds=[netns],
                       preexec_fn=lambda: enter_netns(netns), timeout=30,
                       check=False)  # fmt: skip
    if r.returncode != 0:
        raise WorkspaceError(f"loading the egress policy failed: {r.stderr.strip()[:500]}")


def start_stack(
    init_pid: int | None, log: Path, egress_netns: Path | None = None, *,
    netns: int | None = None,
) -> subprocess.Popen[bytes]:  # fmt: skip
    """Start slirp4netns for the network namespace of ``init_pid`` (else of the descriptor
    ``netns``) and wait until ``tap0`` is configured; it runs in its own session (it
    outlives an agent restart) and in ``egress_netns`` when given."""
    ready_r, ready_w = os.pipe()
    netns_fd = -1
    try:
        if netns is not None:
            target = ["--netns-type=path", f"/proc/self/fd/{netns}"]
        elif init_pid is not None:
            target = [str(init_pid)]
        else:
            raise ValueError("no network namespace to start the stack for")
        argv = [binary("slirp4netns", "slirp4netns"), "--configure", "--mtu=65520",
                "--disable-host-loopback", "--enable-sandbox", "--enable-seccomp",
                f"--ready-fd={ready_w}", *target, "tap0"]  # fmt: skip
        if egress_netns is not None:
            netns_fd = os.open(egress_netns, os.O_RDONLY | os.O_CLOEXEC)
        fd = netns_fd

        def enter() -> None:
            if fd >= 0:
                enter_netns(fd)
            _private_mounts()

        keep = [ready_w, *([fd] if fd >= 0 else []), *([netns] if netns is not None else [])]
        with open(log, "ab") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                    pass_fds=keep, preexec_fn=enter,
                                    start_new_session=True)  # fmt: skip
        os.close(ready_w)
        ready_w = -1
        if not select.select([ready_r], [], [], _READY_TIMEOUT)[0] or os.read(ready_r, 1) != b"1":
            proc.kill()
            proc.wait()
            raise WorkspaceError(f"slirp4netns did not come up: {log.read_text()[-500:]}")
        return proc
    finally:
        for fd in (ready_r, ready_w, netns_fd):
            if fd >= 0:
                os.close(fd)


def stop_stack(pid: int) -> None:
    """Stop the slirp4netns of pid ``pid`` (only if that pid still is one)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"slirp4netns" in cmdline.split(b"\0")[0]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
