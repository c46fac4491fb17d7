"""VMs on real QEMU for the tests: a node whose disk service serves the workspace
volumes (a real process, stopped by PID), a volume per workspace forked from the
template, and a VmRuntime in the test's data dir whose QEMUs are killed by PID at the
end. At most two VMs run at once on this machine; each test starts one or two."""

from __future__ import annotations

import ipaddress
import itertools
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from attachtool import Served, served_node

from loft.isolation.userns import IdRange
from loft.runtime.spec import EnvironmentView, Limits, Network, WorkspaceSpec
from loft.runtime.template import create_workspace_volume
from loft.runtime.vm import NbdDisk, VmRuntime

ROOT = Path(__file__).resolve().parents[2]
#: Where `make guest` builds what a VM boots (the Makefile's GUEST_DIR).
GUEST = ROOT / "build" / "guest"

needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None or not (GUEST / "initrd.gz").is_file(),
    reason="QEMU or the VM guest is missing (make deps)",
)
_ids = itertools.count()


class Vms:
    """A served node and a VmRuntime over it; :meth:`spec` makes a workspace's volume."""

    def __init__(self, runtime: VmRuntime, node: Served, root: Path) -> None:
        self.runtime = runtime
        self.node = node
        self.root = root

    def spec(self, memory: int = 256 << 20, name: str | None = None, *, volume: bool = True,
             network: Network = Network.NONE,
             deny: str | None = None) -> WorkspaceSpec:  # fmt: skip
        """A workspace spec, and (with ``volume``) its volume, fresh from the template."""
        ws = name or f"vm{next(_ids)}"
        if volume:
            create_workspace_volume(self.node.bs, ws, size=1 << 30)
        unused = "/nix/store/unused-env"  # a VM's /usr comes from its initramfs for now
        env = EnvironmentView(self.root / "store", unused, (unused,))
        return WorkspaceSpec(id=ws, rootfs=self.root / "unused-rootfs", env=env,
                             ids=IdRange(1 << 20, 65536), limits=Limits(memory=memory),
                             network=network,
                             deny=(ipaddress.ip_network(deny),) if deny else ())  # fmt: skip


@contextmanager
def vms(tmp_path: Path, egress_netns: Path | None = None) -> Iterator[Vms]:
    with served_node(tmp_path) as node:
        sock = node.node.sock
        runtime = VmRuntime(node.data_dir, lambda ws: NbdDisk(sock, ws), guest=GUEST, bs=node.bs,
                            egress_netns=egress_netns)  # fmt: skip
        try:
            yield Vms(runtime, node, tmp_path)
        finally:
            for ws in list(runtime._live) + sorted(p.name for p in runtime.root.glob("*")):
                runtime._teardown(ws)
