"""VMs on real QEMU for the tests: a node whose disk service serves the workspace
volumes (a real process, stopped by PID), a volume per workspace forked from the
template, and a VmRuntime in the test's data dir whose QEMUs are killed by PID at the
end. At most two VMs run at once on this machine; each test starts one or two."""

from __future__ import annotations

import ipaddress
import itertools
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from attachtool import Served, served_node

from loft.isolation.userns import IdRange
from loft.runtime.spec import EnvironmentView, ExecRequest, Limits, Network, WorkspaceSpec
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
        self.env = busybox_env(root / "store")

    def spec(self, memory: int = 256 << 20, name: str | None = None, *, volume: bool = True,
             network: Network = Network.NONE,
             deny: str | None = None) -> WorkspaceSpec:  # fmt: skip
        """A workspace spec, and (with ``volume``) its volume, fresh from the template."""
        ws = name or f"vm{next(_ids)}"
        if volume:
            create_workspace_volume(self.node.bs, ws, size=1 << 30)
        return WorkspaceSpec(id=ws, rootfs=self.root / "unused-rootfs", env=self.env,
                             ids=IdRange(1 << 20, 65536), limits=Limits(memory=memory),
                             network=network,
                             deny=(ipaddress.ip_network(deny),) if deny else ())  # fmt: skip


#: A store path name for the busybox environment (any 32 characters of the store's
#: alphabet; the tests' store holds nothing else).
BUSYBOX_ENV = "0" * 32 + "-busybox-env"

#: A guest shell loop counting in /tmp/count, 20 times a second. Each count replaces the
#: file whole: a reader of ``echo > file`` may catch it truncated, empty.
COUNTER = (
    "i=0; while :; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; "
    "usleep 50000; done"
)


def busybox_env(store: Path) -> EnvironmentView:
    """A one-path environment in ``store``: the host's static busybox and its applets in
    ``bin`` (a VM's /usr, built into a disk image in milliseconds; the tests that need
    a Debian environment use the example one)."""
    bin_dir = store / BUSYBOX_ENV / "bin"
    if not bin_dir.is_dir():
        bin_dir.mkdir(parents=True)
        shutil.copy2("/bin/busybox", bin_dir / "busybox")
        listed = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.split()  # fmt: skip
        for applet in listed:
            if applet != "busybox":
                (bin_dir / applet).symlink_to("busybox")
    path = f"/nix/store/{BUSYBOX_ENV}"
    return EnvironmentView(store, path, (path,))


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


@contextmanager
def xfs_mount(where: Path, size: int = 2 << 30) -> Iterator[Path]:
    """A loop-backed XFS with reflinks (a sparse ``size``-byte image under ``where``;
    XFS refuses less than 300 MiB), mounted at ``where/xfs`` nosuid,nodev; unmounted and
    its loop device detached afterwards."""
    image, mnt = where / "xfs.img", where / "xfs"
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image)], check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    mnt.mkdir()
    dev = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                         capture_output=True, text=True, timeout=30).stdout.strip()  # fmt: skip
    try:
        subprocess.run(["mount", "-o", "nosuid,nodev", dev, str(mnt)], check=True, timeout=30)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=False, timeout=60)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False, timeout=30)


def sh(node: Vms, ws: str, script: str, user: int = 0) -> str:
    """``sh -c script`` in workspace ``ws`` (as root unless ``user``), which must succeed;
    its output."""
    done = node.runtime.run(ws, ExecRequest(("sh", "-c", script), user=user, cwd="/"),
                            timeout=30)  # fmt: skip
    assert done.status == 0, (done.status, done.stdout, done.stderr)
    return done.stdout.decode()
